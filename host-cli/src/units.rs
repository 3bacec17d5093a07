//! Sizes and durations as people write them in a manifest: `"16 MiB"` or a number of bytes,
//! `"100ms"` or a number of milliseconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A number of bytes, written in a manifest as an integer (`65536`) or as a number with a
/// unit (`"64 KiB"`, `"16 MiB"`, `"1.5 GiB"`, `"4 MB"`).
///
/// Binary units (`KiB`, `MiB`, `GiB`) are powers of 1024 and decimal ones (`kB`, `MB`, `GB`)
/// powers of 1000, as their names say.
///
/// ```
/// use courier_cli::units::ByteSize;
///
/// assert_eq!("16 MiB".parse::<ByteSize>().unwrap().0, 16 << 20);
/// assert_eq!("512".parse::<ByteSize>().unwrap().0, 512);
/// assert!("16 parsecs".parse::<ByteSize>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

const SIZE_HINT: &str = "a size such as \"16 MiB\", \"64 KiB\" or a number of bytes";

/// The units a size may carry, with their factors. Lower-case spellings are accepted too,
/// since nobody means millibits.
const SIZE_UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number = number.replace('_', "");
        let unit = unit.trim();
        let factor = if unit.is_empty() {
            1
        } else {
            SIZE_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .map(|(_, factor)| *factor)
                .ok_or_else(|| format!("unknown unit {unit:?} in {text:?}: expected {SIZE_HINT}"))?
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not {SIZE_HINT}"))?;
        let bytes = value * factor as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("{text:?} is too large"));
        }
        if bytes.fract() != 0.0 {
            return Err(format!("{text:?} is not a whole number of bytes"));
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl<'de> de::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SIZE_HINT)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{v} is negative: expected {SIZE_HINT}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A duration, written in a manifest as an integer number of milliseconds (`100`) or as text
/// with units (`"100ms"`, `"2s"`, `"1m 30s"`), read by [`humantime`].
///
/// ```
/// use std::time::Duration;
/// use courier_cli::units::Millis;
///
/// assert_eq!("100ms".parse::<Millis>().unwrap().0, Duration::from_millis(100));
/// assert_eq!("2s".parse::<Millis>().unwrap().0, Duration::from_secs(2));
/// assert!("soon".parse::<Millis>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub Duration);

const DURATION_HINT: &str = "a duration such as \"100ms\", \"2s\" or a number of milliseconds";

impl std::str::FromStr for Millis {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(ms) = text.parse::<u64>() {
            return Ok(Millis(Duration::from_millis(ms)));
        }
        humantime::parse_duration(text)
            .map(Millis)
            .map_err(|err| format!("{text:?} is not {DURATION_HINT} ({err})"))
    }
}

impl<'de> de::Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MillisVisitor;
        impl Visitor<'_> for MillisVisitor {
            type Value = Millis;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_HINT)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
                u64::try_from(v)
                    .map(|ms| Millis(Duration::from_millis(ms)))
                    .map_err(|_| E::custom(format!("{v} is negative: expected {DURATION_HINT}")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
                Ok(Millis(Duration::from_millis(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(MillisVisitor)
    }
}

/// How Courier writes sizes and durations for people; the one copy lives in host-core.
pub use courier_host_core::units::{format_bytes, format_duration};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        let size = |text: &str| text.parse::<ByteSize>().map(|s| s.0);
        assert_eq!(size("16 MiB"), Ok(16 << 20));
        assert_eq!(size("16MiB"), Ok(16 << 20));
        assert_eq!(size("64 kib"), Ok(64 << 10));
        assert_eq!(size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(size("4 MB"), Ok(4_000_000));
        assert_eq!(size("100 B"), Ok(100));
        assert_eq!(size("1_048_576"), Ok(1 << 20));
        assert!(size("16 parsecs").unwrap_err().contains("unknown unit"));
        assert!(size("MiB").is_err());
        assert!(size("0.5 B").is_err());
        assert!(size("").is_err());
    }

    #[test]
    fn durations_take_units_or_milliseconds() {
        let ms = |text: &str| text.parse::<Millis>().map(|d| d.0);
        assert_eq!(ms("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(ms("250"), Ok(Duration::from_millis(250)));
        assert_eq!(ms("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(ms("10 parsecs").unwrap_err().contains("not a duration"));
    }
}
