//! The table of every figure and its ratio to the floor it is compared with, assembled from
//! the files the benchmarks write (see [`results`](crate::results)).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::results::{Figure, Target, Unit};

/// The benchmarks in the order the table lists them; any others follow by name.
const ORDER: [&str; 5] = [
    "host_core",
    "fire_and_forget",
    "request_response",
    "publish",
    "spawn",
];

/// What one benchmark's file holds.
#[derive(Debug, Default)]
pub struct BenchFigures {
    /// The benchmark's name (its file in `benches/`).
    pub bench: String,
    /// How long it ran (`# settings` line).
    pub settings: Option<String>,
    /// Its notes (`# note` lines).
    pub notes: Vec<String>,
    /// Its figures, in the order measured.
    pub figures: Vec<Figure>,
}

impl BenchFigures {
    /// Parse the text of one results file for the benchmark `bench`.
    pub fn parse(bench: &str, text: &str) -> BenchFigures {
        let mut parsed = BenchFigures {
            bench: bench.to_string(),
            ..BenchFigures::default()
        };
        for line in text.lines() {
            if let Some(settings) = line.strip_prefix("# settings ") {
                parsed.settings = Some(settings.to_string());
            } else if let Some(note) = line.strip_prefix("# note ") {
                parsed.notes.push(note.to_string());
            } else if let Some(figure) = Figure::decode(line) {
                parsed.figures.push(figure);
            }
        }
        parsed
    }
}

/// Read every `*.tsv` in `dir`, in table order.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<BenchFigures>> {
    let mut benches = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "tsv") {
            continue;
        }
        let Some(bench) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        benches.push(BenchFigures::parse(bench, &text));
    }
    let rank = |bench: &str| {
        ORDER
            .iter()
            .position(|b| *b == bench)
            .unwrap_or(ORDER.len())
    };
    benches.sort_by(|a, b| (rank(&a.bench), &a.bench).cmp(&(rank(&b.bench), &b.bench)));
    Ok(benches)
}

/// The markdown table of `benches`, with a line on how they were run and their notes.
pub fn render(benches: &[BenchFigures]) -> String {
    let mut out = String::from("# Courier benchmark report\n\n");
    let mut settings: Vec<&str> = benches
        .iter()
        .filter_map(|b| b.settings.as_deref())
        .collect();
    settings.dedup();
    if !settings.is_empty() {
        let _ = writeln!(out, "Settings: {}.\n", settings.join("; "));
    }
    out.push_str(
        "Ratio = value / (factor × the figure it is compared with), both measured in the same \
         run. Targets are docs/design.md §7's.\n\n",
    );
    out.push_str("| Bench | Figure | Value | Compared with | Ratio | Target |\n");
    out.push_str("|---|---|---:|---|---:|---|\n");
    for bench in benches {
        let by_key: HashMap<&str, &Figure> =
            bench.figures.iter().map(|f| (f.key.as_str(), f)).collect();
        for figure in &bench.figures {
            let other = figure
                .compared_with
                .as_ref()
                .and_then(|(key, factor)| by_key.get(key.as_str()).map(|f| (*f, *factor)));
            let compared = match other {
                Some((other, factor)) if factor != 1.0 => format!("{factor} × {}", other.label),
                Some((other, _)) => other.label.clone(),
                None => String::new(),
            };
            let ratio = match (figure.value, other) {
                (Some(value), Some((other, factor))) => other
                    .value
                    .filter(|v| *v > 0.0)
                    .map(|v| value / (factor * v)),
                _ => None,
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                bench.bench,
                figure.label,
                figure.value.map_or_else(
                    || "not measured".to_string(),
                    |v| format_value(v, figure.unit)
                ),
                compared,
                ratio.map_or_else(String::new, |r| format!("{r:.2}×")),
                figure
                    .target
                    .map_or_else(String::new, |t| format_target(t, figure, ratio)),
            );
        }
    }
    let notes: Vec<(&str, &str)> = benches
        .iter()
        .flat_map(|b| b.notes.iter().map(|n| (b.bench.as_str(), n.as_str())))
        .collect();
    if !notes.is_empty() {
        out.push_str("\nNotes:\n");
        for (bench, note) in notes {
            let _ = writeln!(out, "- {bench}: {note}");
        }
    }
    out
}

/// A value in its unit, to three significant figures or so.
pub fn format_value(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Nanos => match value {
            v if v < 1e3 => format!("{v:.0} ns"),
            v if v < 1e6 => format!("{:.2} µs", v / 1e3),
            v if v < 1e9 => format!("{:.2} ms", v / 1e6),
            v => format!("{:.2} s", v / 1e9),
        },
        Unit::PerSecond => match value {
            v if v < 1e3 => format!("{v:.0} /s"),
            v if v < 1e6 => format!("{:.1} k/s", v / 1e3),
            v => format!("{:.2} M/s", v / 1e6),
        },
        Unit::Bytes => match value {
            v if v < 1024.0 => format!("{v:.0} B"),
            v if v < 1024.0 * 1024.0 => format!("{:.1} KiB", v / 1024.0),
            v if v < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", v / (1024.0 * 1024.0)),
            v => format!("{:.2} GiB", v / (1024.0 * 1024.0 * 1024.0)),
        },
    }
}

fn format_target(target: Target, figure: &Figure, ratio: Option<f64>) -> String {
    let (text, met) = match target {
        Target::RatioAtMost(limit) => (format!("≤ {limit}×"), ratio.map(|r| r <= limit)),
        Target::AtMost(limit) => (
            format!("≤ {}", format_value(limit, figure.unit)),
            figure.value.map(|v| v <= limit),
        ),
        Target::AtLeast(limit) => (
            format!("≥ {}", format_value(limit, figure.unit)),
            figure.value.map(|v| v >= limit),
        ),
    };
    match met {
        Some(true) => format!("{text}: met"),
        Some(false) => format!("{text}: **missed**"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_use_the_factor_and_targets_are_judged() {
        let text = "# bench fire_and_forget\n# settings quick\n# note ping built\n\
                    floor\twasm floor\t500\tns\t\t\t\n\
                    ping\tping to pong\t1200\tns\tfloor\t2\tratio<=1.5\n\
                    rate\tthroughput\t-\t/s\t\t\t>=1000000\n";
        let bench = BenchFigures::parse("fire_and_forget", text);
        assert_eq!(bench.figures.len(), 3);
        let table = render(&[bench]);
        assert!(
            table.contains("| 1.20 µs | 2 × wasm floor | 1.20× | ≤ 1.5×: met |"),
            "{table}"
        );
        assert!(table.contains("| not measured |"), "{table}");
        assert!(table.contains("- fire_and_forget: ping built"), "{table}");
    }

    #[test]
    fn values_are_shown_in_their_unit() {
        assert_eq!(format_value(812.4, Unit::Nanos), "812 ns");
        assert_eq!(format_value(4_560.0, Unit::Nanos), "4.56 µs");
        assert_eq!(format_value(1.25e6, Unit::PerSecond), "1.25 M/s");
        assert_eq!(format_value(3.0 * 1024.0 * 1024.0, Unit::Bytes), "3.0 MiB");
    }
}
