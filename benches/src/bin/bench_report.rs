//! Assemble the figures in `target/bench-results/` into one table, print it and write it to
//! `target/bench-report.md`. `cargo xtask bench` runs this after the benchmarks.

use std::process::ExitCode;

use courier_benches::report;
use courier_benches::results::{results_dir, target_dir};

fn main() -> ExitCode {
    let dir = results_dir();
    let benches = match report::read_dir(&dir) {
        Ok(benches) if !benches.is_empty() => benches,
        Ok(_) => {
            eprintln!(
                "bench-report: no figures in {}: run `cargo xtask bench` first",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!(
                "bench-report: cannot read {}: {err}; run `cargo xtask bench` first",
                dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let table = report::render(&benches);
    print!("{table}");
    let path = target_dir().join("bench-report.md");
    match std::fs::write(&path, &table) {
        Ok(()) => {
            println!("\nreport written to {}", path.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("bench-report: cannot write {}: {err}", path.display());
            ExitCode::FAILURE
        }
    }
}
