//! Reading issued certificates. STUB: being written.

use time::OffsetDateTime;

use crate::acme::jws::PublicJwk;

/// What the RA needs to know of an issued certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub public_key: PublicJwk,
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertError(pub String);

/// Parses a DER certificate.
pub fn cert_info(_der: &[u8]) -> Result<CertInfo, CertError> {
    Err(CertError("not implemented".into()))
}
