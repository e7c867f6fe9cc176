//! Which batch ids the store has applied, and which of those are not written yet.
//!
//! A push is merged into memory when its record is queued, before the group commit writes it,
//! and so is its batch id: a concurrent duplicate finds it there and does not apply again. But
//! the write may still fail (and the push be taken out again), so a duplicate may be answered
//! [`pum_shared::Merged::Replayed`] only once the original's record is written: until then the
//! id is pending, with the group-commit batch that writes it, and the duplicate waits for that
//! batch. The ids of a batch whose write failed are forgotten, so that the client's retry
//! applies.

use std::collections::HashMap;
use std::hash::BuildHasher;

use pum_shared::batch::Window;

/// The batch ids applied within the window, and the group-commit batch of those not written.
#[derive(Default)]
pub(crate) struct Seen {
    /// Every id applied in memory within the window, written or not.
    window: Window,
    /// The ids not written yet, by a hash of the id, with the batch that writes them. A hash
    /// shared by two ids only makes a duplicate wait for a batch that is not its original's,
    /// after which it looks again (see [`crate::EmbeddedStore`]'s merge).
    pending: HashMap<u64, u64, foldhash::fast::RandomState>,
    /// Hashes ids into `pending`'s keys; seeded per process, as ids come from clients.
    keys: foldhash::fast::RandomState,
}

/// What a push with a batch id finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Not applied within the window: apply it.
    New,
    /// Applied, and its record is written: a replay.
    Written,
    /// Applied, and its record is in this group-commit batch, not written yet.
    Pending(u64),
}

impl Seen {
    /// Starts from the ids of the snapshot and the logs, all written.
    pub(crate) fn new(window: Window) -> Self {
        Seen {
            window,
            ..Seen::default()
        }
    }

    fn key(&self, id: &str) -> u64 {
        self.keys.hash_one(id)
    }

    /// What `id` is.
    pub(crate) fn check(&self, id: &str) -> Check {
        if !self.window.contains(id) {
            return Check::New;
        }
        match self.pending.get(&self.key(id)) {
            Some(batch) => Check::Pending(*batch),
            None => Check::Written,
        }
    }

    /// Records `id` as applied at `at_ms`, to be written in `batch`.
    pub(crate) fn applied(&mut self, id: &str, at_ms: u64, batch: u64) {
        self.window.insert(id, at_ms);
        let key = self.key(id);
        self.pending.insert(key, batch);
    }

    /// Forgets `id`, whose record (in a failed batch) was not written.
    pub(crate) fn forget(&mut self, id: &str) {
        self.window.remove(id);
    }

    /// Batch `batch` is done (written, or failed and its ids forgotten): its ids are pending no
    /// more.
    pub(crate) fn done(&mut self, batch: u64) {
        if !self.pending.is_empty() {
            self.pending.retain(|_, b| *b > batch);
        }
    }

    /// The ids applied within the window, written or not.
    pub(crate) fn window(&self) -> &Window {
        &self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_790_000_000_000;

    #[test]
    fn an_id_is_pending_until_its_batch_is_written() {
        let mut seen = Seen::default();
        assert_eq!(seen.check("batch-a-00000001"), Check::New);
        seen.applied("batch-a-00000001", T, 4);
        seen.applied("batch-b-00000001", T, 5);
        assert_eq!(seen.check("batch-a-00000001"), Check::Pending(4));
        seen.done(4);
        assert_eq!(seen.check("batch-a-00000001"), Check::Written);
        assert_eq!(seen.check("batch-b-00000001"), Check::Pending(5));
    }

    #[test]
    fn an_id_of_a_failed_batch_is_new_again() {
        let mut seen = Seen::default();
        seen.applied("batch-a-00000001", T, 7);
        seen.forget("batch-a-00000001");
        seen.done(7);
        assert_eq!(seen.check("batch-a-00000001"), Check::New);
    }

    #[test]
    fn ids_of_the_snapshot_and_logs_are_written() {
        let mut window = Window::new();
        window.insert("batch-a-00000001", T);
        let seen = Seen::new(window);
        assert_eq!(seen.check("batch-a-00000001"), Check::Written);
    }
}
