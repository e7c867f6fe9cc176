//! Group commit: the records of the pushes that reach a shard while its previous write is in
//! flight, written together as one row of `pending`.
//!
//! A row holds either one record (as an earlier version wrote them, recognised by its first
//! byte, the record's version) or a group: [`MARKER`], then per record its length (`u32`
//! little-endian) and its bytes. A group row holds at most [`crate::schema::CHUNK_BYTES`]; a
//! commit with more writes more rows, in one transaction. The shard's own record of the billable
//! operations it counted (its rows written included, so that the count is durable with them) is
//! framed with [`OWN`] set in its length, so that it is folded but not taken for a push.

use crate::schema::CHUNK_BYTES;

/// The first byte of a group row. Record versions are small numbers, so no record starts with
/// it.
pub const MARKER: u8 = 0xF7;

/// Bytes a record adds to a group row besides itself.
pub const FRAME_BYTES: usize = 4;

/// Set in a frame's length for the shard's own record (records are far below 2 GB).
pub const OWN: u32 = 1 << 31;

/// What a row of `pending` holds.
#[derive(Debug, Default, PartialEq)]
pub struct Entries<'a> {
    /// The pushes' records, in order.
    pub pushes: Vec<&'a [u8]>,
    /// The shard's own records (billable operations).
    pub own: Vec<&'a [u8]>,
}

/// Group rows being built: records are appended to the last one until it would pass
/// [`CHUNK_BYTES`].
#[derive(Debug, Default)]
pub struct Rows {
    rows: Vec<Vec<u8>>,
    records: usize,
}

impl Rows {
    /// Appends a push's `record`.
    pub fn push(&mut self, record: &[u8]) {
        self.frame(record, 0);
        self.records += 1;
    }

    /// Appends the shard's own record.
    pub fn push_own(&mut self, record: &[u8]) {
        self.frame(record, OWN);
    }

    /// Whether appending `len` bytes would start a row.
    pub fn starts_row(&self, len: usize) -> bool {
        self.rows
            .last()
            .is_none_or(|row| row.len() + FRAME_BYTES + len > CHUNK_BYTES)
    }

    fn frame(&mut self, record: &[u8], flag: u32) {
        if self.starts_row(record.len()) {
            self.rows
                .push(Vec::with_capacity(1 + FRAME_BYTES + record.len()));
        }
        let row = self.rows.last_mut().expect("a row was just made");
        if row.is_empty() {
            row.push(MARKER);
        }
        row.extend_from_slice(&(record.len() as u32 | flag).to_le_bytes());
        row.extend_from_slice(record);
    }

    /// Pushes' records appended.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The rows, each to be written as one row of `pending`.
    pub fn rows(&self) -> &[Vec<u8>] {
        &self.rows
    }
}

/// The records a row of `pending` holds, in order; `None` when a group row is cut short.
pub fn entries(row: &[u8]) -> Option<Entries<'_>> {
    let mut out = Entries::default();
    let Some((&MARKER, mut rest)) = row.split_first() else {
        // A row of one record, as an earlier version wrote them.
        out.pushes.push(row);
        return Some(out);
    };
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<FRAME_BYTES>()?;
        let len = u32::from_le_bytes(*len);
        let (own, len) = (len & OWN != 0, (len & !OWN) as usize);
        if tail.len() < len {
            return None;
        }
        let (record, tail) = tail.split_at(len);
        if own {
            out.own.push(record);
        } else {
            out.pushes.push(record);
        }
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
        rows.push_own(&[1, 9]);
        assert_eq!(rows.records(), 10);
        assert_eq!(rows.rows().len(), 1, "one row for the group");
        let back = entries(&rows.rows()[0]).expect("decodes");
        assert_eq!(
            back.pushes,
            all.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
        assert_eq!(back.own, vec![&[1u8, 9][..]]);
    }

    #[test]
    fn a_row_of_one_record_reads_as_itself() {
        let old = [1u8, 2, 3];
        let one = |r: &'static [u8]| Entries {
            pushes: vec![r],
            own: vec![],
        };
        assert_eq!(entries(&old), Some(one(&[1, 2, 3])));
        assert_eq!(entries(&[]), Some(one(&[])));
    }

    #[test]
    fn a_group_row_cut_short_does_not_read() {
        let mut rows = Rows::default();
        rows.push(&[1, 2, 3, 4, 5]);
        let row = &rows.rows()[0];
        for end in 2..row.len() {
            assert_eq!(entries(&row[..end]), None, "cut at {end}");
        }
        assert_eq!(entries(&[MARKER]), Some(Entries::default()));
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
        assert!(!rows.starts_row(CHUNK_BYTES / 3) && rows.starts_row(CHUNK_BYTES));
        assert!(rows.rows().iter().all(|r| r.len() <= CHUNK_BYTES));
        let n: usize = rows
            .rows()
            .iter()
            .map(|r| entries(r).expect("reads").pushes.len())
            .sum();
        assert_eq!(n, 7);
    }
}
