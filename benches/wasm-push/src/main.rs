//! The native side of edge/worker/cpu-bench.sh (see the crate docs):
//!
//! ```text
//! pum-wasm-push rounds FIXTURE WARMUP PUSHES   time the push path natively, a round per request
//! pum-wasm-push pushes FIXTURE WARMUP PUSHES   just run it (under valgrind, for instructions)
//! pum-wasm-push instrument IN.wasm OUT.wasm    add the wasm instruction counter (count.rs)
//! ```
//!
//! `rounds` warms up with WARMUP pushes and says `ready`, then for each line `round` it reads,
//! times a round of PUSHES pushes and the fold after it, checks them ([`Bench::check`]) and
//! answers one JSON line; so the caller can alternate its wasm rounds with native ones, and a
//! machine busy with other work slows both alike. `pushes` runs WARMUP pushes, a fold and a check, then PUSHES pushes,
//! and exits without tearing anything down, so that two runs with different PUSHES differ by
//! exactly the pushes' own work.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Instant;

use pum_wasm_push::{Bench, Fixture, count};

const USAGE: &str = "usage: pum-wasm-push rounds FIXTURE WARMUP PUSHES
       pum-wasm-push pushes FIXTURE WARMUP PUSHES
       pum-wasm-push instrument IN.wasm OUT.wasm
FIXTURE: beacon or mixed";

fn number(arg: Option<&String>, what: &str) -> Result<u32, String> {
    arg.and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{what}: a whole number\n{USAGE}"))
}

fn fixture(arg: Option<&String>) -> Result<Fixture, String> {
    Fixture::parse(arg.map(String::as_str).unwrap_or(""))
}

/// Warm-up: the allowlist described and compiled, the limiter's clients seen, a fold checked.
fn warm(f: Fixture, warmup: u32) -> Result<Bench, String> {
    let mut bench = Bench::new(f)?;
    bench.run(warmup)?;
    bench.fold()?;
    bench.check()?;
    Ok(bench)
}

fn rounds(args: &[String]) -> Result<(), String> {
    let f = fixture(args.first())?;
    let warmup = number(args.get(1), "WARMUP")?;
    let pushes = number(args.get(2), "PUSHES")?.max(1);
    let mut bench = warm(f, warmup)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    for line in std::io::stdin().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        if line.trim() != "round" {
            return Err(format!("expected \"round\", read {line:?}"));
        }
        let t = Instant::now();
        bench.run(pushes)?;
        let push_ns = t.elapsed().as_nanos() as f64 / f64::from(pushes);
        let t = Instant::now();
        let folded = bench.fold()?;
        let fold_ns = t.elapsed().as_nanos() as f64 / folded.max(1) as f64;
        let report = serde_json::json!({
            "pushNs": push_ns,
            "foldNs": fold_ns,
            "check": bench.check()?,
        });
        writeln!(out, "{report}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }
    Ok(())
}

fn pushes(args: &[String]) -> Result<(), String> {
    let f = fixture(args.first())?;
    let warmup = number(args.get(1), "WARMUP")?;
    let pushes = number(args.get(2), "PUSHES")?;
    let mut bench = warm(f, warmup)?;
    bench.run(pushes)?;
    println!("{} {} pushes answered and applied", bench.sent(), f.name());
    // Exit without dropping the bench: freeing what the pushes left would count as theirs.
    std::process::exit(0)
}

fn instrument(args: &[String]) -> Result<(), String> {
    let [input, output] = args else {
        return Err(USAGE.into());
    };
    let wasm = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let counted = count::instrument(&wasm)?;
    std::fs::write(output, counted).map_err(|e| format!("{output}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let done = match args.first().map(String::as_str) {
        Some("rounds") => rounds(&args[1..]),
        Some("pushes") => pushes(&args[1..]),
        Some("instrument") => instrument(&args[1..]),
        _ => Err(USAGE.into()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pum-wasm-push: {e}");
            ExitCode::FAILURE
        }
    }
}
