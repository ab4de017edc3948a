//! ACME Renewal Information (RFC 9773): the suggested renewal window of a
//! certificate issued through this RA, from the upstream when it offers ARI,
//! otherwise computed from the certificate's lifetime.
//!
//! <https://www.rfc-editor.org/rfc/rfc9773#section-4>

use time::{Duration, OffsetDateTime};

use super::Authority;
use super::error::{RaError, problem};
use crate::acme::ProblemType;
use crate::model::CertificateRecord;
use crate::policy::cert;

/// A suggested renewal window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalWindow {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
}

impl Authority {
    /// The renewal window of the certificate with ARI id `cert_id`
    /// (`base64url(AKI keyIdentifier) "." base64url(serial)`, RFC 9773 §4.1).
    pub async fn renewal_info(&self, cert_id: &str) -> Result<RenewalWindow, RaError> {
        let record = self.cert_by_ari_id(cert_id).await?;
        if let Some(rev) = &record.revocation {
            // RFC 9773 §4.2: a window in the past asks for renewal now.
            return Ok(RenewalWindow {
                start: rev.revoked_at - Duration::hours(1),
                end: rev.revoked_at,
            });
        }
        let leaf = leaf_der(&record)?;
        match self
            .upstream
            .renewal_window_at(&record.upstream, &leaf)
            .await
        {
            Ok(Some((start, end))) if start < end => Ok(RenewalWindow { start, end }),
            Ok(_) => Ok(computed_window(record.not_before, record.not_after)),
            Err(e) => {
                tracing::warn!(error = %e, "upstream renewal information unavailable");
                Ok(computed_window(record.not_before, record.not_after))
            }
        }
    }

    /// The certificate an ARI id names, if this RA issued it.
    pub(super) async fn cert_by_ari_id(&self, cert_id: &str) -> Result<CertificateRecord, RaError> {
        let not_found = || {
            RaError::new(
                ProblemType::Malformed,
                format!("{cert_id:?} does not name a certificate issued through this server"),
            )
            .with_status(404)
        };
        let Some(serial_hex) = ari_serial_hex(cert_id) else {
            return problem(
                ProblemType::Malformed,
                format!(
                    "{cert_id:?} is not an ARI certificate id (base64url AKI \".\" base64url serial, RFC 9773 §4.1)"
                ),
            );
        };
        let Some(record) = self.records.cert_by_serial(&serial_hex).await? else {
            return Err(not_found());
        };
        let leaf = leaf_der(&record)?;
        match cert::ari_cert_id(&leaf) {
            Ok(id) if id == cert_id => Ok(record.value),
            _ => Err(not_found()),
        }
    }
}

fn leaf_der(record: &CertificateRecord) -> Result<Vec<u8>, RaError> {
    cert::pem_chain_to_der(&record.chain_pem)
        .ok()
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| RaError::new(ProblemType::ServerInternal, "a stored chain is unreadable"))
}

/// Renew in the window from two thirds to five sixths of the lifetime, as
/// the RA's own certificate does.
pub fn computed_window(not_before: OffsetDateTime, not_after: OffsetDateTime) -> RenewalWindow {
    let life = not_after - not_before;
    RenewalWindow {
        start: not_before + life * 2 / 3,
        end: not_before + life * 5 / 6,
    }
}

/// The serial of an ARI id as the store keys it (hex, leading zero bytes dropped).
fn ari_serial_hex(cert_id: &str) -> Option<String> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (aki, serial) = cert_id.split_once('.')?;
    if aki.is_empty() || serial.is_empty() {
        return None;
    }
    URL_SAFE_NO_PAD.decode(aki).ok()?;
    let bytes = URL_SAFE_NO_PAD.decode(serial).ok()?;
    let hex: String = bytes
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(if hex.is_empty() { "0".to_owned() } else { hex })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_two_thirds_to_five_sixths() {
        let nb = OffsetDateTime::UNIX_EPOCH;
        let w = computed_window(nb, nb + Duration::days(90));
        assert_eq!(w.start, nb + Duration::days(60));
        assert_eq!(w.end, nb + Duration::days(75));
    }

    #[test]
    fn ari_ids_parse_to_serials() {
        // RFC 9773 §4.1 example.
        assert_eq!(
            ari_serial_hex("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE").as_deref(),
            Some("87654321")
        );
        assert_eq!(ari_serial_hex("nodot"), None);
        assert_eq!(ari_serial_hex(".AIdlQyE"), None);
        assert_eq!(ari_serial_hex("a.b!"), None);
    }
}
