//! Finalize, certificate download and revocation (RFC 8555 §7.4, §7.4.2, §7.6).
//! Finalize only writes the order's `processing` state and a durable finalize
//! job in one transaction; the worker talks to the upstream.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

use std::sync::Arc;

use time::Duration;

use super::error::{RaError, problem};
use super::order::owned;
use super::{Authority, Event, RevocationSigner, state};
use crate::acme::ProblemType;
use crate::acme::types::OrderStatus;
use crate::model::{AccountId, CertId, CertificateRecord, FinalizeJob, OrderRecord, Revocation};
use crate::policy::{cert, csr};
use crate::store::StoreError;
use crate::store::records::{Batch, Change, Versioned};
use crate::upstream::RevokeRequest;

/// RFC 5280 §5.3.1 reasons a subscriber may give (as Boulder allows, plus
/// privilegeWithdrawn).
const ALLOWED_REASONS: [u8; 6] = [0, 1, 3, 4, 5, 9];

/// Orders of an account looked through for authorizations when it revokes a
/// certificate another account ordered.
const REVOKE_AUTHZ_SCAN: usize = 1000;

impl Authority {
    /// finalize (RFC 8555 §7.4): checks the CSR, moves the order to
    /// `processing` and writes the finalize job in one transaction, then
    /// waits briefly so a quick upstream answers `valid` at once.
    pub async fn finalize(
        self: &Arc<Self>,
        account: &crate::model::AccountRecord,
        order_id: &str,
        csr_der: &[u8],
    ) -> Result<OrderRecord, RaError> {
        let stored = self.owned_order(&account.id, order_id).await?;
        let current = self.refresh_order(stored).await?;
        let order = &current.value;
        // The same finalize again while its job runs (a client or load
        // balancer resending it after a replica died mid-answer): answer
        // the order as the first finalize would have, not orderNotReady.
        if order.status == OrderStatus::Processing
            && self
                .records
                .get::<FinalizeJob>(order.id.as_str())
                .await?
                .is_some_and(|job| job.value.csr_der == csr_der)
        {
            return Ok(order.clone());
        }
        // The same finalize again after it completed (its answer lost with
        // a replica, or the job done by another replica before the resend
        // arrived): answer the valid order when the CSR names the key of
        // the certificate issued, as the first finalize's answer would.
        if order.status == OrderStatus::Valid
            && self.issued_for_csr(account, order, csr_der).await?
        {
            return Ok(order.clone());
        }
        if order.status != OrderStatus::Ready {
            return problem(
                ProblemType::OrderNotReady,
                format!(
                    "the order is {}, not ready: {}",
                    order.status.as_str(),
                    match order.status {
                        OrderStatus::Pending => "complete its authorizations first",
                        OrderStatus::Processing => "it is being finalized; poll the order",
                        OrderStatus::Valid => "it is already finalized; download the certificate",
                        _ => "create a new order",
                    }
                ),
            );
        }
        // draft-ietf-acme-profiles: an order whose profile is no longer
        // offered is not finalized.
        self.issuance_terms(order)?;
        let parsed = csr::parse_csr(csr_der).map_err(|e| RaError::new(ProblemType::BadCsr, e.0))?;
        csr::check_against_order(&parsed, &order.identifiers, &account.jwk)
            .map_err(|e| RaError::new(ProblemType::BadCsr, e.0))?;

        // The order as refreshed above; if anyone changed it since, the
        // commit below conflicts.
        let mut next = order.clone();
        if !state::begin_finalize(&mut next) {
            return problem(
                ProblemType::OrderNotReady,
                "the order changed while finalizing; poll it",
            );
        }
        let now = self.clock.now();
        let job = FinalizeJob {
            order_id: order.id.clone(),
            csr_der: csr_der.to_vec(),
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            upstream_state: None,
            last_error: None,
        };
        let sub = self.subscribe(Event::Order(order.id.to_string()));
        let batch = Batch::new().replace(&current, &next).insert(&job);
        // A local CA's job need not be durable before it runs (see
        // `signs_locally`): the worker's durable result covers it, and the
        // sync below covers an answer of `processing`.
        let deferred = self.upstream.signs_locally();
        let committed = if deferred {
            self.records.commit_deferred(batch).await
        } else {
            self.records.commit(batch).await
        };
        match committed {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                return problem(
                    ProblemType::OrderNotReady,
                    "the order is already being finalized; poll it",
                );
            }
            Err(e) => return Err(e.into()),
        }
        self.enqueue_job(job);
        let published = self
            .wait_until(sub, self.opts.finalize_wait, || async {
                matches!(
                    self.records.get::<OrderRecord>(order.id.as_str()).await,
                    Ok(Some(o)) if o.status != OrderStatus::Processing
                )
            })
            .await;
        let shown = self.order(&account.id, order.id.as_str()).await?;
        if !published || (deferred && shown.status == OrderStatus::Processing) {
            // The worker's result is durable before it publishes; otherwise
            // make what we are about to show durable first.
            self.records.sync().await?;
        }
        Ok(shown)
    }

    /// Whether the valid `order`'s certificate was issued for the key of
    /// `csr_der` (a well-formed, self-signed CSR for the order's names).
    async fn issued_for_csr(
        &self,
        account: &crate::model::AccountRecord,
        order: &OrderRecord,
        csr_der: &[u8],
    ) -> Result<bool, RaError> {
        let Some(cert_id) = &order.certificate_id else {
            return Ok(false);
        };
        let Ok(parsed) = csr::parse_csr(csr_der) else {
            return Ok(false);
        };
        let Some(cert) = self
            .records
            .get::<CertificateRecord>(cert_id.as_str())
            .await?
        else {
            return Ok(false);
        };
        let leaf_key = cert::pem_chain_to_der(&cert.value.chain_pem)
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .and_then(|leaf| cert::cert_info(&leaf).ok())
            .map(|info| info.public_key);
        Ok(leaf_key.as_ref() == Some(&parsed.public_key)
            && csr::check_against_order(&parsed, &order.identifiers, &account.jwk).is_ok())
    }

    /// A certificate chain of `account` (RFC 8555 §7.4.2).
    pub async fn certificate(
        &self,
        account: &AccountId,
        id: &str,
    ) -> Result<CertificateRecord, RaError> {
        let cert = match CertId::parse(id) {
            Some(id) => self.records.get::<CertificateRecord>(id.as_str()).await?,
            None => None,
        };
        Ok(owned(cert, account, "certificate")?.value)
    }

    /// revokeCert (RFC 8555 §7.6), forwarded to the upstream and recorded.
    pub async fn revoke(
        &self,
        provisioner: &str,
        signer: &RevocationSigner,
        cert_der: &[u8],
        reason: Option<i64>,
    ) -> Result<(), RaError> {
        let code = reason.unwrap_or(0);
        let Some(reason) = u8::try_from(code)
            .ok()
            .filter(|r| ALLOWED_REASONS.contains(r))
        else {
            return problem(
                ProblemType::BadRevocationReason,
                format!(
                    "reason code {code} is not accepted; use one of 0 (unspecified), 1 (keyCompromise), 3 (affiliationChanged), 4 (superseded), 5 (cessationOfOperation), 9 (privilegeWithdrawn)"
                ),
            );
        };
        let info = cert::cert_info(cert_der).map_err(|e| {
            RaError::new(
                ProblemType::Malformed,
                format!("the certificate to revoke cannot be read: {}", e.0),
            )
        })?;
        let Some(stored) = self.records.cert_by_serial(&info.serial_hex).await? else {
            return problem(
                ProblemType::Malformed,
                format!(
                    "certificate with serial {} was not issued through this server",
                    info.serial_hex
                ),
            )
            .map_err(|e: RaError| e.with_status(404));
        };
        let leaf = cert::pem_chain_to_der(&stored.chain_pem)
            .ok()
            .and_then(|c| c.into_iter().next());
        if leaf.as_deref() != Some(cert_der) {
            return problem(
                ProblemType::Malformed,
                "the certificate does not match the one issued with this serial",
            );
        }
        match signer {
            RevocationSigner::Account(acct) => {
                if acct.id != stored.account_id && !self.holds_authorizations(acct, &stored).await?
                {
                    return problem(
                        ProblemType::Unauthorized,
                        "this account neither ordered the certificate nor holds valid authorizations for all its identifiers; sign with the account that ordered it, or with the certificate's key",
                    );
                }
            }
            RevocationSigner::CertificateKey(jwk) => {
                if jwk != &info.public_key {
                    return problem(
                        ProblemType::Unauthorized,
                        "the request is signed with a key that is not the certificate's key",
                    );
                }
            }
        }
        let Some(order) = self
            .records
            .get::<OrderRecord>(stored.order_id.as_str())
            .await?
        else {
            return problem(
                ProblemType::ServerInternal,
                "the certificate's order is gone",
            );
        };
        if order.provisioner != provisioner {
            return problem(
                ProblemType::Unauthorized,
                format!(
                    "the certificate was issued through provisioner {:?}; revoke it there",
                    order.provisioner
                ),
            );
        }
        if stored.revocation.is_some() {
            return problem(
                ProblemType::AlreadyRevoked,
                format!("certificate {} is already revoked", stored.serial_hex),
            );
        }
        let by = match signer {
            RevocationSigner::Account(acct) => format!("account {}", acct.id),
            RevocationSigner::CertificateKey(_) => "the certificate's key".to_owned(),
        };
        self.revoke_and_record(
            &stored.id,
            &stored.upstream,
            RevokeRequest {
                certificate_der: cert_der.to_vec(),
                serial_hex: stored.serial_hex.clone(),
                reason,
            },
            &by,
        )
        .await
        .map(|_| ())
    }

    /// Forwards a revocation to the upstream that issued the certificate,
    /// then records it on the stored
    /// certificate, retrying on concurrent updates. A revocation recorded
    /// meanwhile by another request stands. Returns the stored record.
    pub(super) async fn revoke_and_record(
        &self,
        cert_id: &CertId,
        upstream: &str,
        req: RevokeRequest,
        by: &str,
    ) -> Result<CertificateRecord, RaError> {
        // To the upstream that issued it (several upstreams: the name stored
        // with the certificate).
        self.upstream.revoke_at(upstream, &req).await?;
        let reason = req.reason;
        let (cert, recorded) = self
            .records
            .update(
                cert_id.as_str(),
                |current: Option<Versioned<CertificateRecord>>| async move {
                    let Some(current) = current else {
                        return problem(
                            ProblemType::ServerInternal,
                            "could not record the revocation",
                        );
                    };
                    if current.revocation.is_some() {
                        return Ok(Change::Keep((current.value, false)));
                    }
                    let mut next = current.value.clone();
                    next.revocation = Some(Revocation {
                        reason,
                        revoked_at: self.clock.now(),
                    });
                    let batch = Batch::new().replace(&current, &next);
                    Ok(Change::Commit(batch, (next, true)))
                },
            )
            .await?;
        if recorded {
            crate::metrics::certificate_revoked();
            tracing::info!(
                serial = %cert.serial_hex,
                reason,
                by = %by,
                account = %cert.account_id,
                upstream = %cert.upstream,
                "certificate revoked"
            );
        }
        Ok(cert)
    }

    /// Whether `acct` holds valid, unexpired authorizations for every
    /// identifier of the certificate (RFC 8555 §7.6, third way to revoke).
    /// Looks through the account's most recent orders, at most
    /// [`REVOKE_AUTHZ_SCAN`] of them.
    async fn holds_authorizations(
        &self,
        acct: &crate::model::AccountRecord,
        cert: &CertificateRecord,
    ) -> Result<bool, RaError> {
        let Some(order) = self
            .records
            .get::<OrderRecord>(cert.order_id.as_str())
            .await?
        else {
            return Ok(false);
        };
        let now = self.clock.now();
        let mut needed: Vec<crate::acme::Identifier> = order
            .identifiers
            .iter()
            .map(crate::acme::Identifier::base)
            .collect();
        needed.sort();
        needed.dedup();
        let ids = self
            .records
            .account_orders(&acct.id, None, REVOKE_AUTHZ_SCAN)
            .await?;
        for id in ids {
            let Some(o) = self.records.get::<OrderRecord>(id.as_str()).await? else {
                continue;
            };
            for authz_id in &o.authz_ids {
                let Some(a) = self
                    .records
                    .get::<crate::model::AuthzRecord>(authz_id.as_str())
                    .await?
                else {
                    continue;
                };
                let a = state::authz_at(a.value, now);
                if a.status == crate::acme::types::AuthorizationStatus::Valid {
                    needed.retain(|n| n != &a.identifier);
                }
            }
            if needed.is_empty() {
                return Ok(true);
            }
        }
        Ok(needed.is_empty())
    }

    /// The lifetime to ask the upstream for when an order names no notAfter;
    /// `None`: the upstream's own default.
    pub(super) fn default_lifetime(&self, provisioner: &str) -> Option<Duration> {
        self.provisioner(provisioner)
            .and_then(|p| p.default_lifetime)
    }
}
