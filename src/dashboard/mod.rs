//! The web dashboard (issue 20): `cohort coordinator --dashboard ADDR`
//! serves it beside gRPC on the same tokio runtime. Pages (embedded in the
//! binary: [`assets`]) are built on a small JSON API ([`api`]) that shows
//! the same data the CLI and the Python package print. Every request needs
//! a token signed with the coordinator's dashboard key ([`token`]) or, when
//! the coordinator runs with TLS (the dashboard then serves HTTPS with the
//! same certificate, [`listener`]), a consortium client certificate.

pub mod api;
mod assets;
pub mod ledger_cache;
pub mod listener;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{ConnectInfo, Extension, Path as UrlPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cohort_coordinator::view::CoordinatorView;
use serde::Serialize;
use tokio::net::TcpListener;

use api::SignatureStatus;
use cohort_coordinator::TlsSettings;
use cohort_identity::{Principal, Role};
use ledger_cache::{LedgerCache, ParsedLedger};
use listener::{DashboardLimits, GuardedListener, HttpsSettings, Peer};
use token::{Claims, DashboardRole, TokenVerifier};

/// The cookie `?token=` sets.
pub const COOKIE: &str = "cohort_dashboard";
/// Where the dashboard remembers the ledger checkpoints it verified.
pub const SEEN_CHECKPOINTS_FILE: &str = "dashboard-seen-checkpoints.json";

/// One dashboard over one coordinator's state.
pub struct Dashboard {
    view: CoordinatorView,
    data_dir: PathBuf,
    verifier: TokenVerifier,
    /// Signature checks of stored models, which never change once stored.
    signatures: Mutex<HashMap<(String, u32), SignatureStatus>>,
    /// One ledger verification at a time (they share the seen-checkpoints file).
    ledger_check: tokio::sync::Mutex<()>,
    ledger: LedgerCache,
}

impl Dashboard {
    /// A dashboard over `view`, whose data directory is `data_dir` (its
    /// token key is created there on first use).
    pub fn open(view: CoordinatorView, data_dir: &Path) -> Result<Arc<Self>> {
        let key = token::signing_key(data_dir)?;
        Ok(Arc::new(Self {
            view,
            data_dir: data_dir.to_path_buf(),
            verifier: TokenVerifier::new(key.verifying_key()),
            signatures: Mutex::new(HashMap::new()),
            ledger_check: tokio::sync::Mutex::new(()),
            ledger: LedgerCache::default(),
        }))
    }

    /// The ledger as the jobs list and job pages read it: parsed once per
    /// change ([`ledger_cache`]).
    pub fn ledger(&self) -> Result<Arc<ParsedLedger>> {
        self.ledger.get(&self.view)
    }
}

/// A dashboard serving in the background.
pub struct RunningDashboard {
    /// `http://ADDR/`, or `https://ADDR/` with TLS.
    pub url: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningDashboard {
    /// Stops serving and waits for open requests to finish.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Binds `addr` (`HOST:PORT`; port 0 picks a free one) and serves `dashboard`
/// there over plain HTTP until [`RunningDashboard::stop`].
pub async fn start(addr: &str, dashboard: Arc<Dashboard>) -> Result<RunningDashboard> {
    start_with(addr, dashboard, None, DashboardLimits::default()).await
}

/// [`start`], over HTTPS with the coordinator's certificate when `tls` is
/// given (a consortium client certificate then also signs one in), within
/// `limits`.
pub async fn start_with(
    addr: &str,
    dashboard: Arc<Dashboard>,
    tls: Option<&TlsSettings>,
    limits: DashboardLimits,
) -> Result<RunningDashboard> {
    let addr = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let https = match tls {
        Some(settings) => {
            let server = cohort_identity::tls::ServerTls::optional_client_certificate(
                &settings.kit,
                settings.crl.as_deref(),
            )
            .context("--dashboard: the coordinator's TLS settings")?;
            Some(HttpsSettings {
                acceptor: tokio_rustls::TlsAcceptor::from(server.config),
                revocation: server.revocation,
            })
        }
        None => None,
    };
    let scheme = if https.is_some() { "https" } else { "http" };
    let tcp = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--dashboard: cannot listen on {addr}"))?;
    let local = tcp.local_addr()?;
    if https.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            "the dashboard on {local} speaks plain HTTP beyond this machine: tokens can be read on the way. \
             Run the coordinator with --tls (the dashboard then serves HTTPS) or keep it on 127.0.0.1"
        );
    }
    let url = format!("{scheme}://{local}/");
    let listener = GuardedListener::new(tcp, https, limits)?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        if let Err(e) = serve(listener, dashboard, shutdown).await {
            tracing::error!("dashboard stopped: {e:#}");
        }
    });
    Ok(RunningDashboard { url, stop, task })
}

/// `--dashboard ADDR`: serves `coordinator`'s dashboard on `addr` (HTTPS
/// when the coordinator has `tls`) and says where, and how to get a token.
pub async fn start_for(
    addr: &str,
    coordinator: &cohort_coordinator::Coordinator,
    data_dir: &Path,
    tls: Option<&TlsSettings>,
) -> Result<RunningDashboard> {
    let dashboard = Dashboard::open(coordinator.view(), data_dir)?;
    let running = start_with(addr, dashboard, tls, DashboardLimits::default()).await?;
    tracing::info!(
        "dashboard on {} (a token: cohort dashboard token --data-dir {} --role operator --name NAME{})",
        running.url,
        data_dir.display(),
        if tls.is_some() {
            "; or a consortium client certificate"
        } else {
            ""
        }
    );
    Ok(running)
}

/// Serves `dashboard` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: GuardedListener,
    dashboard: Arc<Dashboard>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(
        listener,
        router(dashboard).into_make_service_with_connect_info::<Peer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("dashboard server")
}

pub fn router(dashboard: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/app.js", get(assets::script))
        .route("/assets/style.css", get(assets::style))
        .route("/api/me", get(me))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/ledger", get(ledger))
        .route("/api/ledger/{index}/proof", get(proof))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            dashboard.clone(),
            authenticate,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(dashboard)
}

/// The one answer to every missing, malformed, forged or expired token.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "unauthorized\n",
    )
        .into_response()
}

fn query_token(uri: &Uri) -> Option<(String, String)> {
    let query = uri.query()?;
    let mut token = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("token=") {
            Some(value) => token = Some(value.to_string()),
            None if !pair.is_empty() => rest.push(pair),
            None => {}
        }
    }
    let rest = if rest.is_empty() {
        String::new()
    } else {
        format!("?{}", rest.join("&"))
    };
    // One leading slash: `//host` would send the browser to another site.
    let path = format!("/{}", uri.path().trim_start_matches('/'));
    token.map(|t| (t, format!("{path}{rest}")))
}

fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        return auth
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
}

/// `?token=` (once, from a printed link) becomes an HttpOnly cookie and a
/// redirect to the same page without it, so the token leaves the address
/// bar and history; otherwise the token comes from `Authorization: Bearer`
/// or that cookie.
async fn authenticate(
    State(dashboard): State<Arc<Dashboard>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some((token, location)) = query_token(request.uri()) {
        let Ok(claims) = dashboard.verifier.verify(&token) else {
            return unauthorized();
        };
        let max_age = claims
            .expires_at
            .saturating_sub(claims.issued_at.max(token::unix_now()));
        let cookie =
            format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}");
        let (Ok(cookie), Ok(location)) = (
            HeaderValue::from_str(&cookie),
            HeaderValue::from_str(&location),
        ) else {
            return unauthorized();
        };
        return (
            StatusCode::SEE_OTHER,
            [(header::SET_COOKIE, cookie), (header::LOCATION, location)],
        )
            .into_response();
    }
    let from_token =
        presented_token(request.headers()).and_then(|t| dashboard.verifier.verify(&t).ok());
    let from_certificate = || {
        let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<Peer>>()?;
        certificate_claims(peer)
    };
    match from_token.or_else(from_certificate) {
        Some(claims) => {
            request.extensions_mut().insert(claims);
            next.run(request).await
        }
        None => unauthorized(),
    }
}

/// The role a verified, unrevoked consortium certificate signs in as: a
/// hospital and a developer as themselves; a validator, which may read
/// every job over gRPC, and the coordinator's own certificate (held by
/// the operator) as operators.
fn certificate_claims(peer: &Peer) -> Option<Claims> {
    let member: &Principal = peer.member.as_ref()?;
    let revocation = peer.revocation.as_ref()?;
    if let Err(e) = revocation.refresh() {
        tracing::warn!("revocation list not reloaded, the previous one stays in force: {e}");
    }
    if revocation.is_revoked(&member.serial) {
        return None;
    }
    let role = match member.role {
        Role::Hospital => DashboardRole::Hospital,
        Role::Developer => DashboardRole::Developer,
        Role::Validator | Role::Coordinator => DashboardRole::Operator,
    };
    let now = token::unix_now();
    let expires_at = u64::try_from(member.not_after).ok()?;
    (expires_at > now).then(|| Claims {
        role,
        name: member.name.clone(),
        issued_at: now,
        expires_at,
    })
}

/// Only this origin's own scripts, styles and API: nothing from a CDN
/// could run even if a page tried to load it.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// API failures: what the caller did wrong is said; the coordinator's own
/// failures are logged and answered without detail.
enum ApiError {
    NotFound(String),
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound(what) => error_json(StatusCode::NOT_FOUND, &what),
            ApiError::Internal(e) => {
                tracing::warn!("dashboard: {e:#}");
                error_json(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        }
    }
}

fn error_json(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value).context("encoding JSON")?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

async fn not_found() -> Response {
    error_json(StatusCode::NOT_FOUND, "no such page")
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(work)
        .await
        .context("dashboard worker")??)
}

async fn me(Extension(claims): Extension<Claims>) -> Result<Response, ApiError> {
    json(&claims)
}

async fn jobs(
    State(d): State<Arc<Dashboard>>,
    Extension(claims): Extension<Claims>,
) -> Result<Response, ApiError> {
    json(&blocking(move || api::jobs(&d.view, &claims, &*d.ledger()?)).await?)
}

async fn job(
    State(d): State<Arc<Dashboard>>,
    Extension(claims): Extension<Claims>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let dashboard = d.clone();
    let detail = blocking(move || {
        let Some(row) = api::visible_job(&dashboard.view, &claims, &id)? else {
            return Ok(None);
        };
        let ledger = dashboard.ledger()?;
        api::job_detail(&dashboard.view, &claims, &row, &ledger).map(Some)
    })
    .await?;
    let Some(mut detail) = detail else {
        return Err(ApiError::NotFound("no such job".into()));
    };
    if let Some(model) = &mut detail.model {
        model.signature = signature_status(&d, &detail.summary.job_id, model.round).await?;
    }
    json(&detail)
}

async fn signature_status(
    d: &Arc<Dashboard>,
    job_id: &str,
    round: u32,
) -> Result<SignatureStatus, ApiError> {
    let key = (job_id.to_string(), round);
    if let Some(known) = d.signatures.lock().ok().and_then(|s| s.get(&key).cloned()) {
        return Ok(known);
    }
    let (card, body, signature) = d
        .view
        .model(job_id, round)
        .await
        .context("reading a stored model")?;
    let Some(signature) = signature else {
        return Ok(SignatureStatus::Unsigned);
    };
    let data_dir = d.data_dir.clone();
    let status =
        blocking(move || api::check_signature(&data_dir, &card, &body, &signature)).await?;
    if let Ok(mut cache) = d.signatures.lock() {
        cache.insert(key, status.clone());
    }
    Ok(status)
}

async fn ledger(
    State(d): State<Arc<Dashboard>>,
    Extension(claims): Extension<Claims>,
) -> Result<Response, ApiError> {
    let _one_at_a_time = d.ledger_check.lock().await;
    let view = d.view.clone();
    let state = d.data_dir.join(SEEN_CHECKPOINTS_FILE);
    json(
        &blocking(move || {
            let scope = api::LedgerScope::of(&view, &claims)?;
            api::ledger(view.ledger()?, &state, &scope)
        })
        .await?,
    )
}

async fn proof(
    State(d): State<Arc<Dashboard>>,
    Extension(claims): Extension<Claims>,
    UrlPath(index): UrlPath<String>,
) -> Result<Response, ApiError> {
    let Ok(index) = index.parse::<u64>() else {
        return Err(ApiError::NotFound(format!(
            "`{index}` is not a ledger entry index"
        )));
    };
    let view = d.view.clone();
    let (ledger, scope) = blocking(move || {
        let scope = api::LedgerScope::of(&view, &claims)?;
        Ok((view.ledger()?, scope))
    })
    .await?;
    let visible = match ledger
        .leaves
        .get(usize::try_from(index).unwrap_or(usize::MAX))
    {
        Some(leaf) => {
            scope.allows(&cohort_ledger::Entry::from_leaf(leaf).context("a stored ledger entry")?)
        }
        None => {
            return Err(ApiError::NotFound(format!(
                "the ledger has {} entries; there is no entry {index}",
                ledger.leaves.len()
            )));
        }
    };
    if !visible {
        return Err(ApiError::NotFound(format!(
            "no ledger entry {index} you may read"
        )));
    }
    json(&api::proof(&ledger, index)?)
}

/// `cohort dashboard token`: a token for `role`/`name` valid `ttl_secs`.
pub fn token_command(data_dir: &Path, role: &str, name: &str, ttl_secs: u64) -> Result<String> {
    let role = role.parse::<token::DashboardRole>()?;
    Ok(token::issue_for(
        data_dir,
        role,
        name,
        Duration::from_secs(ttl_secs),
    )?)
}
