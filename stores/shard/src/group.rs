//! Group commit: the records of the pushes that reach a shard while its previous write is in
//! flight, written together as one row of `pending`.
//!
//! A row holds either one record (as an earlier version wrote them, recognised by its first
//! byte, the record's version) or a group: [`MARKER`], then per record its length (`u32`
//! little-endian) and its bytes. A group row holds at most [`crate::schema::CHUNK_BYTES`]; a
//! commit with more writes more rows, in one transaction.

use crate::schema::CHUNK_BYTES;

/// The first byte of a group row. Record versions are small numbers, so no record starts with
/// it.
pub const MARKER: u8 = 0xF7;

/// Bytes a record adds to a group row besides itself.
pub const FRAME_BYTES: usize = 4;

/// Group rows being built: records are appended to the last one until it would pass
/// [`CHUNK_BYTES`].
#[derive(Debug, Default)]
pub struct Rows {
    rows: Vec<Vec<u8>>,
    records: usize,
}

impl Rows {
    /// Appends `record`.
    pub fn push(&mut self, record: &[u8]) {
        let fits = self
            .rows
            .last()
            .is_some_and(|row| row.len() + FRAME_BYTES + record.len() <= CHUNK_BYTES);
        if !fits {
            self.rows
                .push(Vec::with_capacity(1 + FRAME_BYTES + record.len()));
        }
        let row = self.rows.last_mut().expect("a row was just made");
        if row.is_empty() {
            row.push(MARKER);
        }
        row.extend_from_slice(&(record.len() as u32).to_le_bytes());
        row.extend_from_slice(record);
        self.records += 1;
    }

    /// Records appended.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The rows, each to be written as one row of `pending`.
    pub fn rows(&self) -> &[Vec<u8>] {
        &self.rows
    }
}

/// The records a row of `pending` holds, in order; `None` when a group row is cut short.
pub fn records(row: &[u8]) -> Option<Vec<&[u8]>> {
    let Some((&MARKER, mut rest)) = row.split_first() else {
        // A row of one record, as an earlier version wrote them.
        return Some(vec![row]);
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<FRAME_BYTES>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        let (record, tail) = tail.split_at(len);
        out.push(record);
        rest = tail;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_one_row() {
        let all: Vec<Vec<u8>> = (0..10u8).map(|i| vec![1, i, i, i]).collect();
        let mut rows = Rows::default();
        for r in &all {
            rows.push(r);
        }
        assert_eq!(rows.records(), 10);
        assert_eq!(rows.rows().len(), 1, "one row for the group");
        let back = records(&rows.rows()[0]).expect("decodes");
        assert_eq!(back, all.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn a_row_of_one_record_reads_as_itself() {
        let old = [1u8, 2, 3];
        assert_eq!(records(&old), Some(vec![&old[..]]));
        assert_eq!(records(&[]), Some(vec![&[][..]]));
    }

    #[test]
    fn a_group_row_cut_short_does_not_read() {
        let mut rows = Rows::default();
        rows.push(&[1, 2, 3, 4, 5]);
        let row = &rows.rows()[0];
        for end in 2..row.len() {
            assert_eq!(records(&row[..end]), None, "cut at {end}");
        }
        assert_eq!(records(&[MARKER]), Some(vec![]));
    }

    #[test]
    fn a_large_group_spreads_over_rows_of_at_most_a_chunk() {
        let big = vec![1u8; CHUNK_BYTES / 3];
        let mut rows = Rows::default();
        for _ in 0..7 {
            rows.push(&big);
        }
        assert_eq!(rows.records(), 7);
        assert_eq!(rows.rows().len(), 4, "two records a row");
        assert!(rows.rows().iter().all(|r| r.len() <= CHUNK_BYTES));
        let n: usize = rows
            .rows()
            .iter()
            .map(|r| records(r).expect("reads").len())
            .sum();
        assert_eq!(n, 7);
    }
}
