//! Status transitions of orders, authorizations and challenges as pure
//! functions (RFC 8555 §7.1.6). Every status change in the Authority goes
//! through here.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.6>

use time::OffsetDateTime;

use crate::acme::types::{AuthorizationStatus, ChallengeStatus, OrderStatus};
use crate::acme::{Problem, ProblemType};
use crate::model::{AuthzRecord, CertificateRecord, OrderRecord};

/// The authorization as it stands at `now`: a pending or valid one past its
/// expiry is `expired`.
pub fn authz_at(mut authz: AuthzRecord, now: OffsetDateTime) -> AuthzRecord {
    if matches!(
        authz.status,
        AuthorizationStatus::Pending | AuthorizationStatus::Valid
    ) && now >= authz.expires
    {
        authz.status = AuthorizationStatus::Expired;
    }
    authz
}

/// Applies a validation outcome to one challenge of an authorization.
/// Returns false (and changes nothing) if the authorization is no longer
/// pending or the challenge is neither `pending` (a quick validation whose
/// start was never stored) nor `processing`.
pub fn apply_validation(
    authz: &mut AuthzRecord,
    challenge_index: usize,
    outcome: Result<(), Problem>,
    now: OffsetDateTime,
) -> bool {
    let Some(ch) = authz.challenges.get_mut(challenge_index) else {
        return false;
    };
    if !matches!(
        ch.status,
        ChallengeStatus::Pending | ChallengeStatus::Processing
    ) || authz.status != AuthorizationStatus::Pending
    {
        return false;
    }
    match outcome {
        Ok(()) => {
            ch.status = ChallengeStatus::Valid;
            ch.validated = Some(now);
            ch.error = None;
            authz.status = AuthorizationStatus::Valid;
        }
        Err(problem) => {
            ch.status = ChallengeStatus::Invalid;
            ch.error = Some(problem);
            authz.status = AuthorizationStatus::Invalid;
        }
    }
    true
}

/// Starts validation of one challenge: `pending` → `processing`. Returns
/// false when there is nothing to start (already started or finished).
pub fn start_validation(authz: &mut AuthzRecord, challenge_index: usize) -> bool {
    if authz.status != AuthorizationStatus::Pending {
        return false;
    }
    // RFC 8555 §7.5.1: once one challenge is being validated, the others
    // stay as they are; only one may be in flight per authorization.
    if authz
        .challenges
        .iter()
        .any(|c| c.status == ChallengeStatus::Processing)
    {
        return false;
    }
    match authz.challenges.get_mut(challenge_index) {
        Some(ch) if ch.status == ChallengeStatus::Pending => {
            ch.status = ChallengeStatus::Processing;
            true
        }
        _ => false,
    }
}

/// The status an order in `pending` or `ready` should have, given its
/// authorizations (already passed through [`authz_at`]) and the time.
/// Orders in `processing`, `valid` or `invalid` are left as they are.
pub fn order_at(
    mut order: OrderRecord,
    authzs: &[AuthzRecord],
    now: OffsetDateTime,
) -> OrderRecord {
    if !matches!(order.status, OrderStatus::Pending | OrderStatus::Ready) {
        return order;
    }
    if now >= order.expires {
        order.status = OrderStatus::Invalid;
        order.error = Some(Problem::new(
            ProblemType::Malformed,
            "the order expired before it was finalized; create a new order",
        ));
        return order;
    }
    if let Some(bad) = authzs.iter().find(|a| {
        a.status != AuthorizationStatus::Valid && a.status != AuthorizationStatus::Pending
    }) {
        order.status = OrderStatus::Invalid;
        let detail = match bad.status {
            AuthorizationStatus::Invalid => {
                let why = bad
                    .challenges
                    .iter()
                    .find_map(|c| c.error.as_ref())
                    .map(|p| p.detail.clone())
                    .unwrap_or_default();
                format!("authorization for {} failed: {why}", bad.identifier)
            }
            other => format!("authorization for {} is {other:?}", bad.identifier).to_lowercase(),
        };
        let kind = bad
            .challenges
            .iter()
            .find_map(|c| c.error.as_ref())
            .and_then(Problem::problem_type)
            .unwrap_or(ProblemType::Unauthorized);
        order.error = Some(Problem::new(kind, detail).with_identifier(bad.identifier.clone()));
        return order;
    }
    order.status = if authzs.len() == order.authz_ids.len()
        && authzs
            .iter()
            .all(|a| a.status == AuthorizationStatus::Valid)
    {
        OrderStatus::Ready
    } else {
        OrderStatus::Pending
    };
    order
}

/// `ready` → `processing` on finalize. False if the order is not ready.
pub fn begin_finalize(order: &mut OrderRecord) -> bool {
    if order.status != OrderStatus::Ready {
        return false;
    }
    order.status = OrderStatus::Processing;
    true
}

/// How a finalize job ended (RFC 8555 §7.4).
#[derive(Clone, Debug, PartialEq)]
pub enum FinalizeOutcome {
    /// The upstream issued this certificate.
    Issued(Box<CertificateRecord>),
    /// The order fails with this problem.
    Failed(Problem),
}

/// Ends finalization of a `processing` order with its outcome: `valid` with
/// the certificate (and the validity the upstream actually gave), or
/// `invalid` with the problem. False if the order is not `processing`.
pub fn end_finalize(order: &mut OrderRecord, outcome: &FinalizeOutcome) -> bool {
    if order.status != OrderStatus::Processing {
        return false;
    }
    match outcome {
        FinalizeOutcome::Issued(cert) => {
            order.status = OrderStatus::Valid;
            order.certificate_id = Some(cert.id.clone());
            order.not_before = Some(cert.not_before);
            order.not_after = Some(cert.not_after);
        }
        FinalizeOutcome::Failed(p) => {
            order.status = OrderStatus::Invalid;
            order.error = Some(p.clone());
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::acme::Identifier;
    use crate::acme::types::ChallengeType;
    use crate::model::{AccountId, AuthzId, ChallengeRecord, OrderId};

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::days(20000)
    }

    fn authz() -> AuthzRecord {
        AuthzRecord {
            id: AuthzId::random(),
            account_id: AccountId::random(),
            order_id: OrderId::random(),
            identifier: Identifier::Dns("a.test".into()),
            wildcard: false,
            status: AuthorizationStatus::Pending,
            expires: now() + Duration::hours(1),
            challenges: vec![
                ChallengeRecord {
                    kind: ChallengeType::Http01,
                    token: "t".into(),
                    status: ChallengeStatus::Pending,
                    validated: None,
                    error: None,
                },
                ChallengeRecord {
                    kind: ChallengeType::Dns01,
                    token: "t".into(),
                    status: ChallengeStatus::Pending,
                    validated: None,
                    error: None,
                },
            ],
        }
    }

    fn order(authzs: &[AuthzRecord]) -> OrderRecord {
        OrderRecord {
            id: OrderId::random(),
            account_id: AccountId::random(),
            provisioner: "acme".into(),
            status: OrderStatus::Pending,
            identifiers: vec![Identifier::Dns("a.test".into())],
            authz_ids: authzs.iter().map(|a| a.id.clone()).collect(),
            not_before: None,
            not_after: None,
            expires: now() + Duration::hours(2),
            created_at: now(),
            error: None,
            certificate_id: None,
            replaces: None,
            profile: None,
        }
    }

    #[test]
    fn challenge_lifecycle() {
        let mut a = authz();
        assert!(start_validation(&mut a, 0));
        assert!(!start_validation(&mut a, 0), "already processing");
        assert!(!start_validation(&mut a, 1), "one challenge at a time");
        assert!(apply_validation(&mut a, 0, Ok(()), now()));
        assert_eq!(a.status, AuthorizationStatus::Valid);
        assert_eq!(a.challenges[0].status, ChallengeStatus::Valid);
        assert!(!apply_validation(&mut a, 0, Ok(()), now()), "only once");
    }

    #[test]
    fn failed_challenge_invalidates_authz_and_order() {
        let mut a = authz();
        assert!(start_validation(&mut a, 0));
        let p = Problem::new(ProblemType::Connection, "refused");
        assert!(apply_validation(&mut a, 0, Err(p), now()));
        assert_eq!(a.status, AuthorizationStatus::Invalid);
        let o = order_at(order(std::slice::from_ref(&a)), &[a], now());
        assert_eq!(o.status, OrderStatus::Invalid);
        let err = o.error.unwrap();
        assert_eq!(err.problem_type(), Some(ProblemType::Connection));
        assert!(err.detail.contains("refused"));
    }

    #[test]
    fn order_becomes_ready_when_all_authzs_are_valid() {
        let mut a = authz();
        let b = authz();
        let o = order(&[a.clone(), b.clone()]);
        start_validation(&mut a, 0);
        apply_validation(&mut a, 0, Ok(()), now());
        let o2 = order_at(o.clone(), &[a.clone(), b.clone()], now());
        assert_eq!(o2.status, OrderStatus::Pending);
        let mut b = b;
        start_validation(&mut b, 1);
        apply_validation(&mut b, 1, Ok(()), now());
        let mut o3 = order_at(o, &[a, b], now());
        assert_eq!(o3.status, OrderStatus::Ready);
        assert!(begin_finalize(&mut o3));
        assert!(!begin_finalize(&mut o3));
        let cert = CertificateRecord {
            id: crate::model::CertId::random(),
            account_id: o3.account_id.clone(),
            order_id: o3.id.clone(),
            serial_hex: "01".to_owned(),
            chain_pem: String::new(),
            not_before: now(),
            not_after: now() + Duration::days(1),
            upstream: "test".to_owned(),
            revocation: None,
        };
        let issued = FinalizeOutcome::Issued(Box::new(cert.clone()));
        assert!(end_finalize(&mut o3, &issued));
        assert_eq!(o3.status, OrderStatus::Valid);
        assert_eq!(o3.certificate_id, Some(cert.id));
        assert_eq!(o3.not_after, Some(cert.not_after));
        assert!(!end_finalize(&mut o3, &issued), "only once");
    }

    #[test]
    fn expiry() {
        let a = authz();
        let late = now() + Duration::hours(3);
        assert_eq!(
            authz_at(a.clone(), late).status,
            AuthorizationStatus::Expired
        );
        let o = order_at(order(std::slice::from_ref(&a)), &[a], late);
        assert_eq!(o.status, OrderStatus::Invalid);
    }
}
