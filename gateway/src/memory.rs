//! Giving memory back after many connections close. mimalloc keeps the pages it frees for
//! reuse and returns them to the system only when an allocation or free on the same thread
//! comes after its purge delay; a shard that has just closed thousands of connections and then
//! sits idle would keep them. After a large drop in sessions, the shard asks mimalloc to return
//! what its thread no longer uses.

/// Sessions that must have closed since the last peak before memory is given back: a mass
/// disconnect, not ordinary churn (which reuses the pages at once).
pub const DROP_TO_COLLECT: usize = 1000;

/// Watches a shard's session count, once a second.
#[derive(Debug, Default)]
pub struct GiveBack {
    /// The most sessions seen since memory was last given back.
    peak: usize,
}

impl GiveBack {
    /// Records the session count; true when memory should be given back now.
    pub fn observe(&mut self, sessions: usize) -> bool {
        self.peak = self.peak.max(sessions);
        if self.peak - sessions < DROP_TO_COLLECT {
            return false;
        }
        self.peak = sessions;
        true
    }
}

/// Returns to the system the memory this thread's heap has freed.
pub fn give_back() {
    // SAFETY: mi_collect takes no pointers and has no preconditions: it purges the calling
    // thread's heap (and abandoned pages), whichever allocator the process uses for Rust.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_given_back_after_a_mass_disconnect_only() {
        let mut watch = GiveBack::default();
        assert!(!watch.observe(5000));
        assert!(!watch.observe(4100), "900 fewer is churn");
        assert!(watch.observe(4000), "1000 below the peak");
        assert!(!watch.observe(3500), "counted from the last give-back");
        assert!(!watch.observe(9000));
        assert!(watch.observe(0));
        // Giving back is safe on any thread, and twice.
        give_back();
        give_back();
    }
}
