#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Go on past problems already reported (fuzz_checks::KNOWN_FINDINGS) unless FUZZ_STRICT
    // is set (for minimising one of them).
    if std::env::var_os("FUZZ_STRICT").is_none() {
        fuzz_checks::TOLERATE_KNOWN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fuzz_checks::check("bridge_stream", data)
});
