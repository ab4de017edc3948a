//! Fuzz target `config`: see acmeproxy::fuzzing::config.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy::fuzzing::config(data));
