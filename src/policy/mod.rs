//! Issuance policy: which identifiers may be ordered, and the CSR and
//! certificate checks of RFC 8555 §7.4. Pure functions.

pub mod cert;
pub mod csr;
pub mod identifiers;
pub mod rules;
