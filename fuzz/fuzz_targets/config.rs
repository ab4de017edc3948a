//! Fuzz target `config`: see acmeproxy_testkit::fuzzing::config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy_testkit::fuzzing::config(data));
