//! Fuzz target `jws`: see acmeproxy_testkit::fuzzing::jws.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy_testkit::fuzzing::jws(data));
