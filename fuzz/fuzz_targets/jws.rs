//! Fuzz target `jws`: see acmeproxy::fuzzing::jws.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy::fuzzing::jws(data));
