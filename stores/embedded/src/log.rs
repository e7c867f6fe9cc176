//! The log files: `wal-<generation>.log`, each a sequence of framed records
//! `[len u32 LE][crc32 u32 LE][payload]`, the payload being one push's delta record
//! ([`pum_shared::record`]). Here: naming and listing the files, framing, appending whole
//! records or nothing, and reading records back up to a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{OpenError, io_err};

/// Bytes of a frame's header: length and CRC.
pub(crate) const FRAME_BYTES: usize = 8;

/// Largest record accepted on replay (a push is at most 64 KiB of JSON; its record is smaller).
const MAX_RECORD_BYTES: u32 = 16 * 1024 * 1024;

/// The log of `generation` in `dir`.
pub(crate) fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation:020}.log"))
}

/// The generations of the logs in `dir`, oldest first.
pub(crate) fn list(dir: &Path) -> Result<Vec<u64>, OpenError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Frames the payload that `write` appends as a record at the end of `out`. If `write` fails,
/// `out` is left as it was.
pub(crate) fn frame<E>(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_BYTES]);
    if let Err(e) = write(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - FRAME_BYTES) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_BYTES..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The whole records at the start of `bytes`, as (offset, payload). Ends at the first torn
/// record (short, oversized or failing its CRC): a crash cut it mid-`write`, so it was never
/// acknowledged; [`Frames::offset`] then says where the whole records end.
pub(crate) fn frames(bytes: &[u8]) -> Frames<'_> {
    Frames { bytes, pos: 0 }
}

/// See [`frames`].
pub(crate) struct Frames<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Frames<'_> {
    /// Where the next record starts: once the iterator is done, the length of the whole records.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = (usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (header, rest) = self.bytes.get(self.pos..)?.split_first_chunk::<8>()?;
        let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len > MAX_RECORD_BYTES {
            return None;
        }
        let payload = rest.get(..len as usize)?;
        if crc32fast::hash(payload) != u32::from_le_bytes([c0, c1, c2, c3]) {
            return None;
        }
        let at = self.pos;
        self.pos += FRAME_BYTES + payload.len();
        Some((at, payload))
    }
}

/// Reads a whole log.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, OpenError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    Ok(bytes)
}

/// Cuts a log to `len` bytes (its whole records), durably.
pub(crate) fn cut(path: &Path, len: u64) -> Result<(), OpenError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Opens (creating it if needed) the log of `generation` for appending.
pub(crate) fn open(dir: &Path, generation: u64) -> io::Result<LogFile> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path(dir, generation))?;
    let bytes = io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
    Ok(LogFile {
        file: Arc::new(file),
        generation,
        bytes,
        written: None,
    })
}

/// The log file being appended to.
pub(crate) struct LogFile {
    /// Shared with [`crate::EmbeddedStore::sync`], which fsyncs it outside the log's lock: a
    /// handle of its own, opened with the file, rather than one duplicated at each sync (under
    /// file descriptor exhaustion the duplicate failed, and acknowledged pushes went unsynced).
    pub(crate) file: Arc<File>,
    pub(crate) generation: u64,
    /// Length of the whole records in the file.
    pub(crate) bytes: u64,
    /// The last batch of the group commit written (to this file or an earlier one).
    pub(crate) written: Option<u64>,
}

/// A write of the log that failed.
pub(crate) struct AppendError {
    pub(crate) error: io::Error,
    /// Whether what the write left of its records could not be cut off: the log then ends in a
    /// partial record, and records appended after it would be lost on replay.
    pub(crate) torn: bool,
}

impl LogFile {
    /// Appends whole records, written as group commit `batch`, with one `write`; or nothing: what
    /// a failed write left is cut off again.
    pub(crate) fn append(&mut self, records: &[u8], batch: u64) -> Result<(), AppendError> {
        if let Err(error) = (&*self.file).write_all(records) {
            // Whatever the write left of its records is cut off again.
            let torn = match self.file.metadata() {
                Ok(m) if m.len() == self.bytes => false,
                _ => self.file.set_len(self.bytes).is_err(),
            };
            return Err(AppendError { error, torn });
        }
        self.bytes += records.len() as u64;
        self.written = Some(batch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_end_at_the_first_torn_record() {
        let mut bytes = Vec::new();
        for payload in [&b"one"[..], b"", b"three"] {
            frame(&mut bytes, |out| {
                out.extend_from_slice(payload);
                Ok::<(), ()>(())
            })
            .expect("frames");
        }
        let whole = bytes.len();
        let read = |bytes: &[u8]| {
            let mut frames = frames(bytes);
            let payloads: Vec<Vec<u8>> = frames.by_ref().map(|(_, p)| p.to_vec()).collect();
            (payloads, frames.offset())
        };
        let (payloads, end) = read(&bytes);
        assert_eq!(payloads, [&b"one"[..], b"", b"three"]);
        assert_eq!(end, whole);
        // Cut anywhere inside the last record: the first two remain.
        for cut in whole - 12..whole {
            assert_eq!(read(&bytes[..cut]).1, whole - 13, "cut at {cut}");
        }
        // A flipped bit in the second record's payload length or CRC ends the log before it.
        let mut flipped = bytes.clone();
        flipped[11 + 4] ^= 1;
        assert_eq!(read(&flipped).0.len(), 1);
        // An absurd length is not read past.
        let mut huge = bytes.clone();
        huge[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(read(&huge).1, 11);
        // A failing payload leaves nothing behind.
        assert_eq!(
            frame(&mut bytes, |out| {
                out.push(1);
                Err(())
            }),
            Err(())
        );
        assert_eq!(bytes.len(), whole);
    }
}
