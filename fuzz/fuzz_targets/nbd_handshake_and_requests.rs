#![no_main]
//! See `disksynth_fuzz::nbd` for what this target feeds and how.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = disksynth_fuzz::nbd::session(data);
});
