//! Several named upstreams behind one [`CertificateAuthorityService`]
//! (`authority.upstreams`, `authority.routes`, `authority.failover`;
//! docs/admin.md, "Several upstreams").
//!
//! - **Routes** are tried in order; the first whose match covers every
//!   identifier of the order (and its provisioner and EAB key, when the
//!   route names them) takes it. An order no route covers is refused at
//!   newOrder ([`check_route`](CertificateAuthorityService::check_route)).
//! - **Failover**: a route's upstreams are tried in its order, those marked
//!   down last. An upstream is marked down after `downAfter` consecutive
//!   temporary failures or a failed health probe, and up again after a good
//!   probe or a success. A temporary failure before the upstream saved a
//!   checkpoint moves the job on to the next upstream at once; a job that
//!   has a checkpoint at an upstream stays there (its upstream order is
//!   resumed, never duplicated at another CA).
//! - **Revocation and ARI** go to the upstream whose name is stored with
//!   the certificate.
//!
//! The checkpoint an upstream saves is stored as `via:<name>:<state>`, so
//! that a resumed job finds its upstream again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{
    CertificateAuthorityService, Checkpoint, Issued, IssuedChain, Requester, RevokeRequest,
    SignRequest, UpstreamError,
};
use crate::acme::{Identifier, ProblemType};
use crate::config::{FailoverSettings, RouteSettings};

/// How long a health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The checkpoint prefix that names the upstream holding a job.
const VIA: &str = "via:";

/// What the router tells the metrics (the upstream module does not use
/// them; the application wires these up).
pub trait RouteEvents: Send + Sync + 'static {
    /// One call to upstream `upstream`.
    fn call(&self, _upstream: &str, _operation: &str, _ok: bool, _elapsed: Duration) {}
    /// `upstream` is now available (or not) for new jobs.
    fn available(&self, _upstream: &str, _up: bool) {}
    /// A job went to `upstream`: `first` (its route's first available),
    /// `failover` (an earlier one failed or is down) or `resumed` (its
    /// checkpoint is there).
    fn chosen(&self, _upstream: &str, _reason: &str) {}
}

/// Events that go nowhere (tests).
pub struct NoEvents;
impl RouteEvents for NoEvents {}

/// One upstream of the router, with its failover state.
struct Member {
    name: String,
    service: Arc<dyn CertificateAuthorityService>,
    failures: AtomicU32,
    down: AtomicBool,
}

/// The router.
pub struct Routed {
    members: Vec<Member>,
    routes: Vec<RouteSettings>,
    failover: FailoverSettings,
    events: Arc<dyn RouteEvents>,
}

impl Routed {
    /// A router over `upstreams` (name, service), every name of `routes`
    /// among them (the configuration checked that).
    pub fn new(
        upstreams: Vec<(String, Arc<dyn CertificateAuthorityService>)>,
        routes: Vec<RouteSettings>,
        failover: FailoverSettings,
        events: Arc<dyn RouteEvents>,
    ) -> Arc<Self> {
        let members = upstreams
            .into_iter()
            .map(|(name, service)| {
                events.available(&name, true);
                Member {
                    name,
                    service,
                    failures: AtomicU32::new(0),
                    down: AtomicBool::new(false),
                }
            })
            .collect();
        Arc::new(Self {
            members,
            routes,
            failover,
            events,
        })
    }

    /// Probes every upstream's health every `probeEvery` until `shutdown`.
    pub fn spawn_probes(self: &Arc<Self>, shutdown: CancellationToken) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                me.probe_all().await;
                tokio::select! {
                    () = tokio::time::sleep(me.failover.probe_every) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// One health probe of every upstream, at once.
    pub async fn probe_all(&self) {
        let mut probes = tokio::task::JoinSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let service = Arc::clone(&m.service);
            probes.spawn(async move {
                (
                    i,
                    tokio::time::timeout(PROBE_TIMEOUT, service.health()).await,
                )
            });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((i, result)) = done else { continue };
            let Some(m) = self.members.get(i) else {
                continue;
            };
            match result {
                Ok(Ok(())) => self.mark(m, true, "its health probe answered"),
                Ok(Err(e)) => self.mark(m, false, &format!("its health probe failed: {e}")),
                Err(_) => self.mark(m, false, "its health probe did not answer in time"),
            }
        }
    }

    /// Whether `name` is marked down.
    pub fn is_down(&self, name: &str) -> Option<bool> {
        self.member(name).map(|m| m.down.load(Ordering::SeqCst))
    }

    fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Marks `m` up or down, logging a change with `why`.
    fn mark(&self, m: &Member, up: bool, why: &str) {
        if up {
            m.failures.store(0, Ordering::SeqCst);
        }
        let was_down = m.down.swap(!up, Ordering::SeqCst);
        if was_down == up {
            if up {
                tracing::info!(upstream = %m.name, reason = why, "upstream available again; new jobs return to it");
            } else {
                tracing::warn!(upstream = %m.name, reason = why, "upstream marked down; new jobs go to the next upstream of their route");
            }
            self.events.available(&m.name, up);
        }
    }

    fn failed(&self, m: &Member, e: &UpstreamError) {
        let n = m.failures.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        if n >= self.failover.down_after {
            self.mark(
                m,
                false,
                &format!("{n} temporary failures in a row, the last: {e}"),
            );
        }
    }

    /// The first route that takes the order, or why none does.
    fn route_for(&self, ids: &[Identifier], who: &Requester) -> Result<&RouteSettings, String> {
        if let Some(r) = self.routes.iter().find(|r| covers(r, ids, who)) {
            return Ok(r);
        }
        let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let routes: Vec<String> = self.routes.iter().map(describe).collect();
        Err(format!(
            "no route of this server takes every identifier of the order ({}) for provisioner {:?}{}; \
             its routes: {}. Order the names of one route at a time",
            names.join(", "),
            who.provisioner,
            who.eab_kid
                .as_deref()
                .map(|k| format!(" and EAB key {k:?}"))
                .unwrap_or_default(),
            routes.join("; ")
        ))
    }

    /// `route`'s members, available ones first, each group in route order.
    fn candidates<'a>(&'a self, route: &'a RouteSettings) -> Vec<&'a Member> {
        let members: Vec<&Member> = route
            .upstreams
            .iter()
            .filter_map(|n| self.member(n))
            .collect();
        let (up, down): (Vec<&Member>, Vec<&Member>) = members
            .into_iter()
            .partition(|m| !m.down.load(Ordering::SeqCst));
        up.into_iter().chain(down).collect()
    }

    /// One create (or renew) call at `m`, counted.
    async fn call(
        &self,
        m: &Member,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
        saved: &AtomicBool,
    ) -> Result<IssuedChain, UpstreamError> {
        let via = Via {
            name: &m.name,
            inner: checkpoint,
            saved,
        };
        let started = Instant::now();
        let result = m.service.create_certificate(req, &via).await;
        self.events
            .call(&m.name, "create", result.is_ok(), started.elapsed());
        match &result {
            Ok(_) => {
                if m.failures.load(Ordering::SeqCst) > 0 || m.down.load(Ordering::SeqCst) {
                    self.mark(m, true, "it issued a certificate");
                }
            }
            Err(e) if e.is_transient() => self.failed(m, e),
            Err(_) => {}
        }
        result
    }
}

/// Whether `route` takes an order of `ids` from `who`.
fn covers(route: &RouteSettings, ids: &[Identifier], who: &Requester) -> bool {
    if !route.provisioner.is_empty() && !route.provisioner.contains(&who.provisioner) {
        return false;
    }
    if !route.eab_key.is_empty()
        && !who
            .eab_kid
            .as_ref()
            .is_some_and(|k| route.eab_key.contains(k))
    {
        return false;
    }
    if route.dns.is_empty() && route.ip.is_empty() {
        return true;
    }
    ids.iter().all(|id| match id {
        Identifier::Dns(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            route.dns.iter().any(|p| match p.strip_prefix("*.") {
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => name == *p,
            })
        }
        Identifier::Ip(ip) => route.ip.iter().any(|n| n.contains(*ip)),
    })
}

/// A route for an error message: its name and what it matches.
fn describe(r: &RouteSettings) -> String {
    let mut parts = Vec::new();
    if !r.dns.is_empty() {
        parts.push(format!("dns {}", r.dns.join(", ")));
    }
    if !r.ip.is_empty() {
        let nets: Vec<String> = r.ip.iter().map(ToString::to_string).collect();
        parts.push(format!("ip {}", nets.join(", ")));
    }
    if !r.provisioner.is_empty() {
        parts.push(format!("provisioner {}", r.provisioner.join(", ")));
    }
    if !r.eab_key.is_empty() {
        parts.push(format!("EAB key {}", r.eab_key.join(", ")));
    }
    if parts.is_empty() {
        parts.push("every order".to_owned());
    }
    format!("{:?} ({})", r.name, parts.join("; "))
}

/// The checkpoint an upstream of the router saves through: stored as
/// `via:<name>:<state>`.
struct Via<'a> {
    name: &'a str,
    inner: &'a dyn Checkpoint,
    saved: &'a AtomicBool,
}

#[async_trait]
impl Checkpoint for Via<'_> {
    async fn save(&self, state: &str) -> Result<(), UpstreamError> {
        self.inner
            .save(&format!("{VIA}{}:{state}", self.name))
            .await?;
        self.saved.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// The upstream name and its own state in a stored checkpoint.
fn split_resume(resume: &str) -> Option<(&str, &str)> {
    resume.strip_prefix(VIA)?.split_once(':')
}

#[async_trait]
impl CertificateAuthorityService for Routed {
    fn name(&self) -> &'static str {
        "routed"
    }

    async fn create_certificate(
        &self,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        self.create_for(req, &Requester::default(), checkpoint)
            .await
            .map(|issued| issued.chain)
    }

    async fn create_for(
        &self,
        req: &SignRequest,
        who: &Requester,
        checkpoint: &dyn Checkpoint,
    ) -> Result<Issued, UpstreamError> {
        let route =
            self.route_for(&req.identifiers, who)
                .map_err(|detail| UpstreamError::Rejected {
                    kind: ProblemType::RejectedIdentifier,
                    detail,
                })?;
        // A job with a checkpoint stays with the upstream that holds it.
        if let Some(resume) = req.resume.as_deref() {
            let (name, state) = match split_resume(resume) {
                Some(pair) => pair,
                // Saved before routes were configured: the route's first.
                None => (route.upstreams.first().map_or("", String::as_str), resume),
            };
            let Some(m) = self.member(name) else {
                return Err(UpstreamError::Rejected {
                    kind: ProblemType::ServerInternal,
                    detail: format!(
                        "this order was started at upstream {name:?}, which is no longer configured; create a new order"
                    ),
                });
            };
            let mut resumed = req.clone();
            resumed.resume = Some(state.to_owned());
            self.events.chosen(&m.name, "resumed");
            let saved = AtomicBool::new(false);
            let chain = self.call(m, &resumed, checkpoint, &saved).await?;
            return Ok(Issued {
                chain,
                upstream: m.name.clone(),
            });
        }
        let mut last: Option<UpstreamError> = None;
        for (i, m) in self.candidates(route).into_iter().enumerate() {
            let reason = if i == 0 && route.upstreams.first() == Some(&m.name) {
                "first"
            } else {
                "failover"
            };
            if reason == "failover" {
                tracing::info!(
                    upstream = %m.name,
                    route = %route.name,
                    why = %last.as_ref().map_or_else(
                        || "the upstreams before it are marked down".to_owned(),
                        |e| format!("the one before it failed: {e}"),
                    ),
                    "finalize job goes to the next upstream of its route"
                );
            }
            self.events.chosen(&m.name, reason);
            let saved = AtomicBool::new(false);
            match self.call(m, req, checkpoint, &saved).await {
                Ok(chain) => {
                    return Ok(Issued {
                        chain,
                        upstream: m.name.clone(),
                    });
                }
                // Nothing at this upstream to resume: the next one may sign.
                Err(e) if e.is_transient() && !saved.load(Ordering::SeqCst) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::Unavailable {
            context: format!("route {:?} has no upstream", route.name),
            source: None,
        }))
    }

    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError> {
        // Without the stored name: the first upstream (certificates issued
        // before routes were configured).
        let first = self.members.first().map_or("", |m| m.name.as_str());
        self.revoke_at(first, req).await
    }

    async fn revoke_at(&self, upstream: &str, req: &RevokeRequest) -> Result<(), UpstreamError> {
        // Certificates stored before several upstreams were configured carry
        // the upstream's type name; they came from the first.
        let m = self.member(upstream).or_else(|| {
            self.members
                .first()
                .filter(|m| m.service.name() == upstream)
        });
        let Some(m) = m else {
            return Err(UpstreamError::Rejected {
                kind: ProblemType::ServerInternal,
                detail: format!(
                    "the certificate was issued by upstream {upstream:?}, which is no longer configured; revoke it there"
                ),
            });
        };
        let started = Instant::now();
        let r = m.service.revoke_certificate(req).await;
        self.events
            .call(&m.name, "revoke", r.is_ok(), started.elapsed());
        r
    }

    fn roots(&self) -> Vec<Vec<u8>> {
        let mut roots: Vec<Vec<u8>> = Vec::new();
        for m in &self.members {
            for r in m.service.roots() {
                if !roots.contains(&r) {
                    roots.push(r);
                }
            }
        }
        roots
    }

    async fn renewal_window_at(
        &self,
        upstream: &str,
        certificate_der: &[u8],
    ) -> Result<Option<(OffsetDateTime, OffsetDateTime)>, UpstreamError> {
        match self.member(upstream) {
            Some(m) => m.service.renewal_window(certificate_der).await,
            None => Ok(None),
        }
    }

    fn signs_locally(&self) -> bool {
        self.members.iter().all(|m| m.service.signs_locally())
    }

    /// Ready while every route has an upstream not marked down. The marks
    /// come from the probes every `probeEvery` and from the jobs' calls;
    /// this does not probe again, so `/ready` and the metrics scrape (once
    /// a second) neither raise the probe rate the operator chose nor wait
    /// on a slow upstream that its route can fail over from.
    async fn health(&self) -> Result<(), UpstreamError> {
        let stranded: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| r.upstreams.iter().all(|n| self.is_down(n).unwrap_or(true)))
            .map(|r| r.name.as_str())
            .collect();
        if stranded.is_empty() {
            return Ok(());
        }
        let down: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.down.load(Ordering::SeqCst))
            .map(|m| m.name.as_str())
            .collect();
        Err(UpstreamError::Unavailable {
            context: format!(
                "every upstream of route(s) {} is down (down: {})",
                stranded.join(", "),
                down.join(", ")
            ),
            source: None,
        })
    }

    fn check_route(&self, identifiers: &[Identifier], who: &Requester) -> Result<(), String> {
        self.route_for(identifiers, who).map(|_| ())
    }

    fn is_router(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
