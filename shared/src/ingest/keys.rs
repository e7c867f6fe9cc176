//! The series keys a thread made lately, by the addresses of their shared strings.
//!
//! A push's series are mostly the ones pushed before, named by the allowlist's shared strings:
//! looking the key up by those addresses costs less than sorting, hashing and allocating it
//! again, and hands out the same key the store's totals already hold (compared by pointer). An
//! address stands for one string as long as the cached key holds that string, which it does
//! while the entry lives, so an entry can never name another string. The cache is per thread
//! (no lock) and direct-mapped: [`SLOTS`] entries, a new key taking the place of the one
//! in its slot.

use std::cell::RefCell;
use std::sync::Arc;

use crate::aggregate::SeriesKey;

/// Entries per thread.
pub(crate) const SLOTS: usize = 1024;

/// Label pairs a cached key may have; keys with more are made every time.
const MAX_PAIRS: usize = 2;

/// The metric's address, then each label's name and value addresses in the push's order,
/// then zeros.
type Addresses = [usize; 1 + 2 * MAX_PAIRS];

thread_local! {
    static KEYS: RefCell<Vec<Option<(Addresses, SeriesKey)>>> = const {
        RefCell::new(Vec::new())
    };
}

fn address(s: &Arc<str>) -> usize {
    Arc::as_ptr(s).cast::<u8>() as usize
}

/// The key of `metric` with `pairs`, from the cache or from `make` (whose error is passed
/// on and not cached).
pub(crate) fn get_or_make<E>(
    metric: &Arc<str>,
    pairs: &[(&Arc<str>, &Arc<str>)],
    make: impl FnOnce() -> Result<SeriesKey, E>,
) -> Result<SeriesKey, E> {
    if pairs.len() > MAX_PAIRS {
        return make();
    }
    let mut id: Addresses = [0; 1 + 2 * MAX_PAIRS];
    id[0] = address(metric);
    for (i, (k, v)) in pairs.iter().enumerate() {
        id[1 + 2 * i] = address(k);
        id[2 + 2 * i] = address(v);
    }
    // Fibonacci hashing of the addresses picks the slot.
    let mixed = id.iter().fold(0u64, |h, a| {
        (h ^ *a as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    });
    let slot = (mixed >> (64 - SLOTS.trailing_zeros())) as usize;
    KEYS.with(|cache| {
        if let Some(Some((cached, key))) = cache.borrow().get(slot)
            && *cached == id
        {
            return Ok(key.clone());
        }
        let key = make()?;
        let mut cache = cache.borrow_mut();
        if cache.is_empty() {
            cache.resize(SLOTS, None);
        }
        cache[slot] = Some((id, key.clone()));
        Ok(key)
    })
}
