//! Fuzz target `csr`: see acmeproxy::fuzzing::csr.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy::fuzzing::csr(data));
