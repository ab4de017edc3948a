//! Fuzz target `tls_alpn01_cert`: see acmeproxy::fuzzing::tls_alpn01_cert.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy::fuzzing::tls_alpn01_cert(data));
