//! Sizes and durations written for people, the one way every Courier message writes them.

use std::time::Duration;

/// Writes a byte count in the largest binary unit that divides it: `16 MiB`, `64 KiB`,
/// `1000 bytes`. Limits are usually powers of two, so they read as they were configured.
///
/// ```
/// use courier_host_core::units::format_bytes;
///
/// assert_eq!(format_bytes(16 << 20), "16 MiB");
/// assert_eq!(format_bytes(64 << 10), "64 KiB");
/// assert_eq!(format_bytes(1000), "1000 bytes");
/// ```
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, factor) in UNITS {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{} {name}", bytes / factor);
        }
    }
    format!("{bytes} bytes")
}

/// Writes a duration for a person: `850 µs`, `12 ms`, `1.25 s`.
///
/// ```
/// use std::time::Duration;
/// use courier_host_core::units::format_duration;
///
/// assert_eq!(format_duration(Duration::from_micros(850)), "850 µs");
/// assert_eq!(format_duration(Duration::from_millis(12)), "12 ms");
/// assert_eq!(format_duration(Duration::from_millis(1250)), "1.25 s");
/// assert_eq!(format_duration(Duration::from_secs(5)), "5 s");
/// ```
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 1_000 {
        format!("{micros} µs")
    } else if micros < 1_000_000 {
        format!("{} ms", duration.as_millis())
    } else if micros.is_multiple_of(1_000_000) {
        format!("{} s", duration.as_secs())
    } else {
        format!("{:.2} s", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_the_largest_whole_unit() {
        assert_eq!(format_bytes(3 << 30), "3 GiB");
        assert_eq!(format_bytes(16 << 20), "16 MiB");
        assert_eq!(format_bytes((16 << 20) + 1), "16777217 bytes");
        assert_eq!(format_bytes(0), "0 bytes");
    }

    #[test]
    fn durations_pick_the_unit_that_reads_best() {
        assert_eq!(format_duration(Duration::ZERO), "0 µs");
        assert_eq!(format_duration(Duration::from_micros(999)), "999 µs");
        assert_eq!(format_duration(Duration::from_millis(999)), "999 ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90 s");
    }
}
