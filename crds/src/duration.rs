//! Durations as Istio's CRDs spell them: Go duration strings such as `10s`, `1.5s`,
//! `100ms` or `1h30m`, which is what the CRD's CEL rule `duration(self)` accepts.

use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The syntax `Duration` accepts, as a regular expression for CRD schemas where a CEL
/// rule would cost too much (see `crd::demote_list_cel`).
pub const PATTERN: &str = r"^(0|\+?(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$";

/// The CEL rule Istio's CRD puts on every duration, and its message.
pub const CEL_RULE: &str = "duration(self) >= duration('1ms')";
pub const CEL_MESSAGE: &str = "must be a valid duration greater than 1ms";

/// A non-negative duration parsed once from its string form. The original text is
/// kept so that a round trip through our types writes back exactly what the user wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duration {
    value: std::time::Duration,
    text: String,
}

/// Why a duration string was refused; the message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDurationError {
    #[error("empty duration: use a number with a unit, such as 10s, 1.5s or 100ms")]
    Empty,
    #[error(
        "invalid duration {0:?}: use a number with a unit (h, m, s, ms, us, ns), such as 10s, 1.5s or 100ms"
    )]
    Invalid(String),
    #[error("invalid duration {0:?}: negative durations are not allowed")]
    Negative(String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

impl Duration {
    pub fn as_std(&self) -> std::time::Duration {
        self.value
    }

    pub fn from_std(value: std::time::Duration) -> Self {
        Self {
            text: format_go(value),
            value,
        }
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Self::from_std(value)
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_go(s).map(|value| Self {
            value,
            text: s.to_owned(),
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses Go's `time.ParseDuration` syntax, restricted to non-negative values.
fn parse_go(s: &str) -> Result<std::time::Duration, ParseDurationError> {
    let invalid = || ParseDurationError::Invalid(s.to_owned());
    let mut rest = match s {
        "" => return Err(ParseDurationError::Empty),
        "0" | "+0" => return Ok(std::time::Duration::ZERO),
        _ if s.starts_with('-') => return Err(ParseDurationError::Negative(s.to_owned())),
        _ => s.strip_prefix('+').unwrap_or(s),
    };
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (num, after) = rest.split_at(num_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(invalid()),
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(invalid());
        }
        let overflow = || ParseDurationError::Overflow(s.to_owned());
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = int.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // Fractional digits beyond nanosecond precision are dropped, as Go does.
        let mut scale = unit_nanos;
        for digit in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            nanos += u128::from(digit - b'0') * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(overflow)?;
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| ParseDurationError::Overflow(s.to_owned()))?;
    #[allow(clippy::cast_possible_truncation)] // remainder of a division by 1e9 fits in u32
    let subsec = (total_nanos % 1_000_000_000) as u32;
    Ok(std::time::Duration::new(secs, subsec))
}

/// Formats like Go's `Duration.String` for the common cases (`1h30m0s` becomes `1h30m`).
fn format_go(d: std::time::Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if !nanos.is_multiple_of(1_000_000_000) {
        if nanos.is_multiple_of(1_000_000) && nanos < 1_000_000_000 {
            return format!("{}ms", nanos / 1_000_000);
        }
        let secs = d.as_secs_f64();
        return format!("{secs}s");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 || (unit == "s" && out.is_empty()) {
            out.push_str(&value.to_string());
            out.push_str(unit);
        }
    }
    out
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Istio's CRD shape: a string checked by the API server with CEL.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "x-kubernetes-validations": [{"rule": CEL_RULE, "message": CEL_MESSAGE}]
        })
    }
}

/// Schema for the durations where Istio accepts `0s` (cookie TTL: a session cookie;
/// TCP idle timeout: disabled), so only the syntax is checked.
pub fn schema_allowing_zero(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "string", "pattern": PATTERN})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u128 {
        s.parse::<Duration>().unwrap().as_std().as_millis()
    }

    #[test]
    fn parses_istio_forms() {
        assert_eq!(ms("10s"), 10_000);
        assert_eq!(ms("1.5s"), 1_500);
        assert_eq!(ms("100ms"), 100);
        assert_eq!(ms("3m"), 180_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms(".5s"), 500);
        assert_eq!(ms("0"), 0);
        assert_eq!(
            "1500us".parse::<Duration>().unwrap().as_std().as_micros(),
            1_500
        );
    }

    #[test]
    fn refuses_bad_input_with_a_clear_message() {
        for bad in ["", "10", "s", "10x", "1..5s", "ten seconds", "1s5", "."] {
            let err = bad.parse::<Duration>().unwrap_err();
            assert!(err.to_string().contains("duration"), "{bad}: {err}");
        }
        assert!(matches!(
            "-1s".parse::<Duration>(),
            Err(ParseDurationError::Negative(_))
        ));
        assert!(matches!(
            "99999999999999999999999h".parse::<Duration>(),
            Err(ParseDurationError::Overflow(_))
        ));
    }

    #[test]
    fn round_trips_the_original_text() {
        let d: Duration = serde_json::from_str("\"1.50s\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1.50s\"");
    }

    #[test]
    fn formats_like_go() {
        let f = |n| Duration::from_std(std::time::Duration::from_millis(n)).to_string();
        assert_eq!(f(0), "0s");
        assert_eq!(f(100), "100ms");
        assert_eq!(f(30_000), "30s");
        assert_eq!(f(5_400_000), "1h30m");
        assert_eq!(f(1_500), "1.5s");
    }

    #[test]
    fn schema_pattern_agrees_with_the_parser() {
        let re =
            jsonschema::validator_for(&serde_json::json!({"type": "string", "pattern": PATTERN}))
                .unwrap();
        let samples = [
            "10s",
            "1.5s",
            "100ms",
            "3m",
            "1h30m",
            ".5s",
            "0",
            "1500us",
            "2µs",
            "+1s",
            "1.s",
            "",
            "10",
            "s",
            "10x",
            "1..5s",
            "ten seconds",
            "1s5",
            ".",
            "-1s",
            "1 s",
            "0s",
        ];
        for s in samples {
            let parsed = s.parse::<Duration>().is_ok();
            assert_eq!(
                re.is_valid(&serde_json::json!(s)),
                parsed,
                "{s:?}: parser says {parsed}"
            );
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A small exhaustive sweep over short strings from the parser's alphabet.
        let alphabet = ["0", "9", ".", "s", "m", "h", "u", "n", "µ", "+", "-", "x"];
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            inputs = inputs
                .iter()
                .flat_map(|p| alphabet.iter().map(move |c| format!("{p}{c}")))
                .collect();
            for i in &inputs {
                let _ = i.parse::<Duration>();
            }
        }
    }
}
