//! The allowlists the store was described with, one file each: `allowlist-<fingerprint>.json`,
//! the allowlist's canonical description ([`Allowlist::description`]), the fingerprint in 16 hex
//! digits.
//!
//! A record names its series by positions in the allowlist it was written against, so a record
//! can be read only with that allowlist: its file is written durably (temporary file, fsync,
//! rename, directory fsync) before the first record that needs it, and never deleted. Opening
//! compiles each file once ([`Allowlist::from_description`]) and decodes every record with the
//! allowlist of its fingerprint; readers of the store get them all ([`pum_shared::Stored`]).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use pum_shared::Allowlist;

use crate::{OpenError, io_err, sync_dir};

/// The file of the allowlist of `fingerprint` in `dir`.
pub(crate) fn path(dir: &Path, fingerprint: u64) -> PathBuf {
    dir.join(format!("allowlist-{fingerprint:016x}.json"))
}

/// The stored allowlists, compiled.
#[derive(Default)]
pub(crate) struct Allowlists {
    /// In the order they were described (on opening, by fingerprint); a store holds one, or a
    /// few after changes of its config.
    lists: Vec<Allowlist>,
}

impl Allowlists {
    /// Reads and compiles every allowlist file of `dir`, and removes temporary files left by a
    /// crash while one was written.
    pub(crate) fn load(dir: &Path) -> Result<Allowlists, OpenError> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(rest) = name.strip_prefix("allowlist-") else {
                continue;
            };
            if rest.ends_with(".json.tmp") {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
            } else if let Some(fingerprint) = rest
                .strip_suffix(".json")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            {
                found.push(fingerprint);
            }
        }
        found.sort_unstable();
        let mut lists = Vec::with_capacity(found.len());
        for fingerprint in found {
            let path = path(dir, fingerprint);
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            let corrupt = |reason: String| OpenError::CorruptAllowlist {
                path: path.clone(),
                reason,
            };
            let list = Allowlist::from_description(&text).map_err(|e| corrupt(e.to_string()))?;
            if list.fingerprint() != fingerprint {
                return Err(corrupt(format!(
                    "it describes allowlist {:016x}, not the one its name says",
                    list.fingerprint()
                )));
            }
            lists.push(list);
        }
        Ok(Allowlists { lists })
    }

    /// The allowlist of `fingerprint`, if it is stored.
    pub(crate) fn get(&self, fingerprint: u64) -> Option<&Allowlist> {
        self.lists.iter().find(|l| l.fingerprint() == fingerprint)
    }

    /// Every stored allowlist.
    pub(crate) fn all(&self) -> &[Allowlist] {
        &self.lists
    }

    /// Stores `allowlist` durably in `dir`, unless it is stored already.
    pub(crate) fn describe(&mut self, dir: &Path, allowlist: &Allowlist) -> io::Result<()> {
        let fingerprint = allowlist.fingerprint();
        if self.get(fingerprint).is_some() {
            return Ok(());
        }
        let path = path(dir, fingerprint);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(allowlist.description().as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        self.lists.push(allowlist.clone());
        Ok(())
    }
}
