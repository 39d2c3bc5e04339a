//! Hostile bytes on real sockets: garbage, truncated and stalled HTTP/2
//! prefaces, oversized and malformed frames, malformed gRPC messages from a
//! peer with a valid client certificate, and a flood of idle connections.
//! After each, the coordinator answers a developer within seconds and a
//! normal job completes. docs/RELIABILITY.md lists the outcomes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cohort::developer;
use cohort::pki::LocalConsortium;
use cohort_coordinator::{Coordinator, CoordinatorConfig, WireLimits};
use cohort_identity::Kit;
use cohort_protocol::Security;
use cohort_protocol::v1::ListClientsRequest;
use common::*;
use rand::{Rng, SeedableRng};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Short enough to keep the test quick, long enough for a loaded CI machine.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_STREAMS: u32 = 8;
/// How long the coordinator may take to answer a developer after an abuse.
const RESPONSIVE: Duration = Duration::from_secs(5);

fn test_limits() -> WireLimits {
    WireLimits {
        max_message_bytes: cohort_coordinator::limits::MIN_MESSAGE_BYTES,
        max_connections: 200,
        handshake_timeout: HANDSHAKE_TIMEOUT,
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(1),
    }
}

struct Federation {
    url: String,
    addr: SocketAddr,
    security: Security,
    stop: Stop,
    server: tokio::task::JoinHandle<()>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    /// Hospitals and the developer have been accepted once already.
    pki: Option<LocalConsortium>,
}

/// A coordinator with `test_limits()` and two hospitals, plaintext or with
/// mutual TLS.
async fn federation(dir: &Path, tls: bool) -> Federation {
    let csv = dir.join("oncology.csv");
    synthetic_oncology_csv(&csv, 400, 17);
    let files = split(&csv, &dir.join("parts"), 2, 5);
    let names = ["hospital-a".to_string(), "hospital-b".to_string()];
    let pki =
        tls.then(|| LocalConsortium::provision(&dir.join("pki"), "wire-net", &names).unwrap());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = CoordinatorConfig::new(dir.join("coord"));
    config.poll_timeout = Duration::from_secs(1);
    config.wire = test_limits();
    config.request_timeout = REQUEST_TIMEOUT;
    config.max_streams_per_connection = MAX_STREAMS;
    config.tls = pki.as_ref().map(LocalConsortium::coordinator_tls);
    let coordinator = Coordinator::open(&config).unwrap();
    let stop = Stop::new();
    let signal = stop.signal();
    let server = tokio::spawn(async move { coordinator.serve(listener, signal).await.unwrap() });
    let url = format!("{}://{addr}", if tls { "https" } else { "http" });
    let security = match &pki {
        Some(pki) => Security::MutualTls(pki.developer.clone()),
        None => Security::Insecure,
    };

    let mut clients = Vec::new();
    for (i, file) in files.iter().take(names.len()).enumerate() {
        let security = match &pki {
            Some(pki) => Security::MutualTls(pki.hospitals[i].clone()),
            None => Security::Insecure,
        };
        let config = cohort_client::ClientConfig {
            coordinator: url.clone(),
            security,
            data: file.clone().into(),
            name: names[i].clone(),
            data_dir: None,
            options: cohort_client::ClientOptions::default(),
        };
        let signal = stop.signal();
        clients.push(tokio::spawn(async move {
            cohort_client::run(config, signal).await.unwrap()
        }));
    }
    let federation = Federation {
        url,
        addr,
        security,
        stop,
        server,
        clients,
        pki,
    };
    federation.wait_connected(2).await;
    federation
}

impl Federation {
    async fn wait_connected(&self, n: usize) {
        let mut dev = developer::connect(&self.url, &self.security).await.unwrap();
        for _ in 0..300 {
            let clients = dev.list_clients(ListClientsRequest {}).await.unwrap();
            if clients
                .into_inner()
                .clients
                .iter()
                .filter(|c| c.connected)
                .count()
                >= n
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("fewer than {n} hospitals connected");
    }

    /// A fresh developer connection gets an answer within [`RESPONSIVE`].
    async fn assert_responsive(&self, after: &str) {
        let started = Instant::now();
        let answered = tokio::time::timeout(RESPONSIVE, async {
            let mut dev = developer::connect(&self.url, &self.security).await?;
            let clients = dev.list_clients(ListClientsRequest {}).await?;
            anyhow::Ok(clients.into_inner().clients.len())
        })
        .await
        .unwrap_or_else(|_| panic!("no answer within {RESPONSIVE:?} after {after}"))
        .unwrap_or_else(|e| panic!("ListClients failed after {after}: {e:#}"));
        assert_eq!(answered, 2, "after {after}");
        eprintln!(
            "after {after}: ListClients answered in {:?}",
            started.elapsed()
        );
    }

    /// A one-round job over both hospitals completes.
    async fn assert_job_completes(&self, after: &str) {
        let mut dev = developer::connect(&self.url, &self.security).await.unwrap();
        let id = developer::submit(&mut dev, &oncology_job(1, 2))
            .await
            .unwrap();
        let done = tokio::time::timeout(
            Duration::from_secs(60),
            developer::wait(&mut dev, &id, false),
        )
        .await
        .unwrap_or_else(|_| panic!("job did not finish after {after}"))
        .unwrap();
        assert_eq!(done.state, "completed", "after {after}: {:?}", done.error);
    }

    async fn shut_down(self) {
        self.stop.stop();
        for c in self.clients {
            c.await.unwrap();
        }
        self.server.await.unwrap();
    }
}

/// Reads until the peer closes (EOF or reset), returning what came back.
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin), within: Duration) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the coordinator kept the connection open");
    seen
}

/// The HTTP/2 frame types the server sent, in order.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    types
}

/// The error code of the first GOAWAY frame the server sent.
fn goaway_code(mut bytes: &[u8]) -> Option<u32> {
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes[3] == GOAWAY && len >= 8 && bytes.len() >= 17 {
            return Some(u32::from_be_bytes([
                bytes[13], bytes[14], bytes[15], bytes[16],
            ]));
        }
        bytes = &bytes[(9 + len).min(bytes.len())..];
    }
    None
}

const GOAWAY: u8 = 0x7;
const PING: u8 = 0x6;
/// HTTP/2 error codes (RFC 9113 section 7).
const FRAME_SIZE_ERROR: u32 = 0x6;
const PROTOCOL_ERROR: u32 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

fn frame(kind: u8, flags: u8, stream: u32, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = declared_len.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One gRPC call over a raw HTTP/2 connection, whose body is exactly
/// `body` (length prefix included, so it may lie): the grpc-status and
/// message the coordinator answered with.
async fn raw_grpc<T>(io: T, authority: &str, scheme: &str, body: Vec<u8>) -> (i32, String)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    raw_call(io, authority, scheme, LIST_JOBS, body, true, RESPONSIVE).await
}

const LIST_JOBS: &str = "/cohort.v1.DeveloperService/ListJobs";
const SUBMIT_RESULT: &str = "/cohort.v1.HospitalService/SubmitResult";

/// Like [`raw_grpc`] on any `path`; with `end_stream` false the request
/// body stays open after `body`, as from a peer that stalled mid-upload.
async fn raw_call<T>(
    io: T,
    authority: &str,
    scheme: &str,
    path: &str,
    body: Vec<u8>,
    end_stream: bool,
    within: Duration,
) -> (i32, String)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, connection) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{scheme}://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::from(body), end_stream).unwrap();
    let response = tokio::time::timeout(within, response)
        .await
        .expect("no response to a malformed gRPC message")
        .unwrap();
    let (head, mut body) = response.into_parts();
    let mut headers = head.headers;
    if !headers.contains_key("grpc-status") {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        headers = body.trailers().await.unwrap().unwrap_or_default();
    }
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a grpc-status");
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    drop(send);
    (code, message)
}

/// The malformed bodies every test sends, with the grpc-status expected.
fn malformed_messages() -> Vec<(&'static str, Vec<u8>, tonic::Code)> {
    // Field 1 with wire type 7, which protobuf does not have.
    let garbage_protobuf = [0x0f, 0xff, 0xff, 0xff];
    let mut garbage = vec![0u8];
    garbage.extend_from_slice(&(garbage_protobuf.len() as u32).to_be_bytes());
    garbage.extend_from_slice(&garbage_protobuf);
    // Declares 4 GiB and sends 10 bytes: refused from the prefix alone.
    let mut huge = vec![0u8];
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    huge.extend_from_slice(&[0u8; 10]);
    // Just over the limit, sent whole.
    let over = test_limits().max_message_bytes + 1;
    let mut oversized = vec![0u8];
    oversized.extend_from_slice(&(over as u32).to_be_bytes());
    oversized.resize(5 + over, 0x0f);
    // Says it is compressed without naming an encoding.
    let mut compressed = garbage.clone();
    compressed[0] = 1;
    // A prefix cut short.
    let truncated = vec![0u8, 0, 0];
    vec![
        ("garbage protobuf", garbage, tonic::Code::Internal),
        ("4 GiB declared length", huge, tonic::Code::OutOfRange),
        ("message over the limit", oversized, tonic::Code::OutOfRange),
        (
            "compressed flag, no encoding",
            compressed,
            tonic::Code::Internal,
        ),
        ("truncated length prefix", truncated, tonic::Code::Internal),
    ]
}

async fn send_malformed_messages<F, Fut, T>(federation: &Federation, connect: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T>,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let scheme = if federation.pki.is_some() {
        "https"
    } else {
        "http"
    };
    for (what, body, expected) in malformed_messages() {
        let (code, message) =
            raw_grpc(connect().await, &federation.addr.to_string(), scheme, body).await;
        eprintln!("{what}: grpc-status {code} {message:?}");
        assert_eq!(
            tonic::Code::from_i32(code),
            expected,
            "{what}: {code} {message}"
        );
        assert!(!message.is_empty(), "{what}: the status names the problem");
        federation.assert_responsive(what).await;
    }
}

/// The soft limit on open files, so the idle flood fits any CI runner.
fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_bytes_leave_a_plaintext_coordinator_serving() {
    let dir = tempfile::tempdir().unwrap();
    let federation = federation(dir.path(), false).await;
    let addr = federation.addr;

    // (a) Random bytes instead of HTTP/2: the connection is closed.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    for size in [1usize, 23, 4096, 1 << 16] {
        let mut garbage = vec![0u8; size];
        rng.fill(&mut garbage[..]);
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(&garbage).await;
        read_until_closed(&mut tcp, RESPONSIVE).await;
    }
    federation.assert_responsive("random bytes").await;
    federation.assert_job_completes("random bytes").await;

    // (b) A truncated preface, then close; and one left hanging, which the
    // handshake timeout ends.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&PREFACE[..10]).await.unwrap();
    drop(tcp);
    let mut hanging = TcpStream::connect(addr).await.unwrap();
    hanging.write_all(&PREFACE[..10]).await.unwrap();
    let started = Instant::now();
    read_until_closed(&mut hanging, HANDSHAKE_TIMEOUT + RESPONSIVE).await;
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(200));
    federation.assert_responsive("truncated preface").await;

    // (c) A valid preface, then frames the coordinator must refuse: a DATA
    // frame declaring 16 MiB (over the 16 KiB frame size), HEADERS with
    // garbage HPACK, a SETTINGS frame of the wrong length. Each ends in a
    // GOAWAY and a closed connection.
    let empty_settings = frame(0x4, 0, 0, 0, &[]);
    let bad_frames = [
        (
            "oversized DATA frame",
            frame(0x0, 0, 1, 0xFF_FFFF, &[0xAB; 1024]),
            FRAME_SIZE_ERROR,
        ),
        (
            "garbage HPACK",
            frame(
                0x1,
                0x4 | 0x1,
                1,
                8,
                &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            ),
            PROTOCOL_ERROR,
        ),
        (
            "malformed SETTINGS",
            frame(0x4, 0, 0, 5, &[1, 2, 3, 4, 5]),
            // RFC 9113 asks for FRAME_SIZE_ERROR; the h2 crate answers this.
            PROTOCOL_ERROR,
        ),
    ];
    for (what, bad, expected) in bad_frames {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(&empty_settings).await.unwrap();
        let _ = tcp.write_all(&bad).await;
        let answer = read_until_closed(&mut tcp, RESPONSIVE).await;
        let code = goaway_code(&answer);
        eprintln!("{what}: GOAWAY error code {code:?}");
        assert_eq!(
            code,
            Some(expected),
            "{what}: frames {:?}",
            frame_types(&answer)
        );
        federation.assert_responsive(what).await;
    }
    federation.assert_job_completes("malformed frames").await;

    // Malformed gRPC messages in well-formed HTTP/2 (also over mutual TLS
    // in the next test).
    send_malformed_messages(&federation, || async {
        TcpStream::connect(addr).await.unwrap()
    })
    .await;

    // The server's SETTINGS advertise --max-streams-per-connection.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(PREFACE).await.unwrap();
    tcp.write_all(&frame(0x4, 0, 0, 0, &[])).await.unwrap();
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "the server speaks first with SETTINGS");
    let mut settings = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
    tcp.read_exact(&mut settings).await.unwrap();
    let max_streams = settings
        .chunks_exact(6)
        .find(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]));
    assert_eq!(max_streams, Some(MAX_STREAMS));
    drop(tcp);

    // A peer that completes the preface, then goes silent (half-open): the
    // coordinator's keepalive ping goes unanswered and the connection is
    // closed, long before any handshake timeout would matter.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    silent.write_all(PREFACE).await.unwrap();
    silent.write_all(&frame(0x4, 0, 0, 0, &[])).await.unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut silent, Duration::from_secs(2) + RESPONSIVE).await;
    eprintln!(
        "silent after the preface: closed after {:?}, frames {:?}",
        started.elapsed(),
        frame_types(&answer)
    );
    assert!(
        frame_types(&answer).contains(&PING),
        "{:?}",
        frame_types(&answer)
    );
    federation.assert_responsive("a half-open connection").await;

    // An upload that stalls after its first bytes is cut at the request
    // timeout, and the coordinator serves meanwhile.
    let mut stalled_body = vec![0u8];
    stalled_body.extend_from_slice(&100u32.to_be_bytes());
    stalled_body.extend_from_slice(&[0u8; 10]);
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let stalled = tokio::spawn(async move {
        let authority = addr.to_string();
        let within = REQUEST_TIMEOUT + RESPONSIVE;
        raw_call(
            stream,
            &authority,
            "http",
            SUBMIT_RESULT,
            stalled_body,
            false,
            within,
        )
        .await
    });
    federation
        .assert_responsive("an upload stalled (while it hangs)")
        .await;
    let (code, message) = stalled.await.unwrap();
    eprintln!(
        "stalled upload: grpc-status {code} {message:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(
        tonic::Code::from_i32(code),
        tonic::Code::Cancelled,
        "{message}"
    );
    assert!(started.elapsed() >= REQUEST_TIMEOUT - Duration::from_millis(200));

    // (e) A flood of idle connections. Those over --max-connections are
    // closed at once; the rest when the handshake timeout passes.
    let flood = 1000.min(open_file_limit().saturating_sub(256) / 2);
    assert!(
        flood > test_limits().max_connections,
        "ulimit -n too low for this test"
    );
    let mut idle = Vec::with_capacity(flood);
    for _ in 0..flood {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // While the flood holds every slot, the coordinator refuses newcomers...
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut newcomer = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut newcomer, Duration::from_secs(1)).await;
    let started = Instant::now();
    let closings = idle.into_iter().map(|mut tcp| async move {
        read_until_closed(&mut tcp, HANDSHAKE_TIMEOUT + RESPONSIVE).await
    });
    futures::future::join_all(closings).await;
    eprintln!(
        "{flood} idle connections all closed {:?} after the flood",
        started.elapsed()
    );
    federation.assert_responsive("idle connections").await;
    federation.assert_job_completes("idle connections").await;

    federation.shut_down().await;
}

/// TLS with the client certificate in `kit`, speaking HTTP/2.
async fn tls_connect(
    addr: SocketAddr,
    kit: &Arc<Kit>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let provider = cohort_identity::tls::crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(kit.ca_der().unwrap()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(kit.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![kit.cert_der().unwrap()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    connector.connect(name, tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_grpc_after_a_valid_tls_handshake_leaves_the_coordinator_serving() {
    let dir = tempfile::tempdir().unwrap();
    let federation = federation(dir.path(), true).await;
    let addr = federation.addr;
    let developer_kit = federation.pki.as_ref().unwrap().developer.clone();

    // (d) A member with a valid certificate sends malformed gRPC bodies.
    send_malformed_messages(&federation, || tls_connect(addr, &developer_kit)).await;

    // Garbage inside a completed TLS session.
    let mut tls = tls_connect(addr, &developer_kit).await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut garbage = vec![0u8; 4096];
    rng.fill(&mut garbage[..]);
    let _ = tls.write_all(&garbage).await;
    let _ = tls.flush().await;
    read_until_closed(&mut tls, RESPONSIVE).await;
    federation.assert_responsive("garbage inside TLS").await;

    // A TLS session that never sends the HTTP/2 preface is closed.
    let mut silent = tls_connect(addr, &developer_kit).await;
    read_until_closed(&mut silent, HANDSHAKE_TIMEOUT + RESPONSIVE).await;
    // A TCP connection that never starts the TLS handshake is too.
    let mut mute = TcpStream::connect(addr).await.unwrap();
    read_until_closed(&mut mute, HANDSHAKE_TIMEOUT + RESPONSIVE).await;
    federation.assert_responsive("silent connections").await;

    federation
        .assert_job_completes("malformed gRPC over mutual TLS")
        .await;
    federation.shut_down().await;
}

#[test]
fn the_coordinator_documents_its_limits_and_refuses_unsafe_ones() {
    let cohort = env!("CARGO_BIN_EXE_cohort");
    let help = std::process::Command::new(cohort)
        .args(["coordinator", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--max-message-bytes",
        "--max-connections",
        "--max-streams-per-connection",
        "--max-calls-per-member",
        "--request-timeout-secs",
        "--handshake-timeout-secs",
        "--keepalive-interval-secs",
        "--keepalive-timeout-secs",
        "--max-developer-calls",
        "--developer-share",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, complaint) in [
        (
            "--max-message-bytes",
            "1000",
            "--max-message-bytes 1000 is below",
        ),
        (
            "--max-connections",
            "0",
            "--max-connections must be at least 1",
        ),
        (
            "--keepalive-timeout-secs",
            "0",
            "--keepalive-timeout-secs must be at least 1 second",
        ),
        (
            "--developer-share",
            "0",
            "--developer-share must be a fraction above 0 and at most 1",
        ),
        (
            "--developer-share",
            "1.5",
            "--developer-share must be a fraction above 0 and at most 1",
        ),
    ] {
        let out = std::process::Command::new(cohort)
            .args([
                "coordinator",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .args([flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(stderr.contains(complaint), "{flag} {value}: {stderr}");
    }
}

/// `cohort bench load` (docs/RELIABILITY.md, "Developer calls under load")
/// runs end to end and reports what the issue asks for: round times alone
/// and under load, and each call kind's latency percentiles. The numbers
/// are recorded from release builds, not asserted here.
#[test]
fn the_load_benchmark_reports_rounds_and_call_latencies() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args([
            "bench",
            "load",
            "--clients",
            "2",
            "--callers",
            "6",
            "--rounds",
            "2",
            "--repeats",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["developer_share"], 0.05, "{report}");
    assert_eq!(report["pair_slowdowns"].as_array().unwrap().len(), 2);
    assert!(report["median_round_secs_alone"].as_f64().unwrap() > 0.0);
    assert!(report["median_round_secs_loaded"].as_f64().unwrap() > 0.0);
    let calls = report["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3, "{report}");
    for call in calls {
        assert!(call["count"].as_u64().unwrap() > 0, "{call}");
        assert_eq!(call["errors"], 0, "{call}");
        assert!(call["p99_ms"].as_f64().unwrap() >= call["p50_ms"].as_f64().unwrap());
    }
}
