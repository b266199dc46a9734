#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sandkit_config::fuzzing::volumes(data);
});
