#![no_main]
//! Fuzz target: agent config parsing (TOML, key=value, durations).

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    loopwatch_fuzz::harness::config(data);
});
