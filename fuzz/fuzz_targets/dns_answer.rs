//! Fuzz target `dns_answer`: see acmeproxy_testkit::fuzzing::dns_answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| acmeproxy_testkit::fuzzing::dns_answer(data));
