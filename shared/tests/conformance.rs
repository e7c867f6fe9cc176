//! The store conformance suite against the in-memory reference store.

use pum_shared::conformance::Harness;
use pum_shared::store::MemoryStore;

struct Memory;

impl Harness for Memory {
    type S = MemoryStore;
    async fn open(&mut self) -> MemoryStore {
        MemoryStore::new()
    }
    /// In-memory totals live as long as the store: "restarting" keeps the same instance.
    async fn reopen(&mut self, store: MemoryStore) -> MemoryStore {
        store
    }
}

mod memory_store {
    use super::*;
    pum_shared::store_conformance_tests!(Memory);
}
