//! The figures a benchmark measured, written to `target/bench-results/NAME.tsv` for the
//! report.
//!
//! One figure per line, tab-separated: key, label, value, unit, the key of the figure it is
//! compared with, the factor applied to that figure, and the design target. Lines starting
//! with `#` are comments; `# settings ...` says how long the benchmark ran. A value of `-`
//! means the figure was not measured, and the label says why.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::sampling::Settings;

/// The folder the figures go to: `target/bench-results/` of the workspace.
pub fn results_dir() -> PathBuf {
    target_dir().join("bench-results")
}

/// The workspace's target folder: `$CARGO_TARGET_DIR`, or `target/` at the repository root.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the benches crate lives inside the repository")
            .join("target"),
    }
}

/// What a figure's value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Time, in nanoseconds.
    Nanos,
    /// Messages per second.
    PerSecond,
    /// Memory, in bytes.
    Bytes,
}

impl Unit {
    fn code(self) -> &'static str {
        match self {
            Unit::Nanos => "ns",
            Unit::PerSecond => "/s",
            Unit::Bytes => "B",
        }
    }

    fn from_code(code: &str) -> Option<Unit> {
        match code {
            "ns" => Some(Unit::Nanos),
            "/s" => Some(Unit::PerSecond),
            "B" => Some(Unit::Bytes),
            _ => None,
        }
    }
}

/// A target from docs/design.md §7 that a figure is held against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The ratio to the compared figure is at most this.
    RatioAtMost(f64),
    /// The value is at most this, in the figure's unit.
    AtMost(f64),
    /// The value is at least this, in the figure's unit.
    AtLeast(f64),
}

impl Target {
    fn encode(self) -> String {
        match self {
            Target::RatioAtMost(x) => format!("ratio<={x}"),
            Target::AtMost(x) => format!("<={x}"),
            Target::AtLeast(x) => format!(">={x}"),
        }
    }

    fn decode(text: &str) -> Option<Target> {
        if let Some(x) = text.strip_prefix("ratio<=") {
            return x.parse().ok().map(Target::RatioAtMost);
        }
        if let Some(x) = text.strip_prefix("<=") {
            return x.parse().ok().map(Target::AtMost);
        }
        text.strip_prefix(">=")
            .and_then(|x| x.parse().ok())
            .map(Target::AtLeast)
    }
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Names the figure within its benchmark, so other figures can be compared with it.
    pub key: String,
    /// What was measured, in words.
    pub label: String,
    /// The value, or `None` if it was not measured.
    pub value: Option<f64>,
    /// What the value counts.
    pub unit: Unit,
    /// The figure this one is compared with, and the factor applied to it: the ratio is
    /// `value / (factor * other)`.
    pub compared_with: Option<(String, f64)>,
    /// The design target, if there is one.
    pub target: Option<Target>,
}

impl Figure {
    fn new(key: &str, label: &str, value: Option<f64>, unit: Unit) -> Figure {
        Figure {
            key: key.to_string(),
            label: label.to_string(),
            value,
            unit,
            compared_with: None,
            target: None,
        }
    }

    /// A time in nanoseconds (per message, per call, per spawn).
    pub fn time(key: &str, label: &str, nanos: Option<f64>) -> Figure {
        Figure::new(key, label, nanos, Unit::Nanos)
    }

    /// A rate, in messages per second.
    pub fn rate(key: &str, label: &str, per_second: Option<f64>) -> Figure {
        Figure::new(key, label, per_second, Unit::PerSecond)
    }

    /// An amount of memory, in bytes.
    pub fn bytes(key: &str, label: &str, bytes: Option<f64>) -> Figure {
        Figure::new(key, label, bytes, Unit::Bytes)
    }

    /// Compare with the figure `key` of the same benchmark.
    pub fn vs(self, key: &str) -> Figure {
        self.vs_times(key, 1.0)
    }

    /// Compare with `factor` times the figure `key` of the same benchmark.
    pub fn vs_times(mut self, key: &str, factor: f64) -> Figure {
        self.compared_with = Some((key.to_string(), factor));
        self
    }

    /// Hold the figure against a design target.
    pub fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    fn encode(&self) -> String {
        let clean = |text: &str| text.replace(['\t', '\n'], " ");
        let value = self
            .value
            .map_or_else(|| "-".to_string(), |v| v.to_string());
        let (other, factor) = match &self.compared_with {
            Some((key, factor)) => (clean(key), factor.to_string()),
            None => (String::new(), String::new()),
        };
        let target = self.target.map(Target::encode).unwrap_or_default();
        format!(
            "{}\t{}\t{value}\t{}\t{other}\t{factor}\t{target}",
            clean(&self.key),
            clean(&self.label),
            self.unit.code()
        )
    }

    /// Read a line written by [`Figures::write`]; `None` for a comment or a malformed line.
    pub fn decode(line: &str) -> Option<Figure> {
        if line.starts_with('#') {
            return None;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [key, label, value, unit, other, factor, target] = fields[..] else {
            return None;
        };
        let value = match value {
            "-" => None,
            v => Some(v.parse().ok()?),
        };
        let compared_with = match other {
            "" => None,
            other => Some((other.to_string(), factor.parse().ok()?)),
        };
        Some(Figure {
            key: key.to_string(),
            label: label.to_string(),
            value,
            unit: Unit::from_code(unit)?,
            compared_with,
            target: Target::decode(target),
        })
    }
}

/// The figures of one benchmark binary, written when it ends.
#[derive(Debug)]
pub struct Figures {
    bench: String,
    settings: Settings,
    notes: Vec<String>,
    figures: Vec<Figure>,
}

impl Figures {
    /// An empty record for the benchmark `bench` (its file name in `benches/`).
    pub fn new(bench: &str, settings: &Settings) -> Figures {
        Figures {
            bench: bench.to_string(),
            settings: settings.clone(),
            notes: Vec::new(),
            figures: Vec::new(),
        }
    }

    /// Add a figure.
    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    /// Add a note for the report (what was skipped and why, which allocator was used).
    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("note: {note}");
        self.notes.push(note);
    }

    /// Write `target/bench-results/BENCH.tsv`, if this is a real benchmark run (criterion's
    /// test and list modes measure nothing, and leave the last run's figures alone).
    pub fn write(&self) {
        if !self.settings.recording {
            return;
        }
        let mut text = format!(
            "# bench {}\n# settings {}\n",
            self.bench,
            self.settings.describe()
        );
        for note in &self.notes {
            let _ = writeln!(text, "# note {}", note.replace('\n', " "));
        }
        for figure in &self.figures {
            text.push_str(&figure.encode());
            text.push('\n');
        }
        let dir = results_dir();
        let path = dir.join(format!("{}.tsv", self.bench));
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text));
        match written {
            Ok(()) => println!("figures written to {}", path.display()),
            Err(err) => eprintln!("could not write {}: {err}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_reads_back_as_written() {
        let figures = [
            Figure::time("ping", "ping to pong, per message", Some(812.5))
                .vs_times("floor", 2.0)
                .target(Target::RatioAtMost(1.5)),
            Figure::rate("rate", "ping to pong", Some(1.2e6)).target(Target::AtLeast(1e6)),
            Figure::bytes("rss", "per actor", None),
        ];
        for figure in figures {
            assert_eq!(Figure::decode(&figure.encode()), Some(figure));
        }
        assert_eq!(Figure::decode("# settings quick"), None);
    }
}
