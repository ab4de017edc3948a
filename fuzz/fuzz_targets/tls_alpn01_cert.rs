//! Fuzz target `tls_alpn01_cert`: see acmeproxy_testkit::fuzzing::tls_alpn01_cert.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy_testkit::fuzzing::tls_alpn01_cert(data));
