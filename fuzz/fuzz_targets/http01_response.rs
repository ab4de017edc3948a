//! Fuzz target `http01_response`: see acmeproxy_testkit::fuzzing::http01_response.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy_testkit::fuzzing::http01_response(data));
