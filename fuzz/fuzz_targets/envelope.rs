#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    e2b_protocol::fuzzing::envelope(data);
});
