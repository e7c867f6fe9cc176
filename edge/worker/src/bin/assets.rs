//! Lays out the Worker's static assets in a directory (build.sh runs it: `assets DIR`): the
//! core's assets ([`pum_shared::app::ASSETS`]) as the files Workers Static Assets serves at the
//! same URL paths (with `html_handling = "drop-trailing-slash"`), and the core's headers for them
//! as the `_headers` file ([`pum_shared::app::headers_file`]). So the Worker serves what
//! standalone and the Lambda serve, with the same cache and CSP headers, at no Worker request.

use std::path::{Path, PathBuf};

use pum_shared::app::{ASSETS, headers_file};

/// The file Workers Static Assets serves at `path`.
fn file_of(path: &str) -> PathBuf {
    let relative = path.trim_start_matches('/');
    match relative {
        "" => PathBuf::from("index.html"),
        p if Path::new(p).extension().is_some() => PathBuf::from(p),
        p => PathBuf::from(format!("{p}.html")),
    }
}

/// Writes through a temporary name, so that a server reading the directory never sees a
/// missing or half-written file.
fn place(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

fn main() -> std::io::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: assets DIR");
        std::process::exit(2);
    };
    for asset in ASSETS {
        place(&dir.join(file_of(asset.path)), asset.body)?;
    }
    place(&dir.join("_headers"), &headers_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths_map_to_the_files_served_there() {
        assert_eq!(file_of("/"), Path::new("index.html"));
        assert_eq!(file_of("/demo"), Path::new("demo.html"));
        assert_eq!(file_of("/demo/csp"), Path::new("demo/csp.html"));
        assert_eq!(
            file_of("/static/aggregatorClient.js"),
            Path::new("static/aggregatorClient.js")
        );
    }
}
