//! Orders and authorizations: creation, reads (with expiry applied), the
//! account's orders list, and authorization deactivation (RFC 8555 §7.4, §7.5).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

use std::sync::Arc;

use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use super::error::{RaError, problem};
use super::{Authority, state};
use crate::acme::ProblemType;
use crate::acme::types::{
    AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, NewOrderRequest, OrderStatus,
};
use crate::model::{
    AccountId, AccountRecord, AuthzId, AuthzRecord, ChallengeRecord, OrderId, OrderRecord,
    random_token,
};
use crate::policy::identifiers::check_identifiers;
use crate::store::Records;
use crate::store::records::{Batch, Change, Versioned};

/// Orders per page of the account's orders list.
pub(super) const ORDERS_PAGE: usize = 100;

impl Authority {
    /// newOrder (RFC 8555 §7.4).
    pub async fn new_order(
        &self,
        account: &AccountRecord,
        req: NewOrderRequest,
    ) -> Result<(OrderRecord, Vec<AuthzRecord>), RaError> {
        let Some(prov) = self.provisioner(&account.provisioner) else {
            return problem(
                ProblemType::Unauthorized,
                "the account's provisioner is gone",
            );
        };
        let identifiers = check_identifiers(&req.identifiers).map_err(RaError::from_problem)?;
        let profile = super::profiles::choose(prov, req.profile.as_deref())?;
        let (key_policy, prevalidated) = self.account_key_policy(account).await?;
        let policies: Vec<_> = prov.policies.iter().cloned().chain(key_policy).collect();
        if let Err((id, why)) = crate::policy::rules::check_all(&policies, &identifiers) {
            return Err(RaError::from_problem(
                crate::acme::Problem::new(ProblemType::RejectedIdentifier, why).with_identifier(id),
            ));
        }
        // Several upstreams: a route must take the whole order.
        if let Err(why) = self.upstream.check_route(&identifiers, &requester(account)) {
            return problem(ProblemType::RejectedIdentifier, why);
        }
        let now = self.clock.now();
        let not_before = parse_time("notBefore", req.not_before.as_deref())?;
        let not_after = parse_time("notAfter", req.not_after.as_deref())?;
        // Client-chosen times stay within [now - 1 h, now + max lifetime], so
        // no later computation on them can overflow.
        let earliest = now - Duration::hours(1);
        let latest = now.checked_add(prov.max_lifetime).unwrap_or(now);
        for (field, value) in [("notBefore", not_before), ("notAfter", not_after)] {
            if let Some(t) = value.filter(|t| *t < earliest || *t > latest) {
                return problem(
                    ProblemType::Malformed,
                    format!(
                        "{field} {} is out of range: it must lie between {} (an hour ago) and {} \
                         (now plus this provisioner's maximum lifetime of {} h)",
                        rfc3339(t),
                        rfc3339(earliest),
                        rfc3339(latest),
                        prov.max_lifetime.whole_hours()
                    ),
                );
            }
        }
        if let (Some(nb), Some(na)) = (not_before, not_after) {
            if na <= nb {
                return problem(ProblemType::Malformed, "notAfter must be after notBefore");
            }
        }
        if let Some(na) = not_after {
            let start = not_before.unwrap_or(now);
            let life = na - start;
            if na <= now {
                return problem(ProblemType::Malformed, "notAfter is in the past");
            }
            if life > prov.max_lifetime {
                return problem(
                    ProblemType::RejectedIdentifier,
                    format!(
                        "the requested lifetime ({} h) is longer than this provisioner allows ({} h)",
                        life.whole_hours(),
                        prov.max_lifetime.whole_hours()
                    ),
                );
            }
            if life < prov.min_lifetime {
                return problem(
                    ProblemType::Malformed,
                    format!(
                        "the requested lifetime is shorter than this provisioner allows ({} min)",
                        prov.min_lifetime.whole_minutes()
                    ),
                );
            }
        }
        if let Some(replaced) = &req.replaces {
            // RFC 9773 §5: the replaced certificate must be one this account
            // got through this server.
            let cert = self.cert_by_ari_id(replaced).await?;
            if cert.account_id != account.id {
                return problem(
                    ProblemType::Unauthorized,
                    "the certificate named in \"replaces\" belongs to another account",
                );
            }
        }
        let order_id = OrderId::random();
        let expires = now + self.opts.order_lifetime;
        let authz_expires = (now + self.opts.authz_lifetime).min(expires);
        let mut authzs: Vec<AuthzRecord> = Vec::with_capacity(identifiers.len());
        for id in &identifiers {
            let wildcard = id.is_wildcard();
            let base = id.base();
            // A wildcard and its base name need separate authorizations: the
            // wildcard's offers dns-01 only (RFC 8555 §7.1.3).
            let kinds: Vec<ChallengeType> = prov
                .challenges
                .iter()
                .copied()
                .filter(|k| match (&base, k) {
                    (_, ChallengeType::Dns01) if wildcard => true,
                    (_, _) if wildcard => false,
                    (Identifier::Ip(_), ChallengeType::Dns01) => false,
                    _ => true,
                })
                .collect();
            if kinds.is_empty() {
                return problem(
                    ProblemType::RejectedIdentifier,
                    format!(
                        "{id} cannot be validated with the challenge types this provisioner offers ({})",
                        prov.challenges
                            .iter()
                            .map(|c| c.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            let token = random_token(32);
            if prevalidated {
                // The key's allow rules (checked above) name what this
                // account is trusted for: no challenge to answer.
                tracing::info!(account = %account.id, identifier = %id, "authorization pre-validated by the account's EAB key");
            }
            authzs.push(AuthzRecord {
                id: AuthzId::random(),
                account_id: account.id.clone(),
                order_id: order_id.clone(),
                identifier: base,
                wildcard,
                status: if prevalidated {
                    AuthorizationStatus::Valid
                } else {
                    AuthorizationStatus::Pending
                },
                expires: authz_expires,
                challenges: kinds
                    .into_iter()
                    .map(|kind| ChallengeRecord {
                        kind,
                        token: token.clone(),
                        status: ChallengeStatus::Pending,
                        validated: None,
                        error: None,
                    })
                    .collect(),
            });
        }
        let order = OrderRecord {
            id: order_id,
            account_id: account.id.clone(),
            provisioner: account.provisioner.clone(),
            status: if prevalidated {
                OrderStatus::Ready
            } else {
                OrderStatus::Pending
            },
            identifiers,
            authz_ids: authzs.iter().map(|a| a.id.clone()).collect(),
            not_before,
            not_after,
            expires,
            created_at: now,
            error: None,
            certificate_id: None,
            replaces: req.replaces,
            profile,
        };
        let quota = self.take_order_quota(account, &authzs)?;
        self.records
            .commit(Records::order_insert_ops(Batch::new(), &order, &authzs))
            .await?;
        quota.keep();
        Ok((order, authzs))
    }

    /// An order of `account`, with expiry and authorization outcomes applied.
    pub async fn order(&self, account: &AccountId, id: &str) -> Result<OrderRecord, RaError> {
        let order = self.owned_order(account, id).await?;
        Ok(self.refresh_order(order).await?.value)
    }

    /// An order as a client polls it. While it is `pending`, a validation
    /// that a stopped process left `processing` is started again, as reading
    /// its authorization does: clients that poll the order rather than the
    /// authorization after answering a challenge (instant-acme does) would
    /// otherwise wait for it forever.
    pub async fn polled_order(
        self: &Arc<Self>,
        account: &AccountRecord,
        id: &str,
    ) -> Result<OrderRecord, RaError> {
        let order = self.order(&account.id, id).await?;
        if order.status == OrderStatus::Pending {
            for authz in self.order_authzs(&order).await? {
                self.resume_stalled(account, &authz);
            }
        }
        Ok(order)
    }

    pub(super) async fn owned_order(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<Versioned<OrderRecord>, RaError> {
        let order = match OrderId::parse(id) {
            Some(id) => self.records.get::<OrderRecord>(id.as_str()).await?,
            None => None,
        };
        owned(order, account, "order")
    }

    /// Brings a stored order up to date (expiry, authorization results) and
    /// stores the change, retrying on concurrent updates. Returns the order
    /// as the store now holds it.
    pub(super) async fn refresh_order(
        &self,
        order: Versioned<OrderRecord>,
    ) -> Result<Versioned<OrderRecord>, RaError> {
        let (order, invalidated) = self
            .records
            .update_from(order, |current| async move {
                let Some(order) = current else {
                    return Err(not_found("order"));
                };
                if !matches!(order.status, OrderStatus::Pending | OrderStatus::Ready) {
                    return Ok(Change::Keep((order, false)));
                }
                let now = self.clock.now();
                let authzs = self.order_authzs(&order).await?;
                let next = state::order_at(order.value.clone(), &authzs, now);
                if next == order.value {
                    return Ok(Change::Keep((order, false)));
                }
                let invalidated = next.status == OrderStatus::Invalid;
                let next = Versioned::encode(next)?;
                // Deferred: this status follows from the authorizations and
                // the clock, so a crash that loses it only means computing it
                // again.
                let batch = Batch::new().replace_versioned(&order, &next);
                Ok(Change::CommitDeferred(batch, (next, invalidated)))
            })
            .await?;
        if invalidated {
            crate::metrics::order_finished(OrderStatus::Invalid);
        }
        Ok(order)
    }

    pub(super) async fn order_authzs(
        &self,
        order: &OrderRecord,
    ) -> Result<Vec<AuthzRecord>, RaError> {
        self.order_authzs_with(order, None).await
    }

    /// [`order_authzs`](Self::order_authzs), with `known` (one of them, as
    /// about to be stored) in place of its stored version, not read.
    pub(super) async fn order_authzs_with(
        &self,
        order: &OrderRecord,
        known: Option<&AuthzRecord>,
    ) -> Result<Vec<AuthzRecord>, RaError> {
        let now = self.clock.now();
        let mut out = Vec::with_capacity(order.authz_ids.len());
        for id in &order.authz_ids {
            match known {
                Some(k) if k.id == *id => out.push(state::authz_at(k.clone(), now)),
                _ => {
                    if let Some(a) = self.records.get::<AuthzRecord>(id.as_str()).await? {
                        out.push(state::authz_at(a.value, now));
                    }
                }
            }
        }
        Ok(out)
    }

    /// One page of the account's order ids (RFC 8555 §7.1.2.1), and the cursor
    /// of the next page if there is one.
    pub async fn orders_page(
        &self,
        account: &AccountId,
        after: Option<&str>,
    ) -> Result<(Vec<OrderId>, Option<OrderId>), RaError> {
        let after = after.and_then(OrderId::parse);
        let mut ids = self
            .records
            .account_orders(account, after.as_ref(), ORDERS_PAGE + 1)
            .await?;
        let next = if ids.len() > ORDERS_PAGE {
            ids.truncate(ORDERS_PAGE);
            ids.last().cloned()
        } else {
            None
        };
        Ok((ids, next))
    }

    /// An authorization of `account`, with expiry applied. A validation that
    /// a stopped process left unfinished is started again.
    pub async fn authz(
        self: &Arc<Self>,
        account: &AccountRecord,
        id: &str,
    ) -> Result<AuthzRecord, RaError> {
        let a = self.owned_authz(&account.id, id).await?;
        let a = state::authz_at(a.value, self.clock.now());
        self.resume_stalled(account, &a);
        Ok(a)
    }

    pub(super) async fn owned_authz(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<Versioned<AuthzRecord>, RaError> {
        let authz = match AuthzId::parse(id) {
            Some(id) => self.records.get::<AuthzRecord>(id.as_str()).await?,
            None => None,
        };
        owned(authz, account, "authorization")
    }

    /// Deactivates an authorization (RFC 8555 §7.5.2).
    pub async fn deactivate_authz(
        &self,
        account: &AccountId,
        id: &str,
        status: &str,
    ) -> Result<AuthzRecord, RaError> {
        if status != "deactivated" {
            return problem(
                ProblemType::Malformed,
                format!(
                    "an authorization's status can only be set to \"deactivated\", not {status:?}"
                ),
            );
        }
        let Some(authz_id) = AuthzId::parse(id) else {
            return Err(not_found("authorization"));
        };
        let (next, was_pending) = self
            .records
            .update(authz_id.as_str(), |current: Option<Versioned<AuthzRecord>>| async move {
                let current = owned(current, account, "authorization")?;
                let shown = state::authz_at(current.value.clone(), self.clock.now());
                if !matches!(
                    shown.status,
                    AuthorizationStatus::Pending | AuthorizationStatus::Valid
                ) {
                    return problem(
                        ProblemType::Malformed,
                        format!(
                            "only a pending or valid authorization can be deactivated; this one is {}",
                            serde_json::to_value(shown.status)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default()
                        ),
                    );
                }
                let mut next = current.value.clone();
                next.status = AuthorizationStatus::Deactivated;
                let batch = Batch::new().replace(&current, &next);
                let was_pending = shown.status == AuthorizationStatus::Pending;
                Ok(Change::Commit(batch, (next, was_pending)))
            })
            .await?;
        if was_pending {
            self.authz_no_longer_pending(account.as_str());
        }
        if let Some(order) = self
            .records
            .get::<OrderRecord>(next.order_id.as_str())
            .await?
        {
            self.refresh_order(order).await?;
        }
        Ok(next)
    }
}

/// A record that belongs to one account.
pub(super) trait Owned {
    /// The account it belongs to.
    fn owner(&self) -> &AccountId;
}

impl Owned for OrderRecord {
    fn owner(&self) -> &AccountId {
        &self.account_id
    }
}

impl Owned for AuthzRecord {
    fn owner(&self) -> &AccountId {
        &self.account_id
    }
}

impl Owned for crate::model::CertificateRecord {
    fn owner(&self) -> &AccountId {
        &self.account_id
    }
}

/// `record` if it exists and belongs to `account`; else the 404 of
/// [`not_found`], the same whether it is missing or someone else's.
pub(super) fn owned<T: Owned>(
    record: Option<Versioned<T>>,
    account: &AccountId,
    what: &str,
) -> Result<Versioned<T>, RaError> {
    match record {
        Some(r) if r.value.owner() == account => Ok(r),
        _ => Err(not_found(what)),
    }
}

/// A 404 that does not tell whether the resource exists for someone else.
pub(super) fn not_found(what: &str) -> RaError {
    RaError::new(
        ProblemType::Malformed,
        format!("no such {what} for this account"),
    )
    .with_status(404)
}

/// `t` as RFC 3339, for messages.
fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn parse_time(field: &str, v: Option<&str>) -> Result<Option<OffsetDateTime>, RaError> {
    v.map(|s| {
        OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
            RaError::new(
                ProblemType::Malformed,
                format!("{field} {s:?} is not an RFC 3339 date-time like 2026-01-01T00:00:00Z"),
            )
        })
    })
    .transpose()
}

/// Who `account`'s orders are for, as routes between upstreams see it.
pub(super) fn requester(account: &AccountRecord) -> crate::upstream::Requester {
    crate::upstream::Requester {
        provisioner: account.provisioner.clone(),
        eab_kid: account.eab_kid.clone(),
    }
}
