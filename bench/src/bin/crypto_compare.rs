//! `crypto-compare`: ECDSA P-256 (and Ed25519) verification and signing with
//! ring, the provider the binary uses, against aws-lc-rs, one after the other
//! on this machine (issue 17: measure before switching the whole binary's
//! provider). Built only with the `aws-lc-rs` feature:
//!
//! ```sh
//! cargo run --release -p acmeproxy-bench --features aws-lc-rs --bin crypto-compare [ITERATIONS]
//! ```
//!
//! Each operation runs ITERATIONS times (default 20,000) on one thread after
//! a warm-up; it prints microseconds per operation and the ratio.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};

/// What one library does, timed: microseconds per operation.
struct Timing {
    verify_p256: f64,
    sign_p256: f64,
    verify_ed25519: f64,
}

fn per_op(iterations: u32, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..iterations / 10 {
        op()?;
    }
    let started = Instant::now();
    for _ in 0..iterations {
        op()?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations))
}

/// `$fn_name`: the timing of `$lib` (named `$name` in errors), whose
/// `signature` and `rand` modules have ring's shape, as aws-lc-rs keeps it;
/// `$key` makes the P-256 key pair from (algorithm, PKCS#8, random source).
macro_rules! timing {
    ($fn_name:ident, $lib:ident, $name:literal, $key:expr) => {
        fn $fn_name(iterations: u32, msg: &[u8]) -> Result<Timing> {
            use $lib::rand::SystemRandom;
            use $lib::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
            let rng = SystemRandom::new();
            let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(|e| anyhow!("{e}"))?;
            let key: EcdsaKeyPair =
                ($key)(alg, pkcs8.as_ref(), &rng).map_err(|e| anyhow!("{e}"))?;
            let sig = key.sign(&rng, msg).map_err(|e| anyhow!("{e}"))?;
            let public = signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                key.public_key().as_ref().to_vec(),
            );
            let verify_p256 = per_op(iterations, || {
                public
                    .verify(msg, sig.as_ref())
                    .map_err(|e| anyhow!(concat!($name, " P-256 verify: {}"), e))
            })?;
            let sign_p256 = per_op(iterations, || {
                key.sign(&rng, msg)
                    .map(|_| ())
                    .map_err(|e| anyhow!(concat!($name, " P-256 sign: {}"), e))
            })?;
            let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| anyhow!("{e}"))?;
            let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).map_err(|e| anyhow!("{e}"))?;
            let ed_sig = ed.sign(msg);
            let ed_public = signature::UnparsedPublicKey::new(
                &signature::ED25519,
                ed.public_key().as_ref().to_vec(),
            );
            let verify_ed25519 = per_op(iterations, || {
                ed_public
                    .verify(msg, ed_sig.as_ref())
                    .map_err(|e| anyhow!(concat!($name, " Ed25519 verify: {}"), e))
            })?;
            Ok(Timing {
                verify_p256,
                sign_p256,
                verify_ed25519,
            })
        }
    };
}

// The one difference: ring's `from_pkcs8` takes the random source
// (`EcdsaKeyPair` is the library's own, in scope inside the function).
timing!(ring_timing, ring, "ring", |alg, pkcs8, rng| {
    EcdsaKeyPair::from_pkcs8(alg, pkcs8, rng)
});
timing!(aws_lc_timing, aws_lc_rs, "aws-lc-rs", |alg, pkcs8, _rng| {
    EcdsaKeyPair::from_pkcs8(alg, pkcs8)
});

fn main() -> Result<()> {
    let iterations: u32 = match std::env::args().nth(1) {
        Some(n) => n.parse().context("ITERATIONS must be a positive integer")?,
        None => 20_000,
    };
    // About the size of a JWS signing input of a newOrder.
    let msg = vec![b'x'; 600];
    let ring = ring_timing(iterations, &msg)?;
    let aws = aws_lc_timing(iterations, &msg)?;
    println!("operation          ring µs   aws-lc-rs µs   ring / aws-lc-rs   ({iterations} each)");
    for (name, r, a) in [
        ("P-256 verify", ring.verify_p256, aws.verify_p256),
        ("P-256 sign", ring.sign_p256, aws.sign_p256),
        ("Ed25519 verify", ring.verify_ed25519, aws.verify_ed25519),
    ] {
        println!("{name:16} {r:9.1} {a:14.1} {:18.2}", r / a);
    }
    Ok(())
}
