//! The store conformance suite against the embedded store.

use pum_embedded::EmbeddedStore;
use pum_shared::conformance::Harness;

struct Embedded(tempfile::TempDir);

impl Harness for Embedded {
    type S = EmbeddedStore;
    async fn open(&mut self) -> EmbeddedStore {
        EmbeddedStore::open(self.0.path()).expect("opens").0
    }
    async fn reopen(&mut self, store: EmbeddedStore) -> EmbeddedStore {
        // Dropped without close(): like a killed process, only what merge wrote is there.
        drop(store);
        EmbeddedStore::open(self.0.path()).expect("reopens").0
    }
}

fn embedded() -> Embedded {
    Embedded(tempfile::tempdir().expect("tempdir"))
}

mod embedded_store {
    use super::*;
    pum_shared::store_conformance_tests!(embedded());
}
