//! What the operator's admin interface asks of the Authority: listings of
//! accounts, orders and certificates, account deactivation and revocation
//! by an operator, and a consistent snapshot of the store for backups.

use super::Authority;
use super::error::{RaError, problem};
use crate::acme::ProblemType;
use crate::acme::types::{AccountStatus, OrderStatus};
use crate::model::{AccountRecord, CertificateRecord, OrderRecord};
use crate::store::Snapshot;
use crate::upstream::RevokeRequest;

/// At most this many rows per listing.
pub const ADMIN_LIST_LIMIT: usize = 10_000;

impl Authority {
    /// Every account, in id order (at most [`ADMIN_LIST_LIMIT`]).
    pub async fn admin_accounts(&self) -> Result<Vec<AccountRecord>, RaError> {
        Ok(self
            .records
            .list::<AccountRecord>(None, ADMIN_LIST_LIMIT)
            .await?
            .into_iter()
            .map(|v| v.value)
            .collect())
    }

    /// One account by id.
    pub async fn admin_account(&self, id: &str) -> Result<AccountRecord, RaError> {
        match self.records.get::<AccountRecord>(id).await? {
            Some(a) => Ok(a.value),
            None => problem(
                ProblemType::AccountDoesNotExist,
                format!("no account {id:?}"),
            ),
        }
    }

    /// Deactivates an account (RFC 8555 §7.3.6) on the operator's behalf.
    pub async fn admin_deactivate_account(&self, id: &str) -> Result<AccountRecord, RaError> {
        let account = self.admin_account(id).await?;
        if account.status != AccountStatus::Valid {
            return Ok(account);
        }
        let req = crate::acme::types::AccountUpdateRequest {
            status: Some("deactivated".to_owned()),
            ..Default::default()
        };
        self.update_account(&account, Some(req)).await
    }

    /// Orders, optionally of one account and in one status.
    pub async fn admin_orders(
        &self,
        account: Option<&str>,
        status: Option<OrderStatus>,
    ) -> Result<Vec<OrderRecord>, RaError> {
        let orders: Vec<OrderRecord> = match account {
            Some(acct) => {
                let Some(a) = self.records.get::<AccountRecord>(acct).await? else {
                    return problem(
                        ProblemType::AccountDoesNotExist,
                        format!("no account {acct:?}"),
                    );
                };
                let ids = self
                    .records
                    .account_orders(&a.id, None, ADMIN_LIST_LIMIT)
                    .await?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(o) = self.records.get::<OrderRecord>(id.as_str()).await? {
                        out.push(o.value);
                    }
                }
                out
            }
            None => self
                .records
                .list::<OrderRecord>(None, ADMIN_LIST_LIMIT)
                .await?
                .into_iter()
                .map(|v| v.value)
                .collect(),
        };
        Ok(orders
            .into_iter()
            .filter(|o| status.is_none_or(|s| o.status == s))
            .collect())
    }

    /// Certificates, optionally of one account.
    pub async fn admin_certificates(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<CertificateRecord>, RaError> {
        Ok(self
            .records
            .list::<CertificateRecord>(None, ADMIN_LIST_LIMIT)
            .await?
            .into_iter()
            .map(|v| v.value)
            .filter(|c| account.is_none_or(|a| c.account_id.as_str() == a))
            .collect())
    }

    /// A certificate by id or by serial (hex, colons and case ignored).
    pub async fn admin_certificate(
        &self,
        id_or_serial: &str,
    ) -> Result<CertificateRecord, RaError> {
        if let Some(c) = self.records.get::<CertificateRecord>(id_or_serial).await? {
            return Ok(c.value);
        }
        let serial: String = id_or_serial
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let serial = serial.trim_start_matches('0');
        let serial = if serial.is_empty() { "0" } else { serial };
        // Stored serials keep whole bytes: try with and without a leading zero.
        for candidate in [serial.to_owned(), format!("0{serial}")] {
            if let Some(c) = self.records.cert_by_serial(&candidate).await? {
                return Ok(c.value);
            }
        }
        problem(
            ProblemType::Malformed,
            format!("no certificate with id or serial {id_or_serial:?}"),
        )
    }

    /// Revokes a certificate on the operator's behalf: forwarded upstream with
    /// `reason`, then recorded.
    pub async fn admin_revoke(
        &self,
        id_or_serial: &str,
        reason: u8,
    ) -> Result<CertificateRecord, RaError> {
        let cert = self.admin_certificate(id_or_serial).await?;
        if cert.revocation.is_some() {
            return problem(
                ProblemType::AlreadyRevoked,
                format!("certificate {} is already revoked", cert.serial_hex),
            );
        }
        if reason == 7 || reason > 10 {
            return problem(
                ProblemType::BadRevocationReason,
                format!("{reason} is not an RFC 5280 reason code"),
            );
        }
        let leaf = crate::policy::cert::pem_chain_to_der(&cert.chain_pem)
            .ok()
            .and_then(|c| c.into_iter().next())
            .ok_or_else(|| {
                RaError::new(
                    ProblemType::ServerInternal,
                    "the stored chain is unreadable",
                )
            })?;
        self.revoke_and_record(
            &cert.id,
            &cert.upstream,
            RevokeRequest {
                certificate_der: leaf,
                serial_hex: cert.serial_hex.clone(),
                reason,
            },
            "the administrator",
        )
        .await
    }

    /// Every record of the store as one consistent cut (no batch half in
    /// it), for an online backup; see [`Store::snapshot`](crate::store::Store::snapshot).
    pub async fn admin_snapshot(&self) -> Result<Snapshot, RaError> {
        Ok(self.records.store().snapshot().await?)
    }

    /// The store backend's name (`sled`, `memory`), for a backup's header.
    pub fn store_backend(&self) -> &'static str {
        self.records.store().backend_name()
    }
}
