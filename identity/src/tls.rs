//! rustls configuration for the coordinator's side of mutual TLS.
//!
//! Client certificates are verified by webpki against the consortium root
//! and the current revocation list. The list can change while the server
//! runs ([`RevocationWatch::refresh`]): new handshakes see the new list at
//! once, and the coordinator also checks [`RevocationWatch::is_revoked`] on
//! every call, so connections opened before a revocation stop working too.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::{IdentityError, Kit, RevocationList, Role};

/// The one crypto provider Cohort uses (ring), named explicitly so that a
/// second provider pulled in by another dependency never makes rustls
/// guess.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Current {
    list: Arc<RevocationList>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// (modification time, length) of the file the list came from.
    stamp: Option<(SystemTime, u64)>,
}

/// The revocation list in force, reloadable while the server runs.
pub struct RevocationWatch {
    path: Option<PathBuf>,
    ca_der: CertificateDer<'static>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
    current: RwLock<Arc<Current>>,
}

impl std::fmt::Debug for RevocationWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationWatch")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl RevocationWatch {
    fn build(&self, list: RevocationList) -> Result<Current, IdentityError> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone());
        if let Some(der) = list.der().filter(|_| !list.is_empty()) {
            builder = builder
                .with_crls([der.clone()])
                .only_check_end_entity_revocation();
        }
        let verifier = builder
            .build()
            .map_err(|e| IdentityError::Tls(format!("client verifier: {e}")))?;
        Ok(Current {
            list: Arc::new(list),
            verifier,
            stamp: None,
        })
    }

    fn load(&self) -> Result<Current, IdentityError> {
        let Some(path) = &self.path else {
            return self.build(RevocationList::empty());
        };
        let stamp = file_stamp(path);
        let mut current = self.build(RevocationList::load(path, &self.ca_der)?)?;
        current.stamp = stamp;
        Ok(current)
    }

    fn current(&self) -> Arc<Current> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads the list if its file changed. Returns the new list when it
    /// did; on a broken or forged file the old list stays in force and the
    /// error says why.
    pub fn refresh(&self) -> Result<Option<Arc<RevocationList>>, IdentityError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        if file_stamp(path) == self.current().stamp {
            return Ok(None);
        }
        let fresh = Arc::new(self.load()?);
        let list = fresh.list.clone();
        match self.current.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(Some(list))
    }

    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.current().list.is_revoked(serial_hex)
    }

    pub fn list(&self) -> Arc<RevocationList> {
        self.current().list.clone()
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

#[derive(Debug)]
struct ReloadingVerifier {
    watch: Arc<RevocationWatch>,
    /// `false` for the dashboard: a browser without a certificate may
    /// still connect and sign in with a token.
    mandatory: bool,
}

impl ClientCertVerifier for ReloadingVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.watch.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.watch
            .current()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.watch
            .current()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.watch
            .current()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.watch.current().verifier.supported_verify_schemes()
    }
}

/// A coordinator's TLS server configuration plus the revocation list it
/// enforces.
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub revocation: Arc<RevocationWatch>,
}

impl ServerTls {
    /// `kit` must be a coordinator kit. `crl` is the revocation list file
    /// to enforce and watch (`None`: nothing is revoked).
    pub fn new(kit: &Kit, crl: Option<&Path>) -> Result<Self, IdentityError> {
        // gRPC runs over HTTP/2 only.
        Self::build(kit, crl, true, b"h2")
    }

    /// The same certificate and revocation list for the web dashboard's
    /// HTTPS (HTTP/1.1): a consortium client certificate is verified when
    /// one is presented, but none is required (browsers sign in with a
    /// token instead).
    pub fn optional_client_certificate(
        kit: &Kit,
        crl: Option<&Path>,
    ) -> Result<Self, IdentityError> {
        Self::build(kit, crl, false, b"http/1.1")
    }

    fn build(
        kit: &Kit,
        crl: Option<&Path>,
        mandatory: bool,
        alpn: &[u8],
    ) -> Result<Self, IdentityError> {
        kit.expect_role(&[Role::Coordinator])?;
        let provider = crypto_provider();
        let ca_der = kit.ca_der()?;
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_der.clone())
            .map_err(|e| IdentityError::Tls(format!("CA certificate: {e}")))?;
        let hints = roots.subjects();
        let mut watch = RevocationWatch {
            path: crl.map(Path::to_path_buf),
            ca_der,
            roots: Arc::new(roots),
            provider: provider.clone(),
            hints,
            current: RwLock::new(Arc::new(Current {
                list: Arc::new(RevocationList::empty()),
                verifier: Arc::new(rustls::server::NoClientAuth),
                stamp: None,
            })),
        };
        let loaded = watch.load()?;
        watch.current = RwLock::new(Arc::new(loaded));
        let revocation = Arc::new(watch);

        let key = PrivateKeyDer::from_pem_slice(kit.key_pem.as_bytes())
            .map_err(|e| IdentityError::Tls(format!("TLS private key: {e}")))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| IdentityError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(ReloadingVerifier {
                watch: revocation.clone(),
                mandatory,
            }))
            .with_single_cert(vec![kit.cert_der()?], key)
            .map_err(|e| IdentityError::Tls(format!("server certificate: {e}")))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            revocation,
        })
    }
}
