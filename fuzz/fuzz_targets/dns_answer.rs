//! Fuzz target `dns_answer`: see acmeproxy::fuzzing::dns_answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy::fuzzing::dns_answer(data));
