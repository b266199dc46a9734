#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sandkit_e2b_protocol::fuzzing::envelope(data);
});
