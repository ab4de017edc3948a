//! Fuzz target `http01_response`: see acmeproxy::fuzzing::http01_response.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy::fuzzing::http01_response(data));
