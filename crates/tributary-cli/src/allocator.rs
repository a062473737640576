//! The process's allocator: mimalloc, told to give back what a burst freed.
//!
//! The event pipeline allocates many small strings on one thread and frees them on another,
//! which glibc malloc handles poorly (measured: read_all 0.5M -> 0.8M events/s). mimalloc's
//! defaults, though, keep what a burst of connections freed: its memory is advised to become
//! transparent huge pages, which a 64 KiB purge cannot return, and each thread collects its
//! free pages only every 10,000 slow-path allocations, which an idle server never makes.
//! `tributary serve` after 10,000 idle keep-alive connections closed (BENCHMARKS.md, hostile
//! HTTP clients): 33 → 96 MB with the defaults, 19 → 23 MB with the two settings below, at no
//! measurable cost to `bench pipeline`.
//!
//! Huge pages are left out at build time (libmimalloc-sys's `no_thp` feature); the collection
//! interval is an option set at the start of `main`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_generic_collect` in the vendored mimalloc 3 (`include/mimalloc.h`); the Rust
/// bindings do not name it. [`tune`] checks the option's documented default before it writes,
/// so a renumbering in another mimalloc version leaves the defaults instead of another option.
const GENERIC_COLLECT: libmimalloc_sys::mi_option_t = 34;
const GENERIC_COLLECT_DEFAULT: std::ffi::c_long = 10_000;
/// Every 100 slow-path allocations a thread returns its free pages.
const GENERIC_COLLECT_EVERY: std::ffi::c_long = 100;

/// Sets the collection interval, unless the operator chose one (`MIMALLOC_GENERIC_COLLECT`,
/// read by mimalloc itself); call it first thing in `main`.
#[allow(unsafe_code)]
pub fn tune() {
    if std::env::var_os("MIMALLOC_GENERIC_COLLECT").is_some() {
        return;
    }
    // SAFETY: `mi_option_get` and `mi_option_set` read and write one integer in mimalloc's
    // option table; any option index below `_mi_option_last` and any value are valid at any
    // time, and mimalloc reads this option on each use.
    let current = unsafe { libmimalloc_sys::mi_option_get(GENERIC_COLLECT) };
    if current == GENERIC_COLLECT_DEFAULT {
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(GENERIC_COLLECT, GENERIC_COLLECT_EVERY) };
    } else {
        eprintln!(
            "warning: mimalloc option {GENERIC_COLLECT} is {current}, not generic_collect's default; leaving mimalloc's defaults"
        );
    }
}
