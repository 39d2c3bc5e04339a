//! How this process's memory allocator hands memory back to the system.
//!
//! A round moves buffers of tens of kilobytes to megabytes: task bodies, a
//! hospital's candidate models under valuation, a large model's parameters
//! and gradients. glibc starts by returning the top of a heap to the kernel
//! as soon as 128 KiB of it is free, and serving every block from 128 KiB
//! up with a fresh `mmap`; each round then pays page faults to get those
//! pages back, and every `munmap` or trim interrupts the other cores to
//! flush their TLBs (`perf` of a valued 10-hospital job in a fresh process:
//! about a third of what valuation added to a round's CPU;
//! docs/BENCHMARKS.md). glibc raises both limits itself once a mapped block
//! is freed, up to [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`], but only then,
//! and a process may never free one. Starting at those limits makes every
//! process behave as a long-running one would, at the cost of keeping freed
//! memory mapped (measured: 2 to 50 MB more peak resident memory).

/// Blocks from this size up get their own mapping (glibc's largest
/// automatic choice on 64-bit targets).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of a heap beyond this goes back to the kernel
/// (twice [`MMAP_THRESHOLD`], as glibc pairs them).
pub const TRIM_THRESHOLD: usize = 64 << 20;

/// Applies both thresholds to glibc's allocator; elsewhere (musl, macOS)
/// it does nothing. Returns whether the allocator accepted both.
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's tuning parameters
        // and is safe to call at any time from any thread.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
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
    #[cfg(all(target_os = "linux", target_env = "gnu", target_pointer_width = "64"))]
    fn glibc_takes_both_settings() {
        assert!(super::retain_freed_memory());
    }
}
