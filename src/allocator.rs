//! How this process's memory allocator hands memory back to the system.
//!
//! A round moves buffers of a few hundred kilobytes at a time: task bodies,
//! a hospital's candidate models under valuation, split-learning frames.
//! glibc's defaults return the top of a heap to the kernel as soon as more
//! than 128 KiB of it is free, and serve every block from 128 KiB up with a
//! fresh `mmap`. Each round then pays page faults to get those pages back,
//! and every `munmap` or trim interrupts the other cores to flush their TLBs
//! (`perf` of a valued 10-hospital job in a fresh process: about a third
//! of what valuation added to a round's CPU; docs/BENCHMARKS.md). Keeping up to [`RETAINED`] free at the top of each
//! heap, and serving blocks below it from the heap, removes that churn for
//! a few megabytes of resident memory.

/// Free memory a heap keeps before trimming, and the size from which a
/// block gets its own mapping.
pub const RETAINED: usize = 4 << 20;

/// Applies [`RETAINED`] to glibc's allocator; elsewhere (musl, macOS) it does
/// nothing. Returns whether the allocator accepted both settings.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let bytes = RETAINED as libc::c_int;
        // SAFETY: mallopt only changes the allocator's tuning parameters
        // and is safe to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, bytes) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_both_settings() {
        assert!(super::retain_freed_memory());
    }
}
