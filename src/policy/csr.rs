//! CSR parsing and checks (RFC 8555 §7.4). STUB: being written.

use std::net::IpAddr;

use crate::acme::Identifier;
use crate::acme::jws::PublicJwk;

/// Why a CSR was refused; the message is shown to the client as `badCSR`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CsrError(pub String);

/// A CSR whose signature verified.
#[derive(Clone, Debug)]
pub struct ParsedCsr {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub common_name: Option<String>,
    pub public_key: PublicJwk,
}

/// Parses a CSR (DER) and verifies its self-signature and key.
pub fn parse_csr(_der: &[u8]) -> Result<ParsedCsr, CsrError> {
    Err(CsrError("not implemented".into()))
}

/// Checks the CSR names exactly the order's identifiers and is not the account key.
pub fn check_against_order(
    _csr: &ParsedCsr,
    _identifiers: &[Identifier],
    _account_key: &PublicJwk,
) -> Result<(), CsrError> {
    Err(CsrError("not implemented".into()))
}
