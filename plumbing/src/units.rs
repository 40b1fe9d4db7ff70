//! Durations and byte sizes as people write them: `30s`, `250ms`, `5m`, `1m30s`; `256KiB`,
//! `64MiB`, `1GiB` or a plain byte count. Parsers for clap, and serde modules for the config
//! file that read these forms and write them back in the same form.
//!
//! Rates are bytes or bits per second: `100MiB/s`, `500Mbit/s`, `1.5GB/s`.
//!
//! A duration needs its unit (`ns`, `us`, `ms`, `s`, `m`, `h`): a bare number is refused,
//! since `30` could mean seconds or milliseconds. A size is a byte count, optionally with `B`,
//! `KiB`, `MiB`, `GiB` or `TiB` (powers of 1024); `KB`, `MB`... are refused as ambiguous.

use std::time::Duration;

const DURATION_UNITS: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const SIZE_UNITS: [(&str, u64); 5] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("B", 1),
];

/// Parses a duration such as `30s`, `250ms`, `5m` or `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration: write e.g. 30s or 250ms".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{s:?} has no unit: a unit is needed, e.g. {s}s or {s}ms"
        ));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration: write whole numbers with units, e.g. 30s, 250ms, 5m, 1m30s"
            ));
        }
        let (number, after) = rest.split_at(digits);
        if after.starts_with(['.', ',']) {
            return Err(format!(
                "{s:?}: write whole numbers, in a smaller unit if need be (1500ms, not 1.5s)"
            ));
        }
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let Some(&(_, nanos)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(if unit.is_empty() {
                format!("{s:?} has a number without a unit: a unit is needed (ns, us, ms, s, m, h)")
            } else {
                format!("{s:?} has an unknown unit {unit:?}: use ns, us, ms, s, m or h")
            });
        };
        let number: u128 = number.parse().map_err(|_| format!("{s:?} is too large"))?;
        total = number
            .checked_mul(nanos)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("{s:?} is too large"))?;
        rest = after;
    }
    if total > MAX_DURATION.as_nanos() {
        return Err(format!("{s:?} is too long: at most 30 days"));
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| format!("{s:?} is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// The longest duration any setting takes: far beyond any useful timeout, and far from the
/// overflow of a clock reading plus a duration.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// Writes a duration in the largest unit that keeps it whole: `5m`, `30s`, `250ms`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    for (unit, size) in DURATION_UNITS {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

/// Parses a size such as `256KiB`, `64MiB`, `1GiB`, `4096B` or `4096`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "{s:?} is not a size: write a byte count or e.g. 256KiB, 64MiB, 1GiB"
        ));
    }
    let (number, unit) = s.split_at(digits);
    let unit = unit.trim_start();
    let multiplier = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
            Some(&(_, m)) => m,
            None => {
                return Err(format!(
                    "{s:?} has an unknown unit {unit:?}: use B, KiB, MiB, GiB or TiB (powers of 1024)"
                ));
            }
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Writes a size in the largest binary unit that keeps it whole (`256KiB`), else in bytes.
pub fn format_size(bytes: usize) -> String {
    let bytes = bytes as u64;
    for (unit, size) in SIZE_UNITS {
        if size > 1 && bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Rate units: binary and decimal bytes, and decimal bits, each per second.
const RATE_UNITS: [(&str, u128, u128); 14] = [
    // (unit, numerator, denominator) of bytes per unit.
    ("B", 1, 1),
    ("KiB", 1 << 10, 1),
    ("MiB", 1 << 20, 1),
    ("GiB", 1 << 30, 1),
    ("TiB", 1 << 40, 1),
    ("kB", 1_000, 1),
    ("KB", 1_000, 1),
    ("MB", 1_000_000, 1),
    ("GB", 1_000_000_000, 1),
    ("bit", 1, 8),
    ("kbit", 1_000, 8),
    ("Kbit", 1_000, 8),
    ("Mbit", 1_000_000, 8),
    ("Gbit", 1_000_000_000, 8),
];

/// The lowest rate accepted: below it a single MySQL packet header would wait seconds.
pub const MIN_RATE: u64 = 1 << 10;
/// The highest rate accepted (far above what one host carries).
pub const MAX_RATE: u64 = 1 << 40;

/// Parses a rate such as `100MiB/s`, `500Mbit/s` or `1.5GB/s` into bytes per second (rounded to
/// the nearest byte), at least [`MIN_RATE`] (a cap below that is a mistake, not a cap).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let bytes = parse_any_rate(text)?;
    if bytes < MIN_RATE {
        return Err(format!(
            "{:?} is too low: at least {} (leave the setting out for no cap)",
            text.trim(),
            format_rate(MIN_RATE)
        ));
    }
    Ok(bytes)
}

/// [`parse_rate`] without its floor (for a rate a check elsewhere bounds, a fault's).
pub fn parse_any_rate(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let example = "write e.g. 100MiB/s, 500Mbit/s or 1.5GB/s";
    let Some(amount) = s.strip_suffix("/s") else {
        return Err(format!("{s:?} is not a rate: {example}"));
    };
    let number_len = amount
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, unit) = amount.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || fraction.len() > 9 {
        return Err(format!("{s:?} is not a rate: {example}"));
    }
    let Some(&(_, per_unit, divisor)) = RATE_UNITS.iter().find(|(name, ..)| *name == unit.trim())
    else {
        return Err(format!(
            "{s:?} has an unknown unit {unit:?}: use B, KiB, MiB, GiB, TiB, kB, MB, GB, bit, kbit, Mbit or Gbit, then /s"
        ));
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let digits: u128 = format!("{whole}{fraction}")
        .parse()
        .map_err(|_| format!("{s:?} is too large"))?;
    let denominator = scale * divisor;
    let bytes = digits
        .checked_mul(per_unit)
        .map(|n| (n + denominator / 2) / denominator)
        .filter(|&n| n <= u128::from(MAX_RATE))
        .ok_or_else(|| format!("{s:?} is too large: at most {}", format_rate(MAX_RATE)))?;
    Ok(bytes as u64)
}

/// Writes a rate in the largest binary unit that keeps it whole (`100MiB/s`), else in bytes.
pub fn format_rate(bytes_per_second: u64) -> String {
    let size = format_size(bytes_per_second as usize);
    match size.bytes().all(|b| b.is_ascii_digit()) {
        true => format!("{size}B/s"),
        false => format!("{size}/s"),
    }
}

/// Serde for an optional rate written as text (`"100MiB/s"`); absent means no cap.
pub mod option_rate {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match rate {
            Some(rate) => serializer.serialize_str(&super::format_rate(*rate)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        deserializer.deserialize_any(RateVisitor).map(Some)
    }

    struct RateVisitor;

    impl Visitor<'_> for RateVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a rate such as \"100MiB/s\", \"500Mbit/s\" or \"1.5GB/s\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            super::parse_rate(v).map_err(E::custom)
        }
    }
}

/// Serde for a [`Duration`] written with its unit (`"30s"`); numbers are refused.
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration with its unit, e.g. \"30s\" or \"250ms\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{v} has no unit: a unit is needed, e.g. \"{v}s\" or \"{v}ms\""
            )))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{v} has no unit: a unit is needed, e.g. \"{v}s\" or \"{v}ms\""
            )))
        }
    }
}

/// [`duration`] for an optional duration; absent means `None`.
pub mod option_duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        d: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(deserializer).map(Some)
    }
}

/// Serde for a byte size: an integer (bytes) or a string with a unit (`"256KiB"`).
pub mod size {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &usize, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_size(*bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }

    pub(super) struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = usize;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size: a byte count or e.g. \"256KiB\", \"64MiB\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            super::parse_size(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("{v} is not a size")))
        }
    }
}

/// Serde for an optional byte size; absent means `None`.
pub mod option_size {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<usize>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_str(&super::format_size(*bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<usize>, D::Error> {
        deserializer
            .deserialize_any(super::size::SizeVisitor)
            .map(Some)
    }
}

/// Says once per value that a bare number was read in a unit the key used to carry
/// (`latency_ms = 40`): accepted for this release only.
fn bare_number_read_as(value: u64, unit: &str) {
    tracing::warn!(
        "the bare number {value} was read as {value}{unit}: write the unit (\"{value}{unit}\"); \
         bare numbers (and keys ending in _ms, _us or _bytes_per_sec) are accepted for this \
         release only"
    );
}

/// Serde for a duration kept as whole milliseconds (`u64`), written with its unit (`"250ms"`,
/// `"5s"`). A bare number is read as milliseconds, with a warning (the older `*_ms` keys).
pub mod millis {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(std::time::Duration::from_millis(
            *ms,
        )))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(Scaled {
            per_second: 1000,
            unit: "ms",
        })
    }

    /// A duration in whole `unit`s (`per_second` of them in a second).
    pub(super) struct Scaled {
        pub(super) per_second: u128,
        pub(super) unit: &'static str,
    }

    impl Visitor<'_> for Scaled {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration with its unit, e.g. \"250ms\" or \"5s\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            let d = super::parse_duration(v).map_err(E::custom)?;
            let n = d.as_nanos() * self.per_second;
            if !n.is_multiple_of(1_000_000_000) {
                return Err(E::custom(format!(
                    "{v:?} is not a whole number of {}",
                    self.unit
                )));
            }
            u64::try_from(n / 1_000_000_000).map_err(|_| E::custom(format!("{v:?} is too long")))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            super::bare_number_read_as(v, self.unit);
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            let v = u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
            self.visit_u64(v)
        }
    }
}

/// [`millis`] for an optional duration; absent means `None`.
pub mod option_millis {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ms: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => super::millis::serialize(ms, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        super::millis::deserialize(deserializer).map(Some)
    }
}

/// Serde for a duration kept as whole microseconds (`u64`), as [`millis`].
pub mod micros {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(us: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(std::time::Duration::from_micros(
            *us,
        )))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(super::millis::Scaled {
            per_second: 1_000_000,
            unit: "us",
        })
    }
}

/// Serde for a byte count kept as `u64`: an integer, or a string with a unit (`"16KiB"`).
pub mod bytes {
    use serde::{Deserializer, Serializer};

    /// In a binary unit when it keeps the count whole (`"16KiB"`), else as a number.
    pub fn serialize<S: Serializer>(bytes: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        let text = super::format_size(*bytes as usize);
        match text.bytes().all(|b| b.is_ascii_digit()) {
            true => serializer.serialize_u64(*bytes),
            false => serializer.serialize_str(&text),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer
            .deserialize_any(super::size::SizeVisitor)
            .map(|n| n as u64)
    }
}

/// [`bytes`] for an optional byte count; absent means `None`.
pub mod option_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::bytes::serialize(bytes, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        super::bytes::deserialize(deserializer).map(Some)
    }
}

/// Serde for a rate kept as bytes per second (`u64`), written with its unit (`"20MiB/s"`). A
/// bare number is read as bytes per second, with a warning (the older `*_bytes_per_sec` keys).
pub mod rate {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_rate(*rate))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(RateVisitor)
    }

    struct RateVisitor;

    impl Visitor<'_> for RateVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a rate such as \"20MiB/s\" or \"500Mbit/s\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            super::parse_any_rate(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            super::bare_number_read_as(v, "B/s");
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            let v = u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))?;
            self.visit_u64(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_take_bytes_or_bits_per_second() {
        assert_eq!(parse_rate("100MiB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("500Mbit/s"), Ok(62_500_000));
        assert_eq!(parse_rate("1.5GB/s"), Ok(1_500_000_000));
        assert_eq!(parse_rate("64KiB/s"), Ok(64 << 10));
        assert_eq!(parse_rate(" 20 MiB/s "), Ok(20 << 20));
        assert_eq!(parse_rate("2048B/s"), Ok(2048));
        for bad in ["100MiB", "fast/s", "1.2.3MB/s", "10mib/s", "/s", "1Tbyte/s"] {
            assert!(parse_rate(bad).is_err(), "{bad} is refused");
        }
        assert!(parse_rate("100B/s").unwrap_err().contains("too low"));
        assert!(parse_rate("2TiB/s").unwrap_err().contains("too large"));
        assert_eq!(format_rate(100 << 20), "100MiB/s");
        assert_eq!(format_rate(62_500_000), "62500000B/s");
        for rate in [64 << 10, 62_500_000, 10 << 30] {
            assert_eq!(parse_rate(&format_rate(rate)), Ok(rate));
        }
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 10us "), Ok(Duration::from_micros(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        let bare = parse_duration("30").unwrap_err();
        assert!(bare.contains("unit is needed"), "{bare}");
        let trailing = parse_duration("1m30").unwrap_err();
        assert!(trailing.contains("unit is needed"), "{trailing}");
        for bad in ["", "s", "1.5s", "-1s", "5 s", "5sec", "1d", "ms5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn durations_round_trip() {
        for text in [
            "5m", "30s", "250ms", "1h", "90s", "1500ms", "7us", "3ns", "0s",
        ] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(8000)), "8s");
    }

    #[test]
    fn sizes_take_binary_units_or_bytes() {
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        let decimal = parse_size("64MB").unwrap_err();
        assert!(decimal.contains("MiB"), "{decimal}");
        for bad in ["", "KiB", "1.5MiB", "-1", "1kib", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_size(256 * 1024), "256KiB");
        assert_eq!(format_size(64 << 20), "64MiB");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(1536), "1536");
    }

    #[test]
    fn durations_past_thirty_days_are_refused() {
        assert_eq!(parse_duration("720h").unwrap(), MAX_DURATION);
        let e = parse_duration("4000000000000000h").unwrap_err();
        assert!(e.contains("too l"), "{e}");
        assert!(
            parse_duration("721h")
                .unwrap_err()
                .contains("at most 30 days")
        );
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Fault {
        #[serde(rename = "latency", alias = "latency_ms", with = "millis")]
        latency_ms: u64,
        #[serde(rename = "delay", alias = "delay_us", with = "micros")]
        delay_us: u64,
        #[serde(rename = "rate", alias = "rate_bytes_per_sec", with = "rate")]
        rate_bytes_per_sec: u64,
        #[serde(with = "bytes")]
        average: u64,
    }

    #[test]
    fn fault_parameters_take_units_and_the_older_integer_keys() {
        let want = Fault {
            latency_ms: 250,
            delay_us: 50,
            rate_bytes_per_sec: 20 << 20,
            average: 16 << 10,
        };
        let text =
            "latency = \"250ms\"\ndelay = \"50us\"\nrate = \"20MiB/s\"\naverage = \"16KiB\"\n";
        assert_eq!(toml::from_str::<Fault>(text).unwrap(), want);
        let older =
            "latency_ms = 250\ndelay_us = 50\nrate_bytes_per_sec = 20971520\naverage = 16384\n";
        assert_eq!(toml::from_str::<Fault>(older).unwrap(), want);
        // Written back with units, under the new keys, and read again.
        let written = toml::to_string(&want).unwrap();
        assert!(written.contains("latency = \"250ms\""), "{written}");
        assert!(written.contains("rate = \"20MiB/s\""), "{written}");
        assert_eq!(toml::from_str::<Fault>(&written).unwrap(), want);
    }

    #[test]
    fn a_duration_finer_than_its_field_is_refused() {
        let text = "latency = \"1500us\"\ndelay = \"1us\"\nrate = \"1MiB/s\"\naverage = 1\n";
        let e = toml::from_str::<Fault>(text).unwrap_err().to_string();
        assert!(e.contains("not a whole number of ms"), "{e}");
    }
}
