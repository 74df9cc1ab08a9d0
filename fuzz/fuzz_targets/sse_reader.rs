#![no_main]

//! The SSE reader target counts heap bytes so that it can assert the reader's memory bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use fuzz_checks::HeapProbe;
use libfuzzer_sys::fuzz_target;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Probe;

impl HeapProbe for Probe {
    fn reset_peak(&self) -> usize {
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        live
    }

    fn peak(&self) -> usize {
        PEAK.load(Ordering::Relaxed)
    }
}

fuzz_target!(|data: &[u8]| {
    // Go on past problems already reported (fuzz_checks::KNOWN_FINDINGS) unless FUZZ_STRICT
    // is set (for minimising one of them).
    if std::env::var_os("FUZZ_STRICT").is_none() {
        fuzz_checks::TOLERATE_KNOWN.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fuzz_checks::check_sse_reader(data, Some(&Probe))
});
