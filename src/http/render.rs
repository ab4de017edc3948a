//! Domain records → RFC 8555 wire objects (Pebble's `orderForDisplay`).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::links::Links;
use crate::acme::types::{Account, Authorization, Challenge, Order};
use crate::model::{AccountRecord, AuthzRecord, ChallengeRecord, OrderRecord};

/// RFC 3339 text of a time.
pub(super) fn time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

pub(super) fn account(links: &Links, a: &AccountRecord) -> Account {
    Account {
        status: a.status,
        contact: a.contact.clone(),
        terms_of_service_agreed: a.terms_of_service_agreed,
        orders: links.orders(&a.id),
        external_account_binding: a.eab_jws.clone(),
    }
}

pub(super) fn order(links: &Links, o: &OrderRecord) -> Order {
    Order {
        status: o.status,
        expires: time(o.expires),
        identifiers: o.identifiers.clone(),
        not_before: o.not_before.map(time),
        not_after: o.not_after.map(time),
        error: o.error.clone(),
        authorizations: o.authz_ids.iter().map(|id| links.authz(id)).collect(),
        finalize: links.finalize(&o.id),
        certificate: o.certificate_id.as_ref().map(|c| links.certificate(c)),
        replaces: o.replaces.clone(),
        profile: o.profile.clone(),
    }
}

pub(super) fn authz(links: &Links, a: &AuthzRecord) -> Authorization {
    Authorization {
        identifier: a.identifier.clone(),
        status: a.status,
        expires: time(a.expires),
        challenges: a
            .challenges
            .iter()
            .map(|c| challenge(links, a, c))
            .collect(),
        wildcard: a.wildcard,
    }
}

pub(super) fn challenge(links: &Links, a: &AuthzRecord, c: &ChallengeRecord) -> Challenge {
    Challenge {
        kind: c.kind,
        url: links.challenge(&a.id, c.kind),
        status: c.status,
        token: c.token.clone(),
        validated: c.validated.map(time),
        error: c.error.clone(),
    }
}
