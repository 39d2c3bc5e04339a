//! The consortium's certificate revocation list, as the coordinator reads
//! it: signature checked against the CA before a single entry is trusted.

use std::collections::HashSet;
use std::path::Path;

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::IdentityError;
use crate::principal::serial_hex;

#[derive(Debug, Clone)]
pub struct RevocationList {
    der: Option<CertificateRevocationListDer<'static>>,
    serials: HashSet<String>,
    number: Option<u64>,
}

impl RevocationList {
    /// No revocation list configured: nothing is revoked.
    pub fn empty() -> Self {
        Self {
            der: None,
            serials: HashSet::new(),
            number: None,
        }
    }

    /// Reads a PEM CRL from `path` and checks that `ca_der` signed it.
    pub fn load(path: &Path, ca_der: &[u8]) -> Result<Self, IdentityError> {
        let bytes = std::fs::read(path).map_err(IdentityError::io(path))?;
        Self::from_pem(&bytes, ca_der).map_err(|reason| IdentityError::RevocationList {
            path: path.to_path_buf(),
            reason,
        })
    }

    fn from_pem(pem: &[u8], ca_der: &[u8]) -> Result<Self, String> {
        let der = CertificateRevocationListDer::from_pem_slice(pem)
            .map_err(|e| format!("no PEM revocation list: {e}"))?;
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|e| format!("not a valid revocation list: {e}"))?;
        let (_, ca) =
            X509Certificate::from_der(ca_der).map_err(|e| format!("CA certificate: {e}"))?;
        crl.verify_signature(ca.public_key())
            .map_err(|_| "not signed by the consortium CA".to_string())?;
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect();
        let number = crl.crl_number().and_then(|n| n.try_into().ok());
        Ok(Self {
            der: Some(CertificateRevocationListDer::from(der.to_vec())),
            serials,
            number,
        })
    }

    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.serials.contains(serial_hex)
    }

    pub fn len(&self) -> usize {
        self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    /// The CRL number the CA gave this list (grows with every revocation).
    pub fn number(&self) -> Option<u64> {
        self.number
    }

    pub fn der(&self) -> Option<&CertificateRevocationListDer<'static>> {
        self.der.as_ref()
    }
}
