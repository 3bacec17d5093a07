//! How long the benchmarks run, and how a figure is taken from criterion's samples.
//!
//! Every benchmark is an `iter_custom` routine that times its own iterations. [`measure`]
//! keeps the `(iterations, elapsed)` pair of each call; criterion calls the routine during
//! warm-up and then exactly once per sample, so the last `sample_size` pairs are the samples
//! criterion analyses, and their median time per iteration is the median criterion prints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::Criterion;
use criterion::measurement::WallTime;

/// The environment variable that selects the short run (`cargo xtask bench --quick` sets it).
pub const QUICK_ENV: &str = "COURIER_BENCH_QUICK";

/// How long each benchmark warms up and measures, and how many samples it takes.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The short run: a few seconds per benchmark instead of criterion's default eight.
    pub quick: bool,
    /// Samples per benchmark (criterion's `--sample-size` overrides it).
    pub sample_size: usize,
    /// Warm-up per benchmark.
    pub warm_up: Duration,
    /// Measurement per benchmark.
    pub measurement: Duration,
    /// Whether this is a real benchmark run (`cargo bench`), as opposed to criterion's test
    /// or list modes; only a real run records figures.
    pub recording: bool,
}

impl Settings {
    /// The settings for this process: quick if [`QUICK_ENV`] is set to anything but `0`,
    /// criterion's defaults otherwise, with `--sample-size`, `--warm-up-time` and
    /// `--measurement-time` from the command line taking precedence as they do in criterion.
    pub fn from_env() -> Settings {
        let quick = std::env::var(QUICK_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
        let args: Vec<String> = std::env::args().collect();
        let mut settings = if quick {
            Settings {
                quick,
                sample_size: 10,
                warm_up: Duration::from_millis(300),
                measurement: Duration::from_millis(1200),
                recording: false,
            }
        } else {
            Settings {
                quick,
                sample_size: 100,
                warm_up: Duration::from_secs(3),
                measurement: Duration::from_secs(5),
                recording: false,
            }
        };
        if let Some(n) = flag_value(&args, "--sample-size").and_then(|v| v.parse().ok()) {
            settings.sample_size = n;
        }
        if let Some(secs) = flag_value(&args, "--warm-up-time").and_then(|v| v.parse().ok()) {
            settings.warm_up = Duration::from_secs_f64(secs);
        }
        if let Some(secs) = flag_value(&args, "--measurement-time").and_then(|v| v.parse().ok()) {
            settings.measurement = Duration::from_secs_f64(secs);
        }
        let has = |flag: &str| args.iter().any(|a| a == flag);
        settings.recording = has("--bench") && !has("--test") && !has("--list");
        settings
    }

    /// Criterion configured with these settings, then with the command line applied.
    pub fn criterion(&self) -> Criterion {
        let mut criterion = Criterion::default()
            .sample_size(self.sample_size)
            .warm_up_time(self.warm_up)
            .measurement_time(self.measurement)
            .without_plots();
        if self.quick {
            // The bootstrap of the confidence intervals takes a noticeable fraction of a
            // second per benchmark at criterion's default of 100,000 resamples.
            criterion = criterion.nresamples(10_000);
        }
        criterion.configure_from_args()
    }

    /// A short description for the report: `quick (10 samples, 0.3 s warm-up, 1.2 s)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} samples, {:.1} s warm-up, {:.1} s measurement per benchmark)",
            if self.quick { "quick" } else { "full" },
            self.sample_size,
            self.warm_up.as_secs_f64(),
            self.measurement.as_secs_f64()
        )
    }

    /// A count that fits the run: `full` normally, `quick` in the short run.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// The value of `--flag value` or `--flag=value` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == flag {
            return iter.next().map(String::as_str);
        }
        if let Some(value) = arg.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            return Some(value);
        }
    }
    None
}

/// The `(iterations, elapsed)` pair of every call criterion made to a routine.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(u64, Duration)>>>);

impl Calls {
    fn push(&self, iters: u64, elapsed: Duration) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((iters, elapsed));
    }

    /// The median time per iteration over the last `samples` calls, in nanoseconds.
    fn median_per_iteration(&self, samples: usize) -> Option<f64> {
        let calls = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let measured = &calls[calls.len().saturating_sub(samples)..];
        let per_iteration: Vec<f64> = measured
            .iter()
            .filter(|(iters, _)| *iters > 0)
            .map(|(iters, elapsed)| elapsed.as_nanos() as f64 / *iters as f64)
            .collect();
        median(per_iteration)
    }
}

/// Benchmark `routine` under criterion as `id` in `group` and return its median time per
/// iteration in nanoseconds, or `None` when nothing was measured (criterion's test mode, or a
/// filter that skipped it).
///
/// `routine(iters)` runs `iters` iterations and returns the time they took, as criterion's
/// `iter_custom` expects; it can leave its set-up and tear-down out of the time it returns.
pub fn measure<F>(
    group: &mut criterion::BenchmarkGroup<'_, WallTime>,
    id: &str,
    settings: &Settings,
    mut routine: F,
) -> Option<f64>
where
    F: FnMut(u64) -> Duration,
{
    let calls = Calls::default();
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let elapsed = routine(iters);
            calls.push(iters, elapsed);
            elapsed
        })
    });
    if !settings.recording {
        return None;
    }
    calls.median_per_iteration(settings.sample_size)
}

/// The median of `values`, `None` if there are none.
pub fn median(values: Vec<f64>) -> Option<f64> {
    percentile(values, 0.5)
}

/// The `q`-quantile (0.0 to 1.0) of `values` by the nearest-rank method, `None` if there are
/// none: the smallest value that at least `q` of them do not exceed.
pub fn percentile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64) * q).ceil().max(1.0) as usize;
    Some(values[rank.min(values.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(values.clone(), 0.5), Some(50.0));
        assert_eq!(percentile(values.clone(), 0.99), Some(99.0));
        assert_eq!(percentile(values, 1.0), Some(100.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn only_the_last_calls_are_samples() {
        let calls = Calls::default();
        // Warm-up calls with a different cost must not count.
        calls.push(1, Duration::from_nanos(1_000));
        calls.push(2, Duration::from_nanos(2_000));
        for iters in 1..=3 {
            calls.push(iters, Duration::from_nanos(10 * iters));
        }
        assert_eq!(calls.median_per_iteration(3), Some(10.0));
    }

    #[test]
    fn flags_are_read_in_both_spellings() {
        let args: Vec<String> = ["bench", "--sample-size", "20", "--warm-up-time=0.5"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(flag_value(&args, "--sample-size"), Some("20"));
        assert_eq!(flag_value(&args, "--warm-up-time"), Some("0.5"));
        assert_eq!(flag_value(&args, "--measurement-time"), None);
    }
}
