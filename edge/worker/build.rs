//! Compiles the allowlist named by `PUM_ALLOWLIST` at build time (a JSON file, or a directory of
//! `*.json` files, as `pum-collector --config` takes) into the Worker. Workers vars hold a few KB
//! at most, so this is the way for an allowlist of any size. It is checked here with the compiler
//! the Worker runs, so a bad config fails the build, and so `wrangler deploy`, with an error that
//! names the file, the metric and the field.
//!
//! Without `PUM_ALLOWLIST` the Worker runs on `PUM_ALLOWLIST_JSON` or the example allowlist.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PUM_ALLOWLIST");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let sources = match std::env::var("PUM_ALLOWLIST") {
        Ok(path) if !path.trim().is_empty() => read(Path::new(path.trim())),
        _ => Vec::new(),
    };
    if !sources.is_empty()
        && let Err(e) = pum_shared::Allowlist::compile(
            sources.iter().map(|(n, t)| (n.as_str(), t.as_str())),
            false,
        )
    {
        fail(&format!("PUM_ALLOWLIST: {e}"));
    }
    let json = serde_json::to_string(&sources).expect("strings serialize");
    std::fs::write(out.join("allowlist.json"), json).expect("OUT_DIR is writable");
}

/// The sources, `(file name, text)`, sorted by name.
fn read(path: &Path) -> Vec<(String, String)> {
    println!("cargo:rerun-if-changed={}", path.display());
    let meta = std::fs::metadata(path)
        .unwrap_or_else(|e| fail(&format!("PUM_ALLOWLIST={}: {e}", path.display())));
    let mut files = Vec::new();
    if meta.is_dir() {
        let entries = std::fs::read_dir(path)
            .unwrap_or_else(|e| fail(&format!("PUM_ALLOWLIST={}: {e}", path.display())));
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "json") && p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            fail(&format!(
                "PUM_ALLOWLIST={}: the directory holds no *.json files",
                path.display()
            ));
        }
    } else {
        files.push(path.to_owned());
    }
    files
        .iter()
        .map(|f| {
            println!("cargo:rerun-if-changed={}", f.display());
            let text = std::fs::read_to_string(f)
                .unwrap_or_else(|e| fail(&format!("{}: cannot read: {e}", f.display())));
            (f.display().to_string(), text)
        })
        .collect()
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
