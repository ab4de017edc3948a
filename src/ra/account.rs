//! Accounts: creation with optional External Account Binding, lookup by key
//! or id, update, deactivation and key roll-over (RFC 8555 §7.3).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.3>

use super::Authority;
use super::error::{RaError, problem};
use crate::acme::ProblemType;
use crate::acme::eab::{EabBinding, EabError};
use crate::acme::jws::{FlattenedJws, PublicJwk};
use crate::acme::types::{AccountStatus, AccountUpdateRequest, KeyChangeInner, NewAccountRequest};
use crate::model::{AccountId, AccountRecord, EabKeyRecord};
use crate::store::records::{Batch, Change, Versioned};
use crate::store::{Expect, Op, Records, StoreError, Table};

/// Who signed a revokeCert request (RFC 8555 §7.6).
#[derive(Clone, Debug)]
pub enum RevocationSigner {
    /// An account, by its key id.
    Account(AccountRecord),
    /// The certificate's own key, by JWK.
    CertificateKey(PublicJwk),
}

/// The outcome of newAccount.
#[derive(Clone, Debug)]
pub struct NewAccountOutcome {
    pub account: AccountRecord,
    /// False when an existing account was returned (200 rather than 201).
    pub created: bool,
}

impl Authority {
    /// newAccount (RFC 8555 §7.3, §7.3.1, §7.3.4). Creating an account
    /// takes a `newAccountsPerIp` token of `client`; finding an existing one
    /// takes none.
    pub async fn new_account(
        &self,
        provisioner: &str,
        jwk: &PublicJwk,
        req: NewAccountRequest,
        new_account_url: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<NewAccountOutcome, RaError> {
        let prov = self.provisioner_or_404(provisioner)?;
        let thumbprint = jwk.thumbprint();
        if let Some(existing) = self.records.account_by_thumbprint(&thumbprint).await? {
            let account = self.check_account(existing.value, provisioner)?;
            return Ok(NewAccountOutcome {
                account,
                created: false,
            });
        }
        if req.only_return_existing == Some(true) {
            return problem(
                ProblemType::AccountDoesNotExist,
                "no account exists for this key; register it without onlyReturnExisting",
            );
        }
        let contact = check_contacts(req.contact.unwrap_or_default())?;
        if prov.terms_of_service.is_some() && req.terms_of_service_agreed != Some(true) {
            return problem(
                ProblemType::UserActionRequired,
                "agree to the terms of service (termsOfServiceAgreed: true) to register",
            );
        }
        let id = AccountId::random();
        let mut batch = Batch::new();
        let mut eab_kid = None;
        let mut eab_policy = None;
        match (&req.external_account_binding, prov.require_eab) {
            (None, true) => {
                return problem(
                    ProblemType::ExternalAccountRequired,
                    format!(
                        "provisioner {provisioner:?} requires External Account Binding: register with the EAB key id and MAC key your administrator gave you"
                    ),
                );
            }
            (None, false) => {}
            (Some(eab), _) => {
                let (record, bound) = self
                    .check_eab(provisioner, eab, jwk, new_account_url, &id)
                    .await?;
                eab_kid = Some(record.kid.clone());
                // An empty policy records that the key had none.
                eab_policy = Some(Box::new(record.policy.clone().unwrap_or_default()));
                batch = batch.replace(&record, &bound);
            }
        }
        let account = AccountRecord {
            id: id.clone(),
            provisioner: provisioner.to_owned(),
            jwk: jwk.clone(),
            thumbprint,
            status: AccountStatus::Valid,
            contact,
            terms_of_service_agreed: req.terms_of_service_agreed.unwrap_or(false),
            eab_kid: eab_kid.clone(),
            eab_policy,
            eab_jws: req.external_account_binding.clone(),
            created_at: self.clock.now(),
        };
        let batch = Records::account_insert_ops(batch, &account);
        // Given back unless the account is stored.
        let quota = self.take_account_quota(client)?;
        match self.records.commit(batch).await {
            Ok(()) => {
                quota.keep();
                tracing::info!(
                    account = %account.id,
                    provisioner = %provisioner,
                    eab_kid = %account.eab_kid.as_deref().unwrap_or("-"),
                    "account created"
                );
                Ok(NewAccountOutcome {
                    account,
                    created: true,
                })
            }
            Err(StoreError::Conflict {
                table: Table::AccountKeys,
                ..
            }) => {
                // Registered concurrently with the same key: return that account.
                let existing = self
                    .records
                    .account_by_thumbprint(&account.thumbprint)
                    .await?
                    .ok_or_else(|| RaError::new(ProblemType::ServerInternal, "account vanished"))?;
                Ok(NewAccountOutcome {
                    account: self.check_account(existing.value, provisioner)?,
                    created: false,
                })
            }
            Err(StoreError::Conflict {
                table: Table::EabKeys,
                ..
            }) => problem(
                ProblemType::Unauthorized,
                "this External Account Binding key was used by another account just now; ask for a new key",
            ),
            Err(e) => Err(e.into()),
        }
    }

    async fn check_eab(
        &self,
        provisioner: &str,
        eab: &serde_json::Value,
        jwk: &PublicJwk,
        url: &str,
        account: &AccountId,
    ) -> Result<(Versioned<EabKeyRecord>, EabKeyRecord), RaError> {
        let binding = EabBinding::parse(eab, url, jwk).map_err(|e| eab_problem(&e))?;
        let Some(record) = self.records.get::<EabKeyRecord>(binding.kid()).await? else {
            return problem(
                ProblemType::Unauthorized,
                format!(
                    "External Account Binding key id {:?} is unknown to this server",
                    binding.kid()
                ),
            );
        };
        if record.provisioner != provisioner {
            return problem(
                ProblemType::Unauthorized,
                format!(
                    "External Account Binding key id {:?} is not for provisioner {provisioner:?}",
                    binding.kid()
                ),
            );
        }
        if record.bound_account.is_some() {
            return problem(
                ProblemType::Unauthorized,
                format!(
                    "External Account Binding key id {:?} is already bound to another account; each key registers one account",
                    binding.kid()
                ),
            );
        }
        binding
            .verify_mac(&record.hmac_key)
            .map_err(|e| eab_problem(&e))?;
        // Bound to the new account in the same transaction that creates it;
        // a key binds one account only, so its MAC key is of no further use
        // and is erased.
        let mut bound = record.value.clone();
        bound.bound_account = Some(account.clone());
        bound.hmac_key = Vec::new();
        Ok((record, bound))
    }

    /// The account behind a `kid` URL, checked to be usable under
    /// `provisioner`, and whether it came from the account cache (replicas
    /// only; never when `fresh`): a signature a cached key refuses is worth
    /// checking again against the stored account.
    pub async fn account_for_kid(
        &self,
        provisioner: &str,
        id: &str,
        fresh: bool,
    ) -> Result<(AccountRecord, bool), RaError> {
        let Some(id) = AccountId::parse(id) else {
            return problem(
                ProblemType::AccountDoesNotExist,
                "the kid is not an account URL of this server",
            );
        };
        if !fresh {
            if let Some(acct) = self.accounts.get(id.as_str()) {
                return Ok((self.check_account(acct, provisioner)?, true));
            }
        }
        let epoch = self.accounts.epoch();
        let Some(acct) = self.records.get::<AccountRecord>(id.as_str()).await? else {
            self.accounts.forget(id.as_str());
            return problem(
                ProblemType::AccountDoesNotExist,
                format!("account {id} does not exist"),
            );
        };
        self.accounts.put_read(&acct.value, epoch);
        Ok((self.check_account(acct.value, provisioner)?, false))
    }

    fn check_account(
        &self,
        acct: AccountRecord,
        provisioner: &str,
    ) -> Result<AccountRecord, RaError> {
        if acct.provisioner != provisioner {
            return problem(
                ProblemType::Unauthorized,
                format!(
                    "this account belongs to provisioner {:?}, not {provisioner:?}",
                    acct.provisioner
                ),
            );
        }
        if acct.status != AccountStatus::Valid {
            // RFC 8555 §7.3.6: 401, not the default 403 of unauthorized.
            return Err(RaError::new(
                ProblemType::Unauthorized,
                format!(
                    "account {} is {}; create a new account",
                    acct.id,
                    match acct.status {
                        AccountStatus::Deactivated => "deactivated",
                        _ => "revoked",
                    }
                ),
            )
            .with_status(401));
        }
        Ok(acct)
    }

    /// Account update and deactivation (RFC 8555 §7.3.2, §7.3.6).
    pub async fn update_account(
        &self,
        account: &AccountRecord,
        req: Option<AccountUpdateRequest>,
    ) -> Result<AccountRecord, RaError> {
        let Some(req) = req else {
            return Ok(account.clone());
        };
        let req = &req;
        let (next, deactivated) = self
            .records
            .update(account.id.as_str(), |current: Option<Versioned<AccountRecord>>| async move {
                let Some(current) = current else {
                    return problem(ProblemType::AccountDoesNotExist, "the account is gone");
                };
                stored_key_signed(&current.value, account)?;
                let mut next = current.value.clone();
                if let Some(contact) = &req.contact {
                    next.contact = check_contacts(contact.clone())?;
                }
                match req.status.as_deref() {
                    None => {}
                    Some("deactivated") => next.status = AccountStatus::Deactivated,
                    Some("valid") if next.status == AccountStatus::Valid => {}
                    Some(other) => {
                        return problem(
                            ProblemType::Malformed,
                            format!(
                                "an account's status can only be set to \"deactivated\", not {other:?}"
                            ),
                        );
                    }
                }
                if next == current.value {
                    return Ok(Change::Keep((next, false)));
                }
                let deactivated = next.status != current.value.status;
                let batch = Batch::new().replace(&current, &next);
                Ok(Change::Commit(batch, (next, deactivated)))
            })
            .await?;
        self.accounts.forget(next.id.as_str());
        if deactivated {
            tracing::info!(account = %next.id, "account deactivated");
        }
        Ok(next)
    }

    /// keyChange (RFC 8555 §7.3.5): `inner` is the inner JWS, `outer_url` the
    /// outer JWS's url, `account_url` the account's URL. A new key that belongs
    /// to another account is a 409 naming that account.
    pub async fn key_change(
        &self,
        account: &AccountRecord,
        inner: &FlattenedJws,
        outer_url: &str,
        account_url: &str,
    ) -> Result<AccountRecord, RaError> {
        let Some(new_jwk) = &inner.header.jwk else {
            return problem(
                ProblemType::Malformed,
                "the inner keyChange JWS must carry the new key as \"jwk\"",
            );
        };
        if inner.header.kid.is_some() {
            return problem(
                ProblemType::Malformed,
                "the inner keyChange JWS must not have a \"kid\"",
            );
        }
        if inner.header.url.as_deref() != Some(outer_url) {
            return problem(
                ProblemType::Malformed,
                "the inner keyChange JWS must have the same \"url\" as the outer one",
            );
        }
        let new_key = PublicJwk::from_json(new_jwk).map_err(jws_problem)?;
        inner.verify(&new_key).map_err(jws_problem)?;
        let payload: KeyChangeInner = inner.payload_json().map_err(|e| {
            RaError::new(
                ProblemType::Malformed,
                format!("the inner keyChange payload must be {{\"account\", \"oldKey\"}}: {e}"),
            )
        })?;
        if payload.account != account_url {
            return problem(
                ProblemType::Malformed,
                "the keyChange \"account\" is not the URL of the signing account",
            );
        }
        let old = PublicJwk::from_json(&payload.old_key).map_err(jws_problem)?;
        if old != account.jwk {
            return problem(
                ProblemType::Malformed,
                "the keyChange \"oldKey\" is not the account's current key",
            );
        }
        let new_tp = new_key.thumbprint();
        if let Some(other) = self.records.account_by_thumbprint(&new_tp).await? {
            let mut e = RaError::new(
                ProblemType::Malformed,
                "the new key already belongs to an account (see Location)",
            )
            .with_status(409);
            e.conflicting_account = Some(other.id.clone());
            return Err(e);
        }
        let Some(current) = self
            .records
            .get::<AccountRecord>(account.id.as_str())
            .await?
        else {
            return problem(ProblemType::AccountDoesNotExist, "the account is gone");
        };
        stored_key_signed(&current.value, account)?;
        let mut next = current.value.clone();
        next.jwk = new_key;
        next.thumbprint = new_tp.clone();
        let batch = Batch::new()
            .replace(&current, &next)
            .op(Op::delete(
                Table::AccountKeys,
                current.thumbprint.clone(),
                Expect::Value(current.id.as_str().as_bytes().to_vec()),
            ))
            .op(Op::put(
                Table::AccountKeys,
                new_tp,
                current.id.as_str().as_bytes().to_vec(),
                Expect::Absent,
            ));
        match self.records.commit(batch).await {
            Ok(()) => {
                self.accounts.forget(next.id.as_str());
                Ok(next)
            }
            Err(StoreError::Conflict { .. }) => problem(
                ProblemType::Malformed,
                "the account or the new key changed at the same moment; try again",
            )
            .map_err(|e: RaError| e.with_status(409)),
            Err(e) => Err(e.into()),
        }
    }

    fn provisioner_or_404(&self, name: &str) -> Result<&super::Provisioner, RaError> {
        self.provisioner(name).ok_or_else(|| {
            RaError::new(
                ProblemType::Malformed,
                format!("there is no provisioner {name:?} on this server"),
            )
            .with_status(404)
        })
    }
}

impl RaError {
    /// The same error with another HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.problem.status = Some(status);
        self
    }
}

/// Maps a JWS error to its problem (RFC 8555 §6.2, §6.7).
pub fn jws_problem(e: crate::acme::jws::JwsError) -> RaError {
    use crate::acme::jws::JwsError;
    match e {
        JwsError::Malformed(m) => RaError::new(ProblemType::Malformed, m),
        JwsError::BadSignatureAlgorithm(m) => {
            let mut e = RaError::new(ProblemType::BadSignatureAlgorithm, m);
            e.problem.algorithms = Some(
                crate::acme::jws::SUPPORTED_ALGS
                    .iter()
                    .map(|a| (*a).to_owned())
                    .collect(),
            );
            e
        }
        JwsError::BadPublicKey(m) => RaError::new(ProblemType::BadPublicKey, m),
        e @ JwsError::BadSignature => RaError::new(ProblemType::Malformed, e.to_string()),
    }
}

/// Refuses a change signed with a key the account no longer has (it was
/// read from the account cache before a key change on another replica).
fn stored_key_signed(stored: &AccountRecord, signer: &AccountRecord) -> Result<(), RaError> {
    if stored.jwk == signer.jwk {
        Ok(())
    } else {
        Err(RaError::new(
            ProblemType::Unauthorized,
            "the account's key has changed: sign with its current key",
        ))
    }
}

fn eab_problem(e: &EabError) -> RaError {
    match e {
        EabError::BadMac => RaError::new(ProblemType::Unauthorized, e.to_string()),
        _ => RaError::new(
            ProblemType::Malformed,
            format!("externalAccountBinding: {e}"),
        ),
    }
}

/// Checks account contacts: `mailto:` URLs with one address (RFC 8555 §7.3).
fn check_contacts(contacts: Vec<String>) -> Result<Vec<String>, RaError> {
    if contacts.len() > 10 {
        return problem(
            ProblemType::InvalidContact,
            "at most 10 contacts are accepted",
        );
    }
    for c in &contacts {
        let Some(addr) = c.strip_prefix("mailto:") else {
            return problem(
                ProblemType::UnsupportedContact,
                format!("contact {c:?} is not supported; use a \"mailto:\" URL"),
            );
        };
        let ok = addr.len() <= 254
            && !addr.contains(['?', ',', ' ', '<', '>'])
            && addr.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
            });
        if !ok {
            return problem(
                ProblemType::InvalidContact,
                format!("contact {c:?} is not a single e-mail address"),
            );
        }
    }
    Ok(contacts)
}
