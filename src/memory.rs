//! Giving memory back to the operating system after the passes that need a
//! lot of it for a moment.
//!
//! The startup reconcile and each periodic one hold every row and every
//! runner the engine lists at once: tens of megabytes at 10,000 sessions.
//! glibc's allocator keeps what they free in its arenas for the next
//! allocation, so without this the service's resident memory stays at the
//! highest a pass ever needed (measured in the `scale` benchmark: 68 MiB
//! after a start with 10,000 sessions, 39 MiB once released).

/// Returns the allocator's free memory to the operating system. Cheap next
/// to the passes it follows (it walks the free lists, about a millisecond
/// at 10,000 sessions); a no-op where the allocator is not glibc's.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` has no preconditions; it only reads and shrinks
    // the allocator's own free lists, under the allocator's locks.
    unsafe {
        libc::malloc_trim(0);
    }
}
