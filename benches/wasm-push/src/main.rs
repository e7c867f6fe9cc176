//! The native side of edge/worker/cpu-bench.sh (see the crate docs):
//!
//! ```text
//! pum-wasm-push time FIXTURE WARMUP ROUNDS PUSHES   time the push path natively: one JSON line
//! pum-wasm-push pushes FIXTURE WARMUP PUSHES        just run it (under valgrind, for instructions)
//! pum-wasm-push instrument IN.wasm OUT.wasm         add the wasm instruction counter (count.rs)
//! ```
//!
//! `time` warms up with WARMUP pushes, then times ROUNDS rounds of PUSHES pushes, and the fold
//! after each round; every round is checked ([`Bench::check`]). `pushes` runs WARMUP pushes, a
//! fold and a check, then PUSHES pushes, and exits without tearing anything down, so that two
//! runs with different PUSHES differ by exactly the pushes' own work.

use std::process::ExitCode;
use std::time::Instant;

use pum_wasm_push::{Bench, Fixture, count};

const USAGE: &str = "usage: pum-wasm-push time FIXTURE WARMUP ROUNDS PUSHES
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

fn time(args: &[String]) -> Result<(), String> {
    let f = fixture(args.first())?;
    let warmup = number(args.get(1), "WARMUP")?;
    let rounds = number(args.get(2), "ROUNDS")?;
    let pushes = number(args.get(3), "PUSHES")?.max(1);
    let mut bench = warm(f, warmup)?;
    let (mut push_ns, mut fold_ns) = (Vec::new(), Vec::new());
    let mut checked = String::new();
    for _ in 0..rounds {
        let t = Instant::now();
        bench.run(pushes)?;
        push_ns.push(t.elapsed().as_nanos() as f64 / f64::from(pushes));
        let t = Instant::now();
        let folded = bench.fold()?;
        fold_ns.push(t.elapsed().as_nanos() as f64 / folded.max(1) as f64);
        checked = bench.check()?;
    }
    let report = serde_json::json!({
        "fixture": f.name(),
        "bodyBytes": bench.body_bytes(),
        "pushNs": push_ns,
        "foldNs": fold_ns,
        "check": checked,
    });
    println!("{report}");
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
        Some("time") => time(&args[1..]),
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
