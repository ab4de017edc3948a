//! Answers an upstream CA's dns-01 challenges (RFC 8555 §8.4) for CAs that
//! validate every name themselves: the TXT record goes to
//! `_acme-challenge.<name>` (or where a CNAME there points, as acme-dns
//! setups delegate it) by RFC 2136 UPDATE with TSIG, or by an operator's
//! script; the solver waits until every authoritative server of the zone
//! answers it, asked directly, then tells the upstream, polls, and removes
//! the record again.
//!
//! Crash safety: the records are named in the finalize job's checkpoint
//! before they are published (so a restarted job removes what an earlier
//! attempt left), and each is also kept in a ledger in the RA's store until
//! it is removed; entries nobody removed (a job that never ran again) are
//! swept once they are stale.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8.4>,
//! <https://www.rfc-editor.org/rfc/rfc2136>

mod exec;
mod lookup;
mod wire;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::rr::Name;
use instant_acme::{AuthorizationStatus, ChallengeType, Order, OrderStatus, RetryPolicy};
use serde::{Deserialize, Serialize};

pub use wire::DnsError;

use super::{Checkpoint, UpstreamError, UpstreamState};
use crate::acme::ProblemType;
use crate::config::{Dns01Provider, UpstreamChallengeSettings};

/// Prefix of the ledger keys in the RA's store.
const LEDGER: &str = "externalcas/dns01/";
/// One DNS exchange may take this long.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// CNAMEs followed from `_acme-challenge.<name>` at most.
const MAX_CNAMES: usize = 8;

/// One TXT record the solver publishes: its owner name (fully qualified)
/// and value (the base64url SHA-256 of the key authorization).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxtRecord {
    pub fqdn: String,
    pub value: String,
}

/// The upstream order's progress as the finalize job keeps it (through
/// [`Checkpoint`]): the order URL, and the TXT records that may be in DNS.
/// Without records it is stored as the bare URL, as before dns-01 existed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub order: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns01: Vec<TxtRecord>,
    /// Set once the records answer on every authoritative server, before
    /// the upstream is told to validate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub published: bool,
}

impl Progress {
    /// Reads a saved state: JSON, or the bare order URL of older versions.
    pub fn parse(saved: &str) -> Result<Self, UpstreamError> {
        if !saved.trim_start().starts_with('{') {
            return Ok(Self {
                order: saved.to_owned(),
                ..Self::default()
            });
        }
        serde_json::from_str(saved).map_err(|e| UpstreamError::Internal {
            context: "the finalize job's upstream state is unreadable".into(),
            source: Some(Box::new(e)),
        })
    }

    /// The form saved with the job.
    pub fn encode(&self) -> String {
        if self.dns01.is_empty() {
            return self.order.clone();
        }
        serde_json::to_string(self).unwrap_or_else(|_| self.order.clone())
    }
}

/// What a ledger entry holds.
#[derive(Debug, Serialize, Deserialize)]
struct LedgerEntry {
    record: TxtRecord,
    /// Unix seconds of the last publication.
    at: u64,
}

/// The dns-01 solver of the external ACME upstream.
pub struct Dns01Solver {
    settings: UpstreamChallengeSettings,
    signer: Option<TSigner>,
    zone: Option<Name>,
    state: Arc<dyn UpstreamState>,
    /// How long a ledger entry may go unrefreshed before it is swept.
    stale_after: Duration,
}

impl std::fmt::Debug for Dns01Solver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The settings' Debug hides the TSIG secret; the signer is left out.
        f.debug_struct("Dns01Solver")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Dns01Solver {
    /// A solver with these settings; `upstream_timeout` bounds one attempt
    /// at the upstream (ledger entries older than a few of those are stale).
    pub fn new(
        settings: UpstreamChallengeSettings,
        state: Arc<dyn UpstreamState>,
        upstream_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let internal = |e: DnsError| UpstreamError::Internal {
            context: "setting up the dns-01 solver".into(),
            source: Some(Box::new(e)),
        };
        let signer = match &settings.provider {
            Dns01Provider::Rfc2136 { tsig: Some(key) } => {
                Some(wire::signer(key).map_err(internal)?)
            }
            _ => None,
        };
        let zone = settings
            .zone
            .as_deref()
            .map(wire::parse_name)
            .transpose()
            .map_err(internal)?;
        let stale_after =
            settings.propagation_timeout + upstream_timeout * 3 + Duration::from_secs(600);
        Ok(Self {
            settings,
            signer,
            zone,
            state,
            stale_after,
        })
    }

    /// Answers the pending authorizations of `order` with dns-01: publish,
    /// wait for the authoritative servers, tell the upstream, poll, and
    /// remove the records whatever the outcome. `progress` is the job's
    /// checkpoint, saved before the records go out and after they are
    /// removed.
    pub(super) async fn answer(
        &self,
        order: &mut Order,
        progress: &mut Progress,
        checkpoint: &dyn Checkpoint,
        retry: &RetryPolicy,
    ) -> Result<(), UpstreamError> {
        self.sweep().await;
        let records = self.pending_records(order).await?;
        // What an earlier attempt left is removed at the end too.
        let mut all: BTreeSet<TxtRecord> = progress.dns01.iter().cloned().collect();
        all.extend(records.iter().cloned());
        progress.dns01 = all.iter().cloned().collect();
        progress.published = false;
        checkpoint.save(&progress.encode()).await?;

        let outcome = self
            .validate(order, &records, progress, checkpoint, retry)
            .await;
        if let Err(e) = &outcome {
            let names: Vec<&str> = records.iter().map(|r| r.fqdn.as_str()).collect();
            tracing::warn!(
                zone = self.settings.zone.as_deref().unwrap_or("-"),
                records = ?names,
                error = %e,
                "answering the upstream's dns-01 challenges failed"
            );
        }
        let started = std::time::Instant::now();
        let removed = self.cleanup(&progress.dns01).await;
        if removed {
            tracing::info!(
                records = progress.dns01.len(),
                cleanup_ms = millis(started.elapsed()),
                "dns-01 records removed"
            );
        }
        progress.dns01.clear();
        progress.published = false;
        if removed {
            // A failed removal keeps the records in the checkpoint; the
            // ledger has them for the sweep either way.
            checkpoint.save(&progress.encode()).await?;
        }
        outcome
    }

    /// Removes the records an earlier attempt left (`progress.dns01`) and
    /// saves the checkpoint without them.
    pub(super) async fn remove_leftovers(
        &self,
        progress: &mut Progress,
        checkpoint: &dyn Checkpoint,
    ) -> Result<(), UpstreamError> {
        if self.cleanup(&progress.dns01).await {
            progress.dns01.clear();
            progress.published = false;
            checkpoint.save(&progress.encode()).await?;
        }
        Ok(())
    }

    /// Publishes, waits, tells the upstream and polls.
    async fn validate(
        &self,
        order: &mut Order,
        records: &[TxtRecord],
        progress: &mut Progress,
        checkpoint: &dyn Checkpoint,
        retry: &RetryPolicy,
    ) -> Result<(), UpstreamError> {
        let started = std::time::Instant::now();
        for r in records {
            self.remember(r).await?;
            self.publish(r, true).await?;
        }
        let published = started.elapsed();
        self.wait_propagated(records).await?;
        let propagated = started.elapsed();
        progress.published = true;
        checkpoint.save(&progress.encode()).await?;
        tracing::info!(
            records = records.len(),
            publish_ms = millis(published),
            propagation_ms = millis(propagated.saturating_sub(published)),
            "dns-01 records answer on every authoritative server; asking the upstream to validate"
        );
        let asked = std::time::Instant::now();

        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a =
                a.map_err(|e| super::acme::classify(e, "reading an upstream authorization"))?;
            if a.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut ch) = a.challenge(ChallengeType::Dns01) {
                ch.set_ready().await.map_err(|e| {
                    super::acme::classify(e, "answering an upstream dns-01 challenge")
                })?;
            }
        }
        let status = match order.poll_ready(retry).await {
            Ok(s) => s,
            Err(instant_acme::Error::Api(p)) => {
                // The order failed: the challenges' own errors say why.
                let why = challenge_errors(order).await;
                return Err(rejected(
                    p.r#type.as_deref(),
                    why.unwrap_or_else(|| super::acme::problem_text(&p)),
                ));
            }
            Err(e) => {
                return Err(super::acme::classify(
                    e,
                    "waiting for the upstream to validate dns-01",
                ));
            }
        };
        if status == OrderStatus::Invalid {
            let why = challenge_errors(order)
                .await
                .unwrap_or_else(|| "the upstream found the dns-01 challenge invalid".into());
            return Err(rejected(None, why));
        }
        tracing::info!(
            validation_ms = millis(asked.elapsed()),
            "the upstream validated dns-01"
        );
        Ok(())
    }

    /// The TXT records the pending authorizations ask for.
    async fn pending_records(&self, order: &mut Order) -> Result<Vec<TxtRecord>, UpstreamError> {
        let mut wanted = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a =
                a.map_err(|e| super::acme::classify(e, "reading an upstream authorization"))?;
            if a.status != AuthorizationStatus::Pending {
                continue;
            }
            let name = match a.identifier().identifier {
                instant_acme::Identifier::Dns(n) => n.clone(),
                other => {
                    return Err(UpstreamError::Rejected {
                        kind: ProblemType::RejectedIdentifier,
                        detail: format!(
                            "the upstream wants {other:?} validated, which dns-01 cannot prove"
                        ),
                    });
                }
            };
            let Some(ch) = a.challenge(ChallengeType::Dns01) else {
                return Err(UpstreamError::Rejected {
                    kind: ProblemType::RejectedIdentifier,
                    detail: format!("the upstream offers no dns-01 challenge for {name}"),
                });
            };
            wanted.push((name, ch.key_authorization().dns_value()));
        }
        let mut records = Vec::new();
        for (name, value) in wanted {
            let fqdn = self.record_name(&name).await?;
            records.push(TxtRecord { fqdn, value });
        }
        Ok(records)
    }

    /// Publishes (`present`) or removes one record.
    async fn publish(&self, r: &TxtRecord, present: bool) -> Result<(), UpstreamError> {
        let action = if present { "present" } else { "cleanup" };
        match &self.settings.provider {
            Dns01Provider::Exec { command } => exec::run(
                command,
                action,
                &r.fqdn,
                &r.value,
                self.settings.propagation_timeout,
            )
            .await
            .map_err(|detail| {
                tracing::warn!(fqdn = %r.fqdn, %detail, "the dns-01 exec provider failed");
                UpstreamError::Rejected {
                    kind: ProblemType::Dns,
                    detail: format!("publishing the dns-01 record failed: {detail}"),
                }
            }),
            Dns01Provider::Rfc2136 { .. } => {
                let (Some(zone), Some(ns)) = (&self.zone, &self.settings.nameserver) else {
                    return Err(UpstreamError::Internal {
                        context: "the rfc2136 provider has no zone or name server".into(),
                        source: None,
                    });
                };
                let name =
                    wire::parse_name(&r.fqdn).map_err(|e| self.dns_failure(Some(zone), e))?;
                let servers = lookup::resolve(ns)
                    .await
                    .map_err(|e| self.dns_failure(Some(zone), e))?;
                let change = wire::TxtUpdate {
                    zone,
                    name: &name,
                    value: &r.value,
                    ttl: self.settings.ttl,
                    present,
                };
                let mut last = None;
                for server in servers {
                    match wire::update_txt(server, &change, self.signer.as_ref(), EXCHANGE_TIMEOUT)
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(%zone, fqdn = %r.fqdn, %server, action, "dns-01 record updated");
                            return Ok(());
                        }
                        // Unreachable: try the name's next address.
                        Err(e @ DnsError::Unreachable { .. }) => last = Some(e),
                        Err(e) => return Err(self.dns_failure(Some(zone), e)),
                    }
                }
                Err(self.dns_failure(
                    Some(zone),
                    last.unwrap_or_else(|| DnsError::Protocol {
                        what: format!("{ns} has no address"),
                        source: None,
                    }),
                ))
            }
        }
    }

    /// Removes every record, logging (not failing on) what cannot be
    /// removed; the ledger keeps those for the sweep. Whether all went.
    async fn cleanup(&self, records: &[TxtRecord]) -> bool {
        let mut all = true;
        for r in records {
            match self.publish(r, false).await {
                Ok(()) => self.forget(r).await,
                Err(e) => {
                    all = false;
                    tracing::warn!(zone = self.settings.zone.as_deref().unwrap_or("-"), fqdn = %r.fqdn, error = %e, "cannot remove a dns-01 record; it is retried later");
                }
            }
        }
        all
    }

    /// Removes the records of stale ledger entries: ones a job published
    /// and never removed (it ended without running again, or removing
    /// failed).
    pub(super) async fn sweep(&self) {
        let entries = match self.state.list(LEDGER).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the dns-01 ledger");
                return;
            }
        };
        let now = unix_now();
        for (_, raw) in entries {
            let Ok(entry) = serde_json::from_slice::<LedgerEntry>(&raw) else {
                continue;
            };
            if now.saturating_sub(entry.at) < self.stale_after.as_secs() {
                continue;
            }
            tracing::info!(fqdn = %entry.record.fqdn, "removing a stale dns-01 record");
            if self.publish(&entry.record, false).await.is_ok() {
                self.forget(&entry.record).await;
            }
        }
    }

    /// Notes `r` in the ledger (refreshing its time) before it is published.
    async fn remember(&self, r: &TxtRecord) -> Result<(), UpstreamError> {
        let key = ledger_key(r);
        if let Some(old) = self.state.load(&key).await? {
            self.state.remove(&key, &old).await?;
        }
        let entry = LedgerEntry {
            record: r.clone(),
            at: unix_now(),
        };
        let raw = serde_json::to_vec(&entry).map_err(|e| UpstreamError::Internal {
            context: "encoding a dns-01 ledger entry".into(),
            source: Some(Box::new(e)),
        })?;
        self.state.store_once(&key, raw).await?;
        Ok(())
    }

    async fn forget(&self, r: &TxtRecord) {
        let key = ledger_key(r);
        match self.state.load(&key).await {
            Ok(Some(raw)) => {
                if let Err(e) = self.state.remove(&key, &raw).await {
                    tracing::warn!(error = %e, "cannot remove a dns-01 ledger entry");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read a dns-01 ledger entry"),
        }
    }

    /// A DNS failure as an upstream error, logged with the zone: a refusal
    /// is for good (the client sees the server's words), an unreachable
    /// server is retried later.
    fn dns_failure(&self, zone: Option<&Name>, e: DnsError) -> UpstreamError {
        let zone = zone
            .map(ToString::to_string)
            .or_else(|| self.settings.zone.clone())
            .unwrap_or_default();
        tracing::warn!(%zone, error = %e, "dns-01: the DNS server failed");
        match e {
            DnsError::Refused { .. } | DnsError::Protocol { .. } => UpstreamError::Rejected {
                kind: ProblemType::Dns,
                detail: format!("updating the zone {zone} for dns-01 failed: {e}"),
            },
            DnsError::Unreachable { .. } | DnsError::Unresolved { .. } => {
                UpstreamError::Unavailable {
                    context: format!("the DNS server for the zone {zone} is unreachable: {e}"),
                    source: Some(Box::new(e)),
                }
            }
        }
    }
}

/// The errors of the order's failed challenges, joined.
async fn challenge_errors(order: &mut Order) -> Option<String> {
    let mut errors = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let Ok(mut a) = a else { continue };
        let Ok(state) = a.refresh().await else {
            continue;
        };
        for ch in &state.challenges {
            if let Some(p) = &ch.error {
                errors.push(format!(
                    "{}: {}",
                    state.identifier(),
                    super::acme::problem_text(p)
                ));
            }
        }
    }
    (!errors.is_empty()).then(|| errors.join("; "))
}

fn rejected(urn: Option<&str>, detail: String) -> UpstreamError {
    UpstreamError::Rejected {
        kind: urn
            .and_then(ProblemType::from_urn)
            .unwrap_or(ProblemType::Dns),
        detail: format!("the upstream could not validate dns-01: {detail}"),
    }
}

fn ledger_key(r: &TxtRecord) -> String {
    format!("{LEDGER}{} {}", r.fqdn, r.value)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Ledger times use the wall clock: they are compared across restarts.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// The upstream state in memory.
    #[derive(Default)]
    struct MemState(Mutex<BTreeMap<String, Vec<u8>>>);

    #[async_trait]
    impl UpstreamState for MemState {
        async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, UpstreamError> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        async fn store_once(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, UpstreamError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .entry(key.to_owned())
                .or_insert(value)
                .clone())
        }
        async fn remove(&self, key: &str, value: &[u8]) -> Result<(), UpstreamError> {
            let mut map = self.0.lock().unwrap();
            if map.get(key).is_some_and(|v| v == value) {
                map.remove(key);
            }
            Ok(())
        }
        async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, UpstreamError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        }
    }

    /// A solver with the exec provider running the shell script `body`
    /// (written to `<dir>/hook.sh`).
    fn script_solver(dir: &std::path::Path, body: &str, state: Arc<MemState>) -> Dns01Solver {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("hook.sh");
        std::fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let settings = UpstreamChallengeSettings {
            provider: Dns01Provider::Exec { command: script },
            nameserver: None,
            zone: None,
            propagation_timeout: Duration::from_secs(5),
            polling_interval: Duration::from_millis(100),
            ttl: 60,
        };
        Dns01Solver::new(settings, state, Duration::from_secs(5)).unwrap()
    }

    /// A solver with the exec provider running a script that logs its
    /// arguments to `log`.
    fn exec_solver(dir: &std::path::Path, state: Arc<MemState>) -> (Dns01Solver, PathBuf) {
        let log = dir.join("calls.log");
        let body = format!("echo \"$@\" >> '{}'\n", log.display());
        (script_solver(dir, &body, state), log)
    }

    #[tokio::test]
    async fn the_sweep_removes_stale_records_and_keeps_fresh_ones() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(MemState::default());
        let (solver, log) = exec_solver(dir.path(), Arc::clone(&state));
        let stale = TxtRecord {
            fqdn: "_acme-challenge.old.example.".into(),
            value: "old-value".into(),
        };
        let entry = LedgerEntry {
            record: stale.clone(),
            at: 0,
        };
        state
            .store_once(&ledger_key(&stale), serde_json::to_vec(&entry).unwrap())
            .await
            .unwrap();
        let fresh = TxtRecord {
            fqdn: "_acme-challenge.new.example.".into(),
            value: "new-value".into(),
        };
        solver.remember(&fresh).await.unwrap();

        solver.sweep().await;
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls, "cleanup _acme-challenge.old.example. old-value\n");
        let left: Vec<String> = state
            .list(LEDGER)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![ledger_key(&fresh)]);
    }

    #[tokio::test]
    async fn a_failing_script_is_a_refusal_with_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let solver = script_solver(
            dir.path(),
            "echo \"provider API: zone example.org not found\" >&2\nexit 3\n",
            Arc::new(MemState::default()),
        );
        let r = TxtRecord {
            fqdn: "_acme-challenge.www.example.org.".into(),
            value: "v".into(),
        };
        let e = solver.publish(&r, true).await.unwrap_err();
        let UpstreamError::Rejected { kind, detail } = e else {
            panic!("{e:?}");
        };
        assert_eq!(kind, ProblemType::Dns);
        assert!(
            detail.contains("provider API: zone example.org not found")
                && detail.contains("present _acme-challenge.www.example.org."),
            "{detail}"
        );
    }

    #[test]
    fn progress_reads_bare_urls_and_json() {
        let p = Progress::parse("https://ca/order/1").unwrap();
        assert_eq!(p.order, "https://ca/order/1");
        assert!(p.dns01.is_empty());
        assert_eq!(p.encode(), "https://ca/order/1");
        let p = Progress {
            order: "https://ca/order/2".into(),
            dns01: vec![TxtRecord {
                fqdn: "_acme-challenge.a.example.".into(),
                value: "v".into(),
            }],
            published: true,
        };
        assert_eq!(Progress::parse(&p.encode()).unwrap(), p);
    }
}
