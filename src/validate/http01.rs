//! http-01 (RFC 8555 §8.3). STUB: being written.

use super::{ValidationError, ValidationRecord, ValidationSettings};
use crate::acme::Identifier;

/// Validates http-01.
pub async fn validate(
    _settings: &ValidationSettings,
    _identifier: &Identifier,
    _token: &str,
    _key_authorization: &str,
) -> Result<ValidationRecord, ValidationError> {
    Err(ValidationError::Connection("not implemented".into()))
}
