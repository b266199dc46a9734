#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    runtime_config::fuzzing::config(data);
});
