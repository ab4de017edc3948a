//! External Account Binding keys (RFC 8555 §7.3.4): created by an operator for
//! one provisioner, bound to the first account registered with them.

use ring::rand::{SecureRandom, SystemRandom};

use super::Authority;
use super::error::{RaError, problem};
use crate::acme::ProblemType;
use crate::model::{EabKeyRecord, EabPolicy, random_token};
use crate::policy::rules::NamePolicy;
use crate::store::records::Batch;
use crate::store::{Records, StoreError};

/// Creates a key for `provisioner`: a random 256-bit MAC key, and `kid` or a
/// random one.
pub(crate) async fn create_key(
    records: &Records,
    provisioner: &str,
    kid: Option<String>,
    policy: Option<EabPolicy>,
    now: time::OffsetDateTime,
) -> Result<EabKeyRecord, RaError> {
    if let Some(p) = &policy {
        key_policy("new", p).map_err(|m| RaError::new(ProblemType::Malformed, m))?;
        if p.prevalidated && p.allow_dns.is_empty() && p.allow_ip.is_empty() {
            return problem(
                ProblemType::Malformed,
                "a pre-validated key needs allow rules (--allow-dns/--allow-ip) naming what it is trusted for",
            );
        }
    }
    let kid = kid.unwrap_or_else(|| random_token(12));
    if kid.is_empty() || kid.len() > 128 || !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return problem(
            ProblemType::Malformed,
            "a kid must be 1 to 128 printable characters without spaces",
        );
    }
    let mut key = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| RaError::new(ProblemType::ServerInternal, "the random generator failed"))?;
    let record = EabKeyRecord {
        kid: kid.clone(),
        provisioner: provisioner.to_owned(),
        hmac_key: key,
        created_at: now,
        bound_account: None,
        policy,
    };
    match records.commit(Batch::new().insert(&record)).await {
        Ok(()) => Ok(record),
        Err(StoreError::Conflict { .. }) => problem(
            ProblemType::Malformed,
            format!("EAB key {kid:?} exists already"),
        ),
        Err(e) => Err(e.into()),
    }
}

/// Every key (MAC keys included: callers must not print them).
pub(crate) async fn list_keys(records: &Records) -> Result<Vec<EabKeyRecord>, RaError> {
    Ok(records
        .list::<EabKeyRecord>(None, usize::MAX)
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// Removes a key. Accounts bound with it keep working, under the key's name
/// policy (copied into the account when it was bound).
pub(crate) async fn remove_key(records: &Records, kid: &str) -> Result<(), RaError> {
    let Some(k) = records.get::<EabKeyRecord>(kid).await? else {
        return problem(
            ProblemType::Malformed,
            format!("there is no EAB key {kid:?}"),
        );
    };
    records.commit(Batch::new().remove(&k)).await?;
    Ok(())
}

/// The checked rules of a key's policy.
pub fn key_policy(kid: &str, p: &EabPolicy) -> Result<NamePolicy, String> {
    NamePolicy::new(
        format!("EAB key {kid:?}"),
        &p.allow_dns,
        &p.deny_dns,
        &p.allow_ip,
        &p.deny_ip,
        p.allow_wildcard_names,
    )
}

impl Authority {
    /// The policy of the EAB key an account was bound with, if it has one,
    /// and whether the names it allows are pre-validated.
    pub(super) async fn account_key_policy(
        &self,
        account: &crate::model::AccountRecord,
    ) -> Result<(Option<NamePolicy>, bool), RaError> {
        let Some(kid) = &account.eab_kid else {
            return Ok((None, false));
        };
        let policy = match &account.eab_policy {
            Some(p) => (**p).clone(),
            // Bound before accounts kept a copy: the key must still exist,
            // or its policy would be lifted by removing it.
            None => match self.records.get::<EabKeyRecord>(kid).await? {
                Some(key) => key.value.policy.clone().unwrap_or_default(),
                None => {
                    return problem(
                        ProblemType::Unauthorized,
                        format!(
                            "this account was bound with External Account Binding key {kid:?}, which \
                             has been removed, and the account predates the copy of the key's name \
                             policy; register a new account with a new EAB key"
                        ),
                    );
                }
            },
        };
        if policy == EabPolicy::default() {
            return Ok((None, false));
        }
        let rules =
            key_policy(kid, &policy).map_err(|m| RaError::new(ProblemType::ServerInternal, m))?;
        Ok((Some(rules), policy.prevalidated))
    }

    /// Creates an EAB key for a configured provisioner.
    pub async fn create_eab_key(
        &self,
        provisioner: &str,
        kid: Option<String>,
        policy: Option<EabPolicy>,
    ) -> Result<EabKeyRecord, RaError> {
        if self.provisioner(provisioner).is_none() {
            return problem(
                ProblemType::Malformed,
                format!("there is no provisioner {provisioner:?}"),
            );
        }
        create_key(&self.records, provisioner, kid, policy, self.clock.now()).await
    }

    /// Every EAB key (MAC keys included: callers must not print them).
    pub async fn eab_keys(&self) -> Result<Vec<EabKeyRecord>, RaError> {
        list_keys(&self.records).await
    }

    /// Removes an EAB key. Accounts bound with it keep working, under the
    /// key's name policy (copied into the account when it was bound).
    pub async fn remove_eab_key(&self, kid: &str) -> Result<(), RaError> {
        remove_key(&self.records, kid).await
    }
}
