//! A shard's tables and statements. Keys are chosen for what a write costs: Durable Objects bill
//! every row written, index and schema rows included.

/// The tables, created when a shard starts (a no-op when they exist). `pending` and `folded` have
/// plain integer keys: `AUTOINCREMENT` would write a `sqlite_sequence` row per insert, and a text
/// key an index row per write.
pub const SCHEMA: [&str; 5] = [
    PENDING_TABLE_IF_NEW,
    "CREATE TABLE IF NOT EXISTS totals (chunk INTEGER PRIMARY KEY, part TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS allowlists (fingerprint TEXT PRIMARY KEY, description TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS folded (id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, ids TEXT NOT NULL)",
];

const PENDING_TABLE_IF_NEW: &str =
    "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY, record BLOB NOT NULL)";

/// Appends one push's record.
pub const INSERT_PENDING: &str = "INSERT INTO pending (record) VALUES (?)";
/// Reads the records to fold, oldest first.
pub const SELECT_PENDING: &str = "SELECT record FROM pending ORDER BY id";
/// Empties `pending` once its records are folded (in the fold's transaction). Dropping and
/// recreating the table writes 2 rows (its schema entry), whereas `DELETE` writes one per deleted
/// row, that is one more per push (measured with `cursor.rowsWritten`, which is what Durable
/// Objects bill).
pub const RESET_PENDING: [&str; 2] = [
    "DROP TABLE pending",
    "CREATE TABLE pending (id INTEGER PRIMARY KEY, record BLOB NOT NULL)",
];
/// Counts records not folded yet.
pub const COUNT_PENDING: &str = "SELECT count(*) FROM pending";
/// The definition of the `pending` table as stored, to recognise one of an earlier version
/// (deltas as JSON text in a `delta` column).
pub const PENDING_DEFINITION: &str =
    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'pending'";
/// Reads the JSON deltas of an earlier version's `pending`.
pub const SELECT_PENDING_JSON: &str = "SELECT delta FROM pending ORDER BY id";

/// Reads the totals' parts in order.
pub const SELECT_TOTALS: &str = "SELECT part FROM totals ORDER BY chunk";
/// Writes one part of the totals.
pub const UPSERT_TOTALS: &str = "INSERT OR REPLACE INTO totals (chunk, part) VALUES (?, ?)";
/// Drops parts beyond the current number (should the totals ever shrink).
pub const TRIM_TOTALS: &str = "DELETE FROM totals WHERE chunk >= ?";

/// Reads the shard's name.
pub const SELECT_NAME: &str = "SELECT v FROM meta WHERE k = 'name'";
/// Records the shard's name.
pub const INSERT_NAME: &str = "INSERT OR REPLACE INTO meta (k, v) VALUES ('name', ?)";

/// Reads the allowlists, by fingerprint (16 hex digits: Durable Object SQL passes integers
/// through JavaScript numbers, which hold 53 bits).
pub const SELECT_ALLOWLISTS: &str =
    "SELECT fingerprint, description FROM allowlists ORDER BY fingerprint";
/// Stores an allowlist once.
pub const INSERT_ALLOWLIST: &str =
    "INSERT OR IGNORE INTO allowlists (fingerprint, description) VALUES (?, ?)";

/// Reads the batch ids folded within the window: one row per fold (and per [`CHUNK_BYTES`] of
/// ids), the ids separated by newlines.
pub const SELECT_FOLDED: &str = "SELECT at_ms, ids FROM folded ORDER BY id";
/// Records the batch ids one fold applied.
pub const INSERT_FOLDED: &str = "INSERT INTO folded (at_ms, ids) VALUES (?, ?)";
/// When the newest fold recorded its batch ids.
pub const NEWEST_FOLDED: &str = "SELECT max(at_ms) FROM folded";
/// Forgets the ids of folds older than the window.
pub const SWEEP_FOLDED: &str = "DELETE FROM folded WHERE at_ms < ?";

/// Largest text in one row, in bytes (Durable Object SQLite rows hold at most 2 MB): a part of
/// the totals, or of one fold's batch ids.
pub const CHUNK_BYTES: usize = 1_000_000;

/// Cuts `text` into parts of at most `max` bytes, at character boundaries.
pub fn chunks(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (part, tail) = rest.split_at(end);
        out.push(part);
        rest = tail;
    }
    out
}

/// Joins batch ids into newline-separated texts of at most `max` bytes each (ids hold no
/// newline).
pub fn join_ids<'a>(ids: impl IntoIterator<Item = &'a str>, max: usize) -> Vec<String> {
    let mut out = vec![String::new()];
    for id in ids {
        let last = out.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + id.len() > max {
            out.push(String::new());
        }
        let last = out.last_mut().expect("never empty");
        if !last.is_empty() {
            last.push('\n');
        }
        last.push_str(id);
    }
    out.retain(|s| !s.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_is_recreated_as_created() {
        assert_eq!(
            PENDING_TABLE_IF_NEW.replace("IF NOT EXISTS ", ""),
            RESET_PENDING[1],
            "the table the fold recreates must be the one the schema creates"
        );
    }

    #[test]
    fn chunks_cut_at_character_boundaries() {
        let text = "abc ünïcødé ".repeat(10);
        for max in [5, 7, 64, CHUNK_BYTES] {
            let parts = chunks(&text, max);
            assert!(parts.iter().all(|p| p.len() <= max));
            assert_eq!(parts.concat(), text);
        }
        assert!(chunks("", 10).is_empty());
    }

    #[test]
    fn ids_join_into_bounded_texts() {
        let ids = ["a".repeat(16), "b".repeat(16), "c".repeat(16)];
        let joined = join_ids(ids.iter().map(String::as_str), 40);
        assert_eq!(
            joined,
            vec![format!("{}\n{}", ids[0], ids[1]), ids[2].clone()]
        );
        assert_eq!(
            join_ids(ids.iter().map(String::as_str), CHUNK_BYTES).len(),
            1
        );
        assert!(join_ids([], 40).is_empty());
    }
}
