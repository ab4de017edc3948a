//! Fuzz target `acme_payload`: see acmeproxy::fuzzing::acme_payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy::fuzzing::acme_payload(data));
