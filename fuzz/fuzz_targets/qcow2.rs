#![no_main]
//! See `disksynth_fuzz::qcow2` for what this target feeds and how.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    disksynth_fuzz::qcow2::run(data);
});
