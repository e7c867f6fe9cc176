//! The snapshot file, `snapshot.json`: what compaction folds the logs into.
//!
//! `{"generation": G, "window": "<hex>", "totals": <snapshot>}`: the totals of every record in
//! the logs below generation `G` (in the portable snapshot format, [`Snapshot`]), and the batch
//! ids those records applied within the window ([`Window::export`], hex-encoded; absent in
//! snapshots written before batch ids, which is an empty window). Written to a temporary file,
//! fsynced, then renamed over the old one and the directory fsynced: a crash leaves the old
//! snapshot or the new one, never a mix.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use pum_shared::Aggregate;
use pum_shared::aggregate::Snapshot;
use pum_shared::batch::Window;
use serde::Deserialize;

use crate::{OpenError, io_err, sync_dir};

/// The snapshot's file name.
pub(crate) const FILE: &str = "snapshot.json";

/// What a snapshot holds.
pub(crate) struct Loaded {
    /// The first log generation the snapshot does not hold.
    pub(crate) generation: u64,
    pub(crate) totals: Aggregate,
    pub(crate) window: Window,
}

#[derive(Deserialize)]
struct SnapshotIn<'a> {
    generation: u64,
    /// Hex has no escapes: borrowed from the text, not copied.
    #[serde(default, borrow)]
    window: Option<&'a str>,
    totals: Snapshot,
}

/// Reads the snapshot of `dir`; an empty one at generation 0 if there is none.
pub(crate) fn read(dir: &Path) -> Result<Loaded, OpenError> {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                generation: 0,
                totals: Aggregate::new(),
                window: Window::new(),
            });
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let corrupt = |reason: String| OpenError::CorruptSnapshot {
        path: path.clone(),
        reason,
    };
    let snap: SnapshotIn<'_> = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    let totals = Aggregate::try_from(snap.totals).map_err(|e| corrupt(e.to_string()))?;
    let window = match snap.window {
        None => Window::new(),
        Some(hex) => {
            let bytes = from_hex(hex).ok_or_else(|| corrupt("its window is not hex".into()))?;
            // A window hashed by another build is forgotten (see `Window::restore`).
            Window::restore(&bytes)
                .map_err(|e| corrupt(e.to_string()))?
                .unwrap_or_default()
        }
    };
    Ok(Loaded {
        generation: snap.generation,
        totals,
        window,
    })
}

/// Writes the snapshot of `dir` durably (see the module docs).
pub(crate) fn write(
    dir: &Path,
    generation: u64,
    totals: &Aggregate,
    window: &Window,
) -> io::Result<()> {
    let tmp = dir.join("snapshot.json.tmp");
    let mut out = BufWriter::new(File::create(&tmp)?);
    write!(out, r#"{{"generation":{generation},"window":""#)?;
    let mut exported = Vec::new();
    window.export(&mut exported);
    write_hex(&mut out, &exported)?;
    drop(exported);
    out.write_all(br#"","totals":"#)?;
    serde_json::to_writer(&mut out, &Snapshot::from(totals))?;
    out.write_all(b"}")?;
    let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(FILE))?;
    sync_dir(dir)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let mut chunk = Vec::with_capacity(8192);
    for part in bytes.chunks(4096) {
        chunk.clear();
        for b in part {
            chunk.push(HEX[usize::from(b >> 4)]);
            chunk.push(HEX[usize::from(b & 15)]);
        }
        out.write_all(&chunk)?;
    }
    Ok(())
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let (pairs, rest) = text.as_bytes().as_chunks::<2>();
    if !rest.is_empty() {
        return None;
    }
    pairs
        .iter()
        .map(|[hi, lo]| Some(digit(*hi)? << 4 | digit(*lo)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pum_shared::SeriesKey;

    #[test]
    fn a_snapshot_reads_back_with_its_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut totals = Aggregate::new();
        totals.add_counter(SeriesKey::new("t_total", &[("k", "v")]), 42);
        let mut window = Window::new();
        window.insert("snapshot-batch-01", 1_790_000_000_000);
        write(dir.path(), 3, &totals, &window).expect("writes");
        let back = read(dir.path()).expect("reads");
        assert_eq!(back.generation, 3);
        assert_eq!(back.totals, totals);
        assert!(back.window.contains("snapshot-batch-01"));
        assert_eq!(back.window.len(), 1);
        assert!(!dir.path().join("snapshot.json.tmp").exists());
    }

    #[test]
    fn a_snapshot_without_a_window_reads_as_an_empty_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = r#"{"generation": 2, "totals": {"v": 1, "series": []}}"#;
        fs::write(dir.path().join(FILE), text).expect("seed");
        let back = read(dir.path()).expect("reads");
        assert_eq!(back.generation, 2);
        assert!(back.totals.is_empty() && back.window.is_empty());
    }

    #[test]
    fn a_damaged_window_stops_start_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        for window in ["0", "zz", "00"] {
            let text =
                format!(r#"{{"generation":1,"window":"{window}","totals":{{"v":1,"series":[]}}}}"#);
            fs::write(dir.path().join(FILE), text).expect("seed");
            let err = read(dir.path()).err().expect("refused");
            assert!(matches!(err, OpenError::CorruptSnapshot { .. }), "{err}");
        }
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut text = Vec::new();
        write_hex(&mut text, &bytes).expect("writes");
        let text = String::from_utf8(text).expect("ascii");
        assert_eq!(&text[..8], "00010203");
        assert_eq!(from_hex(&text), Some(bytes));
        assert_eq!(from_hex("0g"), None);
        assert_eq!(from_hex("ABCD"), None, "lower case only, as written");
    }
}
