//! An in-process Authority for the `ra` unit tests: softcas in a temp dir,
//! a validator whose resolver is the discard port (every validation fails
//! fast), and a fake clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Authority, AuthorityOptions, Provisioner};
use crate::model::FakeClock;
use crate::store::{Records, Store};
use crate::upstream::softcas::{SoftCas, SoftCasOptions};
use crate::validate::resolver::HickoryResolver;
use crate::validate::{ValidationSettings, Validator};

/// An Authority on `store` whose softcas CA (named `name`) lives under `dir`,
/// with `provisioners`, its clock at `t0`.
pub(super) fn authority(
    store: Arc<dyn Store>,
    dir: &Path,
    name: &str,
    provisioners: Vec<Provisioner>,
    t0: OffsetDateTime,
) -> (Arc<Authority>, Arc<FakeClock>) {
    let upstream = Arc::new(
        SoftCas::open(SoftCasOptions {
            dir: dir.join("softcas"),
            name: name.to_owned(),
            default_lifetime: StdDuration::from_secs(86_400),
            sign_delay: StdDuration::ZERO,
        })
        .unwrap(),
    );
    // Nothing answers on the discard port: every validation fails fast.
    let resolver =
        HickoryResolver::new(&["127.0.0.1:9".parse().unwrap()], StdDuration::from_secs(1)).unwrap();
    let validator = Validator::new(ValidationSettings {
        http_port: 80,
        tls_alpn_port: 443,
        timeout: StdDuration::from_secs(1),
        resolver: Arc::new(resolver),
        egress: Default::default(),
    });
    let clock = Arc::new(FakeClock::new(t0));
    let ra = Authority::new(
        Records::new(store),
        clock.clone(),
        validator,
        upstream,
        provisioners,
        AuthorityOptions::default(),
        CancellationToken::new(),
    );
    (ra, clock)
}

/// A valid account (an Ed25519 key) created at `at`, with a random id.
pub(super) fn account(at: OffsetDateTime) -> crate::model::AccountRecord {
    let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
    crate::model::AccountRecord {
        id: crate::model::AccountId::random(),
        provisioner: "acme".to_owned(),
        jwk: crate::acme::jws::PublicJwk::from_json(&jwk).unwrap(),
        thumbprint: "t".to_owned(),
        status: crate::acme::types::AccountStatus::Valid,
        contact: Vec::new(),
        terms_of_service_agreed: true,
        eab_kid: None,
        eab_policy: None,
        eab_jws: None,
        created_at: at,
    }
}
