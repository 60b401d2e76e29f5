//! Giving freed heap memory back to the system.
//!
//! glibc keeps freed memory in its arenas for reuse and returns only the
//! free top of a heap; after a burst of short-lived allocations (loading
//! 100,000 records at boot, a reconcile pass that copies every record) an
//! idle process would keep the high-water mark of that burst as resident
//! memory. [`release_free_memory`] returns every free page instead.

/// Returns the allocator's free pages to the system (glibc's
/// `malloc_trim(0)`); does nothing on other allocators. Costs a walk of
/// the heap: call it after a burst, not on a hot path.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own
    // arenas; it is thread-safe and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
