//! The Authority's side of the rate limits ([`super::limits`]): what a
//! newOrder takes, what a validation gives back or uses up, and the admin
//! view of an account's buckets.

use super::Authority;
use super::error::RaError;
use super::limits::{BucketView, Limit, account_identifier_key};
use crate::acme::types::AuthorizationStatus;
use crate::model::{AccountRecord, AuthzRecord};

/// Tokens an action took; given back when dropped before
/// [`keep`](Self::keep) (the account or order was not stored).
pub(super) struct Quota<'a> {
    ra: &'a Authority,
    taken: Vec<(Limit, String, u32)>,
}

impl Quota<'_> {
    /// The order was stored: the tokens stay taken.
    pub(super) fn keep(mut self) {
        self.taken.clear();
    }
}

impl Drop for Quota<'_> {
    fn drop(&mut self) {
        for (limit, key, n) in self.taken.drain(..) {
            self.ra.limiter.refund(limit, &key, n);
        }
    }
}

impl Authority {
    /// Takes a newAccountsPerIp token for the client at `client` (none
    /// when the address is unknown).
    pub(super) fn take_account_quota(
        &self,
        client: Option<std::net::IpAddr>,
    ) -> Result<Quota<'_>, RaError> {
        let mut quota = Quota {
            ra: self,
            taken: Vec::new(),
        };
        if let Some(ip) = client {
            let key = super::limits::ip_key(ip);
            self.limiter
                .take(Limit::NewAccountsPerIp, &key, 1)
                .map_err(|r| r.to_error())?;
            quota.taken.push((Limit::NewAccountsPerIp, key, 1));
        }
        Ok(quota)
    }

    /// Takes what a new order of `account` with `authzs` costs: one
    /// newOrder token for the account and for its EAB key, one
    /// pending-authorization token per pending authorization; and refuses
    /// an identifier whose validations failed too often lately.
    pub(super) fn take_order_quota(
        &self,
        account: &AccountRecord,
        authzs: &[AuthzRecord],
    ) -> Result<Quota<'_>, RaError> {
        let acct = account.id.as_str();
        for a in authzs {
            let key = account_identifier_key(acct, &a.identifier.to_string());
            self.limiter
                .check(Limit::FailedValidationsPerAccountAndIdentifier, &key, 1)
                .map_err(|r| r.to_error())?;
        }
        let pending = authzs
            .iter()
            .filter(|a| a.status == AuthorizationStatus::Pending)
            .count();
        let pending = u32::try_from(pending).unwrap_or(u32::MAX);
        let mut quota = Quota {
            ra: self,
            taken: Vec::with_capacity(3),
        };
        let mut wanted = vec![(Limit::NewOrdersPerAccount, acct.to_owned(), 1)];
        if let Some(kid) = &account.eab_kid {
            wanted.push((Limit::NewOrdersPerEabKey, kid.clone(), 1));
        }
        if pending > 0 {
            wanted.push((
                Limit::PendingAuthorizationsPerAccount,
                acct.to_owned(),
                pending,
            ));
        }
        for (limit, key, n) in wanted {
            // On a refusal, `quota` drops and gives back what it took.
            self.limiter
                .take(limit, &key, n)
                .map_err(|r| r.to_error())?;
            quota.taken.push((limit, key, n));
        }
        Ok(quota)
    }

    /// A validation of `authz` ended: the authorization is no longer
    /// pending (one pending-authorization token back), and a failure uses up
    /// one failed-validation token of the account and identifier.
    pub(super) fn validation_quota(&self, authz: &AuthzRecord, ok: bool) {
        let acct = authz.account_id.as_str();
        self.limiter
            .refund(Limit::PendingAuthorizationsPerAccount, acct, 1);
        if !ok {
            let key = account_identifier_key(acct, &authz.identifier.to_string());
            // An empty bucket stays empty: nothing more to record.
            let _ = self
                .limiter
                .take(Limit::FailedValidationsPerAccountAndIdentifier, &key, 1);
        }
    }

    /// A pending authorization of `account` was deactivated.
    pub(super) fn authz_no_longer_pending(&self, account: &str) {
        self.limiter
            .refund(Limit::PendingAuthorizationsPerAccount, account, 1);
    }

    /// The rate-limit buckets kept for an account (admin).
    pub async fn admin_account_limits(&self, id: &str) -> Result<Vec<BucketView>, RaError> {
        let account = self.admin_account(id).await?;
        Ok(self
            .limiter
            .account_buckets(account.id.as_str(), account.eab_kid.as_deref()))
    }

    /// Drops an account's rate-limit buckets (admin): it is served in full
    /// at once. Returns how many buckets were dropped.
    pub async fn admin_reset_account_limits(&self, id: &str) -> Result<usize, RaError> {
        let account = self.admin_account(id).await?;
        Ok(self
            .limiter
            .reset_account(account.id.as_str(), account.eab_kid.as_deref()))
    }
}
