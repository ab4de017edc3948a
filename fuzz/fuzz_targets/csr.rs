//! Fuzz target `csr`: see acmeproxy_testkit::fuzzing::csr.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy_testkit::fuzzing::csr(data));
