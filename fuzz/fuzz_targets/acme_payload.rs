//! Fuzz target `acme_payload`: see acmeproxy_testkit::fuzzing::acme_payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy_testkit::fuzzing::acme_payload(data));
