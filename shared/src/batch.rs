//! Batch ids: how a push is applied exactly once although the client may send it twice.
//!
//! The browser client names every batch it sends with a random id of at least 96 bits and sends
//! it in the URL, `POST /record?batch=ID` (so that `navigator.sendBeacon`, which cannot set
//! headers, can carry it), and reuses the id when it retries that batch. An id is 16 to 64
//! characters of `A-Za-z0-9_-` ([`BatchId::parse`]); anything else is refused
//! ([`crate::Reason::InvalidBatchId`]). Every store applies an id at most once within
//! [`WINDOW_MS`] (an hour) of its first arrival, across restarts and concurrent duplicates, and a
//! replay gets the same answer as the original (the same body gives the same answer). Pushes
//! without an id, from clients of the original aggregator, are applied as they come.
//!
//! [`Window`] is the in-memory set of ids seen within the window, for stores that keep their
//! state in one process (the memory and embedded stores); the Durable Object and DynamoDB stores
//! keep theirs in their own storage.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};

/// How long a store remembers a batch id after it was applied: one hour. A client retries a
/// batch within seconds; an hour also covers a page restored from the back/forward cache or a
/// laptop woken from sleep that sends its queued batch again.
pub const WINDOW_MS: u64 = 60 * 60 * 1000;

/// Shortest batch id: 16 characters of the 64-letter alphabet are 96 bits.
pub const MIN_LEN: usize = 16;
/// Longest batch id.
pub const MAX_LEN: usize = 64;

/// A valid batch id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(String);

impl BatchId {
    /// Checks `text`: 16 to 64 characters of `A-Za-z0-9_-`.
    pub fn parse(text: &str) -> Option<BatchId> {
        let ok = (MIN_LEN..=MAX_LEN).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        ok.then(|| BatchId(text.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads the `batch` parameter of a query string (`a=1&batch=ID`): `Ok(None)` when there is
    /// none, `Err(())` when it is there but not a valid id (or given twice).
    #[allow(clippy::result_unit_err)]
    pub fn from_query(query: Option<&str>) -> Result<Option<BatchId>, ()> {
        let mut found = None;
        for pair in query.unwrap_or("").split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != "batch" {
                continue;
            }
            if found.is_some() {
                return Err(());
            }
            // Valid ids need no percent-decoding: anything encoded is not one.
            found = Some(BatchId::parse(value).ok_or(())?);
        }
        Ok(found)
    }
}

impl std::fmt::Display for BatchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ids remembered per slot of the window: the window is kept as [`SLOTS`] slots of
/// `WINDOW_MS / (SLOTS - 1)` each, so an id is remembered for at least [`WINDOW_MS`] and at most
/// one slot longer.
const SLOTS: u64 = 7;

/// Version of [`Window::export`]'s form.
const EXPORT_VERSION: u8 = 1;

/// The text whose hash an export carries, so that a build that hashes ids otherwise knows the
/// export's hashes are not its own.
const EXPORT_CHECK: &str = "pum batch id window";

/// An export that [`Window::restore`] cannot read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the batch id window is unreadable: {0}")]
pub struct RestoreError(&'static str);

/// The batch ids applied within the last [`WINDOW_MS`], in memory.
///
/// Each id is kept as a 128-bit hash (16 bytes, about 36 MB for the 3.6 million ids of an hour
/// at 1,000 pushes a second): two different ids are taken for one with a probability below
/// 10^-26 per pair. A store that persists ids keeps the ids themselves and rebuilds this from
/// them.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Newest slot last: (slot number, hashes of the ids first seen in it).
    slots: VecDeque<(u64, HashSet<u128, foldhash::fast::FixedState>)>,
}

impl Window {
    /// An empty window.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot_of(at_ms: u64) -> u64 {
        at_ms / Self::slot_ms()
    }

    fn hash(id: &str) -> u128 {
        let half = |seed: u64| {
            let mut h = foldhash::quality::FixedState::with_seed(seed).build_hasher();
            h.write(id.as_bytes());
            h.finish()
        };
        (u128::from(half(0x9e37_79b9_7f4a_7c15)) << 64) | u128::from(half(0x6a09_e667_f3bc_c909))
    }

    /// Whether `id` was applied within the window.
    pub fn contains(&self, id: &str) -> bool {
        let h = Self::hash(id);
        self.slots.iter().any(|(_, set)| set.contains(&h))
    }

    /// Records `id` as applied at `at_ms` (ms since the epoch), and forgets ids older than the
    /// window. Returns `false` if it was already there.
    pub fn insert(&mut self, id: &str, at_ms: u64) -> bool {
        let h = Self::hash(id);
        if self.slots.iter().any(|(_, set)| set.contains(&h)) {
            return false;
        }
        self.slot_at(at_ms).insert(h);
        true
    }

    /// The set of the slot of `at_ms`, made if needed, once ids older than the window are
    /// forgotten.
    fn slot_at(&mut self, at_ms: u64) -> &mut HashSet<u128, foldhash::fast::FixedState> {
        let slot = Self::slot_of(at_ms);
        while self.slots.front().is_some_and(|(s, _)| *s + SLOTS <= slot) {
            self.slots.pop_front();
        }
        // Ids arrive in time order, near enough; one that arrives late joins the newest slot,
        // which keeps it longer, never shorter.
        if self.slots.back().is_none_or(|(s, _)| *s < slot) {
            self.slots.push_back((slot, HashSet::default()));
        }
        let (_, set) = self.slots.back_mut().expect("a slot was just made");
        set
    }

    /// Forgets `id`: a store whose write of the push that applied it failed takes it out again,
    /// so that the client's retry applies. Returns whether it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let h = Self::hash(id);
        self.slots.iter_mut().any(|(_, set)| set.remove(&h))
    }

    /// Appends the window to `out`, for a store that keeps it across restarts
    /// ([`Window::restore`] reads it back): a version byte (1) and the hash of a fixed text,
    /// then per slot, oldest first, its start (ms since the epoch, `u64`), its number of ids
    /// (`u64`) and their hashes (`u128` each), all little-endian.
    pub fn export(&self, out: &mut Vec<u8>) {
        out.reserve(17 + self.slots.len() * 16 + self.len() * 16);
        out.push(EXPORT_VERSION);
        out.extend_from_slice(&Self::hash(EXPORT_CHECK).to_le_bytes());
        for (slot, set) in &self.slots {
            out.extend_from_slice(&(slot * Self::slot_ms()).to_le_bytes());
            out.extend_from_slice(&(set.len() as u64).to_le_bytes());
            for h in set {
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }

    /// Reads what [`Window::export`] wrote. `Ok(None)` if another build wrote it whose hash
    /// function differs (a new release of the hasher): its hashes would match no id, so the ids
    /// it held are forgotten (a retry of one of them within the hour then applies again).
    pub fn restore(bytes: &[u8]) -> Result<Option<Window>, RestoreError> {
        const SHORT: RestoreError = RestoreError("it is cut short");
        let (&[version], rest) = bytes.split_first_chunk::<1>().ok_or(SHORT)?;
        if version != EXPORT_VERSION {
            return Err(RestoreError("its version is not one this build reads"));
        }
        let (check, mut rest) = rest.split_first_chunk::<16>().ok_or(SHORT)?;
        if u128::from_le_bytes(*check) != Self::hash(EXPORT_CHECK) {
            return Ok(None);
        }
        let mut window = Window::new();
        while !rest.is_empty() {
            let (start, tail) = rest.split_first_chunk::<8>().ok_or(SHORT)?;
            let (count, tail) = tail.split_first_chunk::<8>().ok_or(SHORT)?;
            let slot = Self::slot_of(u64::from_le_bytes(*start));
            if window.slots.back().is_some_and(|(s, _)| *s >= slot) {
                return Err(RestoreError("its slots are out of order"));
            }
            let len = usize::try_from(u64::from_le_bytes(*count))
                .ok()
                .and_then(|n| n.checked_mul(16))
                .ok_or(SHORT)?;
            let (hashes, tail) = tail.split_at_checked(len).ok_or(SHORT)?;
            let set = hashes
                .as_chunks::<16>()
                .0
                .iter()
                .map(|h| u128::from_le_bytes(*h))
                .collect();
            window.slots.push_back((slot, set));
            rest = tail;
        }
        Ok(Some(window))
    }

    fn slot_ms() -> u64 {
        WINDOW_MS / (SLOTS - 1)
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.slots.iter().map(|(_, s)| s.len()).sum()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_to_64_url_safe_characters() {
        assert!(BatchId::parse("abcdefghijklmnop").is_some());
        assert!(BatchId::parse(&"A-_9".repeat(16)).is_some());
        assert!(BatchId::parse("abcdefghijklmno").is_none(), "15 characters");
        assert!(BatchId::parse(&"a".repeat(65)).is_none());
        assert!(BatchId::parse("abcdefghijklmno+").is_none());
        assert!(BatchId::parse("abcdefghijklmno%").is_none());
        assert!(BatchId::parse("abcdefghijklmnoé").is_none());
    }

    #[test]
    fn the_query_parameter() {
        let id = "0123456789abcdef";
        assert_eq!(BatchId::from_query(None), Ok(None));
        assert_eq!(BatchId::from_query(Some("x=1")), Ok(None));
        assert_eq!(
            BatchId::from_query(Some(&format!("x=1&batch={id}"))),
            Ok(BatchId::parse(id))
        );
        assert_eq!(BatchId::from_query(Some("batch=short")), Err(()));
        assert_eq!(BatchId::from_query(Some("batch")), Err(()));
        assert_eq!(
            BatchId::from_query(Some(&format!("batch={id}&batch={id}"))),
            Err(())
        );
    }

    #[test]
    fn the_window_remembers_an_hour_and_forgets_after() {
        let mut w = Window::new();
        let t0 = 1_700_000_000_000;
        assert!(w.insert("first-batch-0001", t0));
        assert!(!w.insert("first-batch-0001", t0 + 1));
        assert!(w.contains("first-batch-0001"));
        // Still there just under an hour later, whatever else arrives.
        for i in 0..100u64 {
            assert!(w.insert(&format!("batch-{i:011}"), t0 + i * 36_000));
        }
        assert!(w.contains("first-batch-0001"));
        assert!(!w.insert("first-batch-0001", t0 + WINDOW_MS - 1));
        // Gone once the window (and its last slot) has passed.
        assert!(w.insert("later-batch-0001", t0 + WINDOW_MS * 3));
        assert!(!w.contains("first-batch-0001"));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_removed_id_applies_again() {
        let mut w = Window::new();
        let t0 = 1_700_000_000_000;
        assert!(w.insert("removed-batch-001", t0));
        assert!(w.insert("kept-batch-00001", t0 + 1));
        assert!(w.remove("removed-batch-001"));
        assert!(!w.remove("removed-batch-001"), "removed once");
        assert!(!w.contains("removed-batch-001"));
        assert!(w.contains("kept-batch-00001"));
        assert!(w.insert("removed-batch-001", t0 + 2));
    }

    #[test]
    fn an_export_restores_the_same_window() {
        let mut w = Window::new();
        let t0 = 1_700_000_000_000;
        for i in 0..50u64 {
            w.insert(&format!("batch-{i:011}"), t0 + i * 60_000);
        }
        let mut bytes = Vec::new();
        w.export(&mut bytes);
        let mut back = Window::restore(&bytes)
            .expect("reads")
            .expect("same hasher");
        assert_eq!(back.len(), 50);
        for i in 0..50u64 {
            assert!(back.contains(&format!("batch-{i:011}")), "{i}");
        }
        assert!(!back.contains("batch-00000000050"));
        // The slots keep their times: the oldest ids go when the window has passed them.
        back.insert("later-batch-0001", t0 + 49 * 60_000 + WINDOW_MS);
        assert!(!back.contains("batch-00000000000"));
        assert!(back.contains("batch-00000000049"));
        // An empty window round-trips too.
        let mut empty = Vec::new();
        Window::new().export(&mut empty);
        assert!(
            Window::restore(&empty)
                .expect("reads")
                .expect("same hasher")
                .is_empty()
        );
    }

    #[test]
    fn a_damaged_export_is_refused_and_another_hasher_is_forgotten() {
        let mut w = Window::new();
        w.insert("batch-0000000001", 1_700_000_000_000);
        w.insert("batch-0000000002", 1_700_000_000_000 + WINDOW_MS / 2);
        let mut bytes = Vec::new();
        w.export(&mut bytes);
        assert_eq!(bytes.len(), 17 + 2 * 32, "two slots of one id each");
        for cut in 0..bytes.len() {
            // Cut after the header or after the first slot, it is a shorter window.
            if cut != 17 && cut != 17 + 32 {
                assert!(Window::restore(&bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut version = bytes.clone();
        version[0] = 2;
        assert!(Window::restore(&version).is_err());
        let mut check = bytes.clone();
        check[1] ^= 1;
        assert!(matches!(Window::restore(&check), Ok(None)));
        // Two slots, swapped: out of order.
        let (head, slots) = bytes.split_at(17);
        let (first, second) = slots.split_at(32);
        let swapped = [head, second, first].concat();
        assert!(Window::restore(&swapped).is_err());
    }
}
