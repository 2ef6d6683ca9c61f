//! Timestamps on the wire: RFC 3339, UTC, millisecond precision, `Z` suffix.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with millisecond precision, written as `2026-11-24T10:00:00.123Z`.
///
/// Sub-millisecond digits are dropped when the value is made, so a timestamp
/// read back from the database equals the one that was sent live.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[cfg_attr(feature = "ts", ts(type = "string"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// The current time, truncated to milliseconds.
    pub fn now() -> Self {
        Self::from_datetime(Utc::now())
    }

    /// Wraps a chrono value, truncating it to milliseconds.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        let millis = at.nanosecond() / 1_000_000 * 1_000_000;
        Self(at.with_nanosecond(millis).unwrap_or(at))
    }

    /// The chrono value.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn millis_since(&self, earlier: Timestamp) -> i64 {
        (self.0 - earlier.0).num_milliseconds().max(0)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl From<DateTime<Utc>> for Timestamp {
    fn from(at: DateTime<Utc>) -> Self {
        Self::from_datetime(at)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|at| Self::from_datetime(at.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_is_written_in_utc_with_milliseconds() {
        let at = DateTime::parse_from_rfc3339("2026-11-24T11:00:00.123456+01:00")
            .map(|at| Timestamp::from_datetime(at.with_timezone(&Utc)));
        let json = serde_json::to_string(&at.ok()).ok();
        assert_eq!(json.as_deref(), Some("\"2026-11-24T10:00:00.123Z\""));
    }
}
