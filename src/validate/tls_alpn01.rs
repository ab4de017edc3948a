//! STUB: being written.

use super::{ValidationError, ValidationRecord, ValidationSettings};
use crate::acme::Identifier;

/// Validates the challenge.
pub async fn validate(
    _settings: &ValidationSettings,
    _identifier: &Identifier,
    _key_authorization: &str,
) -> Result<ValidationRecord, ValidationError> {
    Err(ValidationError::Connection("not implemented".into()))
}
