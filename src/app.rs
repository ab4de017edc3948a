//! The composition root: configuration → concrete store, upstream, resolver →
//! Authority → router → listeners; signals and graceful shutdown. The only
//! place that names concrete implementations.

mod admin;
pub mod admin_socket;
mod backup;
mod connections;
pub mod migrate;
mod nonces;
mod restore;
mod serve;
mod shared_tls;
mod store_watch;
mod upstream_state;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

pub use serve::{OptionsTweak, Overrides, Server, UpstreamFactory, start, start_with};
pub use store_watch::{EXIT_RESTART, RestartNeeded};
pub use upstream_state::StoreUpstreamState;

use crate::cli::{AdminCommand, Cli, Command, ServerCommand};
use crate::config::{
    Config, LimitSetting, ProvisionerSettings, RateLimitSettings, Settings, StoreChoice,
};
use crate::policy::rules::NamePolicy;
use crate::ra::limits::{Limit, Rate, RateLimits};
use crate::ra::{Profile, Provisioner};
use crate::store::Store;
use crate::store::memory::MemoryStore;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sled::SledStore;

/// Runs the command line.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    let command = match (cli.command, cli.config) {
        (Some(c), _) => c,
        (None, Some(config)) => Command::Serve {
            config,
            issuer_password_file: cli.issuer_password_file,
        },
        (None, None) => bail!("give a configuration file: acmeproxy ca.json (or see --help)"),
    };
    match command {
        Command::Serve {
            config,
            issuer_password_file,
        } => {
            let (mut cfg, warnings) = load(&config)?;
            if let Some(file) = issuer_password_file {
                cfg.set_issuer_password(
                    crate::config::read_password_file(&file).context("--issuer-password-file")?,
                );
            }
            crate::telemetry::init(cfg.json_logs);
            for w in &warnings.0 {
                tracing::warn!("{w}");
            }
            runtime()?.block_on(serve::run_until_signal(cfg))
        }
        Command::CheckConfig { config } => {
            let (cfg, warnings) = load(&config)?;
            // The parts start-up builds from the configuration, built the same way.
            provisioners(&cfg)?;
            crate::upstream::roots::read_root_files(&cfg.root_files)?;
            for w in &warnings.0 {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: valid (upstream {}, store {}, {} provisioner(s))",
                config.display(),
                cfg.upstream.name(),
                cfg.store,
                cfg.provisioners.len()
            );
            Ok(())
        }
        Command::Init {
            dir,
            address,
            metrics_port,
        } => admin::init(&dir, &address, metrics_port),
        Command::Eab { command } => runtime()?.block_on(admin::admin(AdminCommand::Eab(command))),
        Command::Accounts { command } => {
            runtime()?.block_on(admin::admin(AdminCommand::Accounts(command)))
        }
        Command::Orders { command } => {
            runtime()?.block_on(admin::admin(AdminCommand::Orders(command)))
        }
        Command::Certs { command } => {
            runtime()?.block_on(admin::admin(AdminCommand::Certs(command)))
        }
        Command::Admin {
            command: ServerCommand::Backup { config, file },
        } => runtime()?.block_on(backup::backup(&config, &file)),
        Command::Restore { file, dir, db } => {
            runtime()?.block_on(restore::restore(&file, &dir, db.as_deref()))
        }
        Command::Migrate { from, to } => runtime()?.block_on(migrate::migrate(&from, &to)),
        Command::Version => {
            println!("acmeproxy {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn load(path: &Path) -> anyhow::Result<(Settings, crate::config::Warnings)> {
    Config::load(path).with_context(|| format!("configuration {}", path.display()))
}

/// Opens the store the configuration selects.
pub async fn open_store(cfg: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &cfg.store {
        StoreChoice::Memory => Arc::new(MemoryStore::new()),
        StoreChoice::Postgres(pg) => {
            let store: Arc<dyn Store> = Arc::new(
                PgStore::open(&PgOptions {
                    data_source: pg.data_source.expose().to_owned(),
                    database: pg.database.clone(),
                    password: pg.password.as_ref().map(|p| p.expose().to_owned()),
                    max_connections: pg.max_connections,
                })
                .await?,
            );
            // The pool's figures at each scrape, while the store lives.
            let weak = Arc::downgrade(&store);
            crate::metrics::before_render(move || {
                if let Some(p) = weak.upgrade().and_then(|s| s.pool_status()) {
                    crate::metrics::store_pool(p.max, p.open, p.idle, p.waiting);
                }
            });
            store
        }
        StoreChoice::Sled(path) => {
            if let Some(parent) = path.parent() {
                create_private_dir(parent)?;
            }
            Arc::new(SledStore::open(path)?)
        }
    })
}

/// Creates a directory (and parents) readable only by the owner.
pub fn create_private_dir(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("creating directory {}", path.display()))
}

/// The provisioners of the configuration, their name policies checked.
pub fn provisioners(cfg: &Settings) -> anyhow::Result<Vec<Provisioner>> {
    let profiles: BTreeMap<String, Profile> = cfg
        .profiles
        .iter()
        .map(|(name, p)| {
            let profile = Profile {
                description: p.description.clone(),
                lifetime: p.lifetime,
                upstream_profile: p.upstream_profile.clone(),
            };
            (name.clone(), profile)
        })
        .collect();
    cfg.provisioners
        .iter()
        .map(|p| provisioner(p, &profiles))
        .collect()
}

fn provisioner(
    p: &ProvisionerSettings,
    profiles: &BTreeMap<String, Profile>,
) -> anyhow::Result<Provisioner> {
    let policies = p
        .policies
        .iter()
        .map(|(level, x)| name_policy(level, x))
        .collect::<anyhow::Result<_>>()?;
    Ok(Provisioner {
        name: p.name.clone(),
        policies,
        challenges: p.challenges.clone(),
        require_eab: p.require_eab,
        default_lifetime: p.default_lifetime,
        min_lifetime: p.min_lifetime,
        max_lifetime: p.max_lifetime,
        terms_of_service: p.terms_of_service.clone(),
        website: p.website.clone(),
        caa_identities: p.caa_identities.clone(),
        profiles: profiles.clone(),
    })
}

/// The rate limits in force: the configured settings over the limits'
/// defaults.
pub fn rate_limits(s: &RateLimitSettings) -> RateLimits {
    let mut out = RateLimits::default();
    for (limit, setting) in [
        (Limit::RequestsPerIp, s.requests_per_ip),
        (Limit::NewAccountsPerIp, s.new_accounts_per_ip),
        (Limit::NewOrdersPerAccount, s.new_orders_per_account),
        (
            Limit::PendingAuthorizationsPerAccount,
            s.pending_authorizations_per_account,
        ),
        (
            Limit::FailedValidationsPerAccountAndIdentifier,
            s.failed_validations_per_account_and_identifier,
        ),
        (Limit::NewOrdersPerEabKey, s.new_orders_per_eab_key),
    ] {
        let Some(LimitSetting {
            count,
            period,
            burst,
        }) = setting
        else {
            continue;
        };
        let rate = limit.default_rate().map(|d| {
            let count = count.unwrap_or(d.count);
            Rate {
                count,
                period: period.unwrap_or(d.period),
                burst: burst.unwrap_or(count),
            }
        });
        // A count of 0 turns the limit off.
        out.set(limit, rate);
    }
    if let Some(n) = s.concurrent_validations {
        out.concurrent_validations = usize::try_from(n).unwrap_or(out.concurrent_validations);
    }
    if let Some(n) = s.max_tracked_keys {
        out.max_keys = usize::try_from(n).unwrap_or(out.max_keys);
    }
    out
}

/// The checked rules of one level's x509 policy.
fn name_policy(level: &str, x: &crate::config::X509PolicyConfig) -> anyhow::Result<NamePolicy> {
    let empty = crate::config::NamesConfig::default();
    let allow = x.allow.as_ref().unwrap_or(&empty);
    let deny = x.deny.as_ref().unwrap_or(&empty);
    NamePolicy::new(
        level,
        &allow.dns,
        &deny.dns,
        &allow.ip,
        &deny.ip,
        x.allow_wildcard_names,
    )
    .map_err(|m| anyhow::anyhow!("{level} policy: {m}"))
}

/// How long graceful shutdown waits for in-flight requests.
pub const SHUTDOWN_GRACE: StdDuration = StdDuration::from_secs(10);

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        t.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(configured: serde_json::Value) -> RateLimits {
        let doc = serde_json::json!({"dnsNames": ["ra.example"], "authority": {
            "provisioners": [{"type": "ACME", "name": "acme"}],
            "rateLimits": configured}});
        let (settings, _) = Config::parse(&doc.to_string()).unwrap();
        rate_limits(&settings.rate_limits)
    }

    #[test]
    fn rate_limits_apply_the_settings_over_the_defaults() {
        let d = limits(serde_json::json!({}));
        assert_eq!(d, RateLimits::default());
        assert_eq!(
            d.get(Limit::NewOrdersPerAccount),
            Some(Rate::new(300, Duration::from_secs(3 * 3600)))
        );
        let c = limits(serde_json::json!({
            "newOrdersPerAccount": 0,
            "newAccountsPerIp": 7,
            "requestsPerIp": {"count": 10, "period": "1s", "burst": 50},
            "failedValidationsPerAccountAndIdentifier": {"period": "10m"},
            "concurrentValidations": 4,
            "maxTrackedKeys": 5000
        }));
        assert_eq!(c.get(Limit::NewOrdersPerAccount), None);
        assert_eq!(
            c.get(Limit::NewAccountsPerIp),
            Some(Rate::new(7, Duration::from_secs(3 * 3600)))
        );
        assert_eq!(
            c.get(Limit::RequestsPerIp),
            Some(Rate {
                count: 10,
                period: Duration::from_secs(1),
                burst: 50
            })
        );
        assert_eq!(
            c.get(Limit::FailedValidationsPerAccountAndIdentifier),
            Some(Rate::new(5, Duration::from_secs(600)))
        );
        assert_eq!(c.concurrent_validations, 4);
        assert_eq!(c.max_keys, 5000);
    }

    #[test]
    fn the_documented_defaults_are_the_ones_applied() {
        use crate::config::{DEFAULT_CONCURRENT_VALIDATIONS, DEFAULT_MAX_TRACKED_KEYS};
        use crate::ra::limits::{DEFAULT_CONCURRENT_VALIDATIONS as CV, DEFAULT_MAX_KEYS};
        assert_eq!(usize::try_from(DEFAULT_CONCURRENT_VALIDATIONS).unwrap(), CV);
        assert_eq!(
            usize::try_from(DEFAULT_MAX_TRACKED_KEYS).unwrap(),
            DEFAULT_MAX_KEYS
        );
    }
}
