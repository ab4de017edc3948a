//! Certificate profiles (draft-ietf-acme-profiles): which profile a new
//! order gets, and what an order's profile asks of issuance (the lifetime
//! and the upstream's profile).
//!
//! <https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/>

use time::Duration;

use super::{Authority, Profile, Provisioner, RaError};
use crate::acme::ProblemType;
use crate::model::OrderRecord;

/// The profile that applies to an order that names none, when configured.
const DEFAULT_PROFILE: &str = "default";

/// What an order's profile asks of issuance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct IssuanceTerms {
    /// The lifetime when the order names no notAfter: the profile's, else
    /// the provisioner's default; `None` leaves it to the upstream.
    pub(super) lifetime: Option<Duration>,
    /// The profile asked of the upstream.
    pub(super) upstream_profile: Option<String>,
}

/// The profile a new order is issued under: the one `asked` for when `prov`
/// offers it, else `default` when offered, else none. A profile not offered
/// is `invalidProfile`, naming the ones that are.
pub(super) fn choose(prov: &Provisioner, asked: Option<&str>) -> Result<Option<String>, RaError> {
    let Some(name) = asked else {
        return Ok(prov
            .profiles
            .contains_key(DEFAULT_PROFILE)
            .then(|| DEFAULT_PROFILE.to_owned()));
    };
    if prov.profiles.contains_key(name) {
        return Ok(Some(name.to_owned()));
    }
    let detail = if prov.profiles.is_empty() {
        format!(
            "this server offers no certificate profiles; leave \"profile\" ({name:?}) out of the order"
        )
    } else {
        format!(
            "there is no certificate profile {name:?} here; this server offers {} \
             (its directory's meta.profiles)",
            known(prov)
        )
    };
    Err(RaError::new(ProblemType::InvalidProfile, detail))
}

/// The profiles `prov` offers, for messages: `"default", "shortlived"`.
fn known(prov: &Provisioner) -> String {
    prov.profiles
        .keys()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Authority {
    /// What `order`'s profile asks of issuance. A profile no longer
    /// configured (removed since the order was created) is
    /// `invalidProfile`: the draft forbids issuing under it.
    pub(super) fn issuance_terms(&self, order: &OrderRecord) -> Result<IssuanceTerms, RaError> {
        let default = self.default_lifetime(&order.provisioner);
        let Some(name) = &order.profile else {
            return Ok(IssuanceTerms {
                lifetime: default,
                upstream_profile: None,
            });
        };
        let profile: Option<&Profile> = self
            .provisioner(&order.provisioner)
            .and_then(|p| p.profiles.get(name));
        let Some(profile) = profile else {
            return Err(RaError::new(
                ProblemType::InvalidProfile,
                format!(
                    "this server no longer issues certificates under profile {name:?}; create a new order"
                ),
            ));
        };
        Ok(IssuanceTerms {
            lifetime: profile.lifetime.or(default),
            upstream_profile: profile.upstream_profile.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn provisioner(profiles: &[(&str, Option<Duration>)]) -> Provisioner {
        Provisioner {
            name: "acme".into(),
            challenges: Vec::new(),
            require_eab: false,
            policies: Vec::new(),
            default_lifetime: Some(Duration::days(90)),
            min_lifetime: Duration::minutes(5),
            max_lifetime: Duration::days(398),
            terms_of_service: None,
            website: None,
            caa_identities: Vec::new(),
            profiles: profiles
                .iter()
                .map(|(n, l)| {
                    let p = Profile {
                        description: format!("{n} certificates"),
                        lifetime: *l,
                        upstream_profile: Some(format!("up-{n}")),
                    };
                    ((*n).to_owned(), p)
                })
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn an_offered_profile_is_chosen() {
        let p = provisioner(&[("default", None), ("shortlived", Some(Duration::days(7)))]);
        assert_eq!(
            choose(&p, Some("shortlived")).unwrap().as_deref(),
            Some("shortlived")
        );
        assert_eq!(
            choose(&p, Some("default")).unwrap().as_deref(),
            Some("default")
        );
    }

    #[test]
    fn an_order_without_a_profile_gets_default_when_offered() {
        let with_default = provisioner(&[("default", None), ("shortlived", None)]);
        assert_eq!(
            choose(&with_default, None).unwrap().as_deref(),
            Some("default")
        );
        let without = provisioner(&[("shortlived", None)]);
        assert_eq!(choose(&without, None).unwrap(), None);
        assert_eq!(choose(&provisioner(&[]), None).unwrap(), None);
    }

    #[test]
    fn an_unknown_profile_is_invalid_profile_naming_the_known_ones() {
        let p = provisioner(&[("default", None), ("shortlived", None)]);
        let e = choose(&p, Some("longlived")).unwrap_err().problem;
        assert_eq!(e.problem_type(), Some(ProblemType::InvalidProfile));
        assert_eq!(e.http_status(), 400);
        assert!(e.detail.contains("\"longlived\""), "{}", e.detail);
        assert!(
            e.detail.contains("\"default\", \"shortlived\""),
            "{}",
            e.detail
        );
        // Names are matched exactly.
        assert!(choose(&p, Some("Default")).is_err());
        assert!(choose(&p, Some("")).is_err());
    }

    fn order(profile: Option<&str>) -> OrderRecord {
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        OrderRecord {
            id: crate::model::OrderId::random(),
            account_id: crate::model::AccountId::random(),
            provisioner: "acme".into(),
            status: crate::acme::types::OrderStatus::Ready,
            identifiers: Vec::new(),
            authz_ids: Vec::new(),
            not_before: None,
            not_after: None,
            expires: t0 + Duration::days(1),
            created_at: t0,
            error: None,
            certificate_id: None,
            replaces: None,
            profile: profile.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn issuance_follows_the_orders_profile() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(crate::store::memory::MemoryStore::new());
        let prov = provisioner(&[("default", None), ("shortlived", Some(Duration::days(7)))]);
        let (ra, _) = super::super::test_support::authority(
            store,
            dir.path(),
            "profiles",
            vec![prov],
            time::macros::datetime!(2026-01-01 00:00 UTC),
        );
        // The profile's lifetime and upstream profile.
        let terms = ra.issuance_terms(&order(Some("shortlived"))).unwrap();
        assert_eq!(terms.lifetime, Some(Duration::days(7)));
        assert_eq!(terms.upstream_profile.as_deref(), Some("up-shortlived"));
        // A profile without a lifetime: the provisioner's default.
        let terms = ra.issuance_terms(&order(Some("default"))).unwrap();
        assert_eq!(terms.lifetime, Some(Duration::days(90)));
        assert_eq!(terms.upstream_profile.as_deref(), Some("up-default"));
        // No profile (an order stored before profiles): as before.
        assert_eq!(
            ra.issuance_terms(&order(None)).unwrap(),
            IssuanceTerms {
                lifetime: Some(Duration::days(90)),
                upstream_profile: None
            }
        );
        // A profile removed from the configuration since.
        let e = ra.issuance_terms(&order(Some("gone"))).unwrap_err().problem;
        assert_eq!(e.problem_type(), Some(ProblemType::InvalidProfile));
        assert!(e.detail.contains("no longer issues"), "{}", e.detail);
    }

    #[test]
    fn an_order_record_without_a_profile_reads_and_writes_as_before() {
        let stored = order(None);
        let text = serde_json::to_string(&stored).unwrap();
        assert!(!text.contains("profile"), "{text}");
        let back: OrderRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, stored);
        let with = order(Some("shortlived"));
        let text = serde_json::to_string(&with).unwrap();
        assert!(text.contains("\"profile\":\"shortlived\""), "{text}");
        assert_eq!(serde_json::from_str::<OrderRecord>(&text).unwrap(), with);
    }

    #[test]
    fn any_profile_is_invalid_when_none_are_offered() {
        let e = choose(&provisioner(&[]), Some("shortlived"))
            .unwrap_err()
            .problem;
        assert_eq!(e.problem_type(), Some(ProblemType::InvalidProfile));
        assert!(
            e.detail.contains("offers no certificate profiles"),
            "{}",
            e.detail
        );
    }
}
