//! Process-wide heap settings: keep freed memory in the process for the next allocation
//! instead of handing it back to the kernel.
//!
//! A training step allocates and frees about a gigabyte of activations and gradients in
//! tensors of 1–70 MB. With glibc's defaults, every allocation above the (dynamic) mmap
//! threshold is a fresh `mmap` whose pages the kernel faults in and zeroes on first touch,
//! and freed heap tops are trimmed back to the kernel: in a profile of `bench train`,
//! page faults and `clear_page` took ~9 % of all samples, and raising both thresholds made
//! the step 1.4–1.5× faster on the bench model (docs/benchmarks.md). The resident set then
//! stays at its high-water mark, which a long-running worker or gateway reaches anyway.
//!
//! Set `TRIBUTARY_GLIBC_MALLOC_DEFAULTS=1` to keep glibc's own settings (for comparison, or
//! where returning memory to the kernel matters more than speed).

/// Raises glibc's mmap and trim thresholds to their maximum. Call once, first thing in
/// `main`, before other threads start. A no-op elsewhere than Linux with glibc.
pub fn keep_freed_memory() {
    if std::env::var_os("TRIBUTARY_GLIBC_MALLOC_DEFAULTS").is_some_and(|v| v == "1") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any other
    // thread exists, and both values are within the `int` range glibc accepts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, libc::c_int::MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}
