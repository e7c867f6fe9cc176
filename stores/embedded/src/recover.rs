//! Opening the data directory: the stored allowlists, the snapshot, and the logs since it
//! replayed into the totals and the window of batch ids.
//!
//! Logs older than the snapshot are deleted (a crash stopped a compaction before it deleted
//! them: the snapshot holds what they hold). A torn record at the end of a log (a crash
//! mid-`write`) is cut off: it was never acknowledged. A whole record that cannot be read stops
//! the opening instead, since cutting it off would lose acknowledged pushes: one this version
//! does not read ([`OpenError::CorruptLog`]), or one whose allowlist's file is missing
//! ([`OpenError::MissingAllowlist`]).

use std::fs;
use std::path::Path;

use pum_shared::Aggregate;
use pum_shared::batch::Window;
use pum_shared::record;

use crate::allowlists::{self, Allowlists};
use crate::{OpenError, Recovery, io_err, log, snapshot};

/// What the data directory holds.
pub(crate) struct Recovered {
    pub(crate) totals: Aggregate,
    /// The batch ids applied within the window, by the snapshot's records and the logs'.
    pub(crate) window: Window,
    pub(crate) allowlists: Allowlists,
    /// The newest log generation, where appending goes on.
    pub(crate) generation: u64,
    pub(crate) recovery: Recovery,
}

/// Reads the data directory (see the module docs).
pub(crate) fn load(dir: &Path) -> Result<Recovered, OpenError> {
    let allowlists = Allowlists::load(dir)?;
    let snapshot::Loaded {
        generation,
        mut totals,
        mut window,
    } = snapshot::read(dir)?;
    let logs = log::list(dir)?;
    let mut recovery = Recovery {
        replayed: 0,
        truncated_bytes: 0,
    };
    let newest = logs.last().copied().unwrap_or(generation).max(generation);
    for g in logs {
        let path = log::path(dir, g);
        if g < generation {
            fs::remove_file(&path).map_err(io_err(&path))?;
            continue;
        }
        let bytes = log::read(&path)?;
        let mut frames = log::frames(&bytes);
        for (at, payload) in frames.by_ref() {
            let replay = Replay {
                dir,
                log: &path,
                at,
                allowlists: &allowlists,
            };
            replay.record(payload, &mut totals, &mut window)?;
            recovery.replayed += 1;
        }
        let whole = frames.offset();
        if whole < bytes.len() {
            recovery.truncated_bytes += (bytes.len() - whole) as u64;
            log::cut(&path, whole as u64)?;
        }
    }
    Ok(Recovered {
        totals,
        window,
        allowlists,
        generation: newest,
        recovery,
    })
}

/// Where a record being replayed is, and what decodes it.
struct Replay<'a> {
    dir: &'a Path,
    log: &'a Path,
    /// The record's offset in the log.
    at: usize,
    allowlists: &'a Allowlists,
}

impl Replay<'_> {
    /// Merges the record into `totals` and its batch id into `window`.
    fn record(
        &self,
        payload: &[u8],
        totals: &mut Aggregate,
        window: &mut Window,
    ) -> Result<(), OpenError> {
        let unreadable = |e: record::RecordError| OpenError::CorruptLog {
            path: self.log.to_owned(),
            reason: format!(
                "the record at byte {} is not one this version of pum reads ({e})",
                self.at
            ),
        };
        let fingerprint = record::peek_fingerprint(payload).map_err(unreadable)?;
        let allowlist =
            self.allowlists
                .get(fingerprint)
                .ok_or_else(|| OpenError::MissingAllowlist {
                    log: self.log.to_owned(),
                    at: self.at,
                    file: allowlists::path(self.dir, fingerprint),
                })?;
        let record = record::decode(payload, allowlist).map_err(unreadable)?;
        // Each record's total was checked when it was written: the sum fits.
        totals.merge(&record.delta);
        if let Some(id) = &record.batch {
            // The record keeps whole seconds: rounded up, the id is kept a little longer rather
            // than shorter than the window.
            let at_ms = record.at_secs.saturating_mul(1000).saturating_add(999);
            window.insert(id, at_ms);
        }
        Ok(())
    }
}
