//! A date or time as a user gives it (`--start`, `--end`): a time, with or without an offset,
//! or one relative to now (`now`, `today`, `yesterday`, `-7d`) that a job resolves once.

use chrono::{DateTime, NaiveDate, Utc};

/// A date or time as given: a time, or one relative to "now" that is resolved by PostHog's
/// clock when a job starts (and kept in its state, so that its later runs keep it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum When {
    At(DateTime<Utc>),
    /// A date and time given without an offset, read as UTC (and said so).
    Naive(DateTime<Utc>, String),
    /// `now`, `today` and `yesterday` (UTC midnights), or `-7d`: now minus this long.
    Now,
    Today,
    Yesterday,
    Ago(chrono::Duration, String),
}

impl When {
    /// The time it stands for, with `now` PostHog's current time.
    pub(crate) fn resolve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let midnight = |t: DateTime<Utc>| {
            t.date_naive()
                .and_hms_opt(0, 0, 0)
                .expect("midnight exists")
                .and_utc()
        };
        crate::event::to_micros(match self {
            When::At(t) | When::Naive(t, _) => *t,
            When::Now => now,
            When::Today => midnight(now),
            When::Yesterday => midnight(now) - chrono::Duration::days(1),
            When::Ago(d, _) => now - *d,
        })
    }

    pub(crate) fn is_relative(&self) -> bool {
        !matches!(self, When::At(_) | When::Naive(..))
    }

    /// What was given without an offset, if so.
    pub(crate) fn naive(&self) -> Option<&str> {
        match self {
            When::Naive(_, text) => Some(text),
            _ => None,
        }
    }

    /// How it is part of a job's identity: the time itself, or the words given (`--end now`
    /// is the same job on every rerun, however the time moves on).
    pub(crate) fn identity(&self) -> String {
        match self {
            When::At(t) | When::Naive(t, _) => crate::event::format_ts(t),
            When::Now => "now".into(),
            When::Today => "today".into(),
            When::Yesterday => "yesterday".into(),
            When::Ago(_, text) => text.clone(),
        }
    }
}

/// A time (see [`parse_time`]), or `now`, `today`, `yesterday`, `-7d` (s, m, h, d, w).
pub(crate) fn parse_when(text: &str) -> Result<When, String> {
    let t = text.trim();
    match t.to_ascii_lowercase().as_str() {
        "now" => return Ok(When::Now),
        "today" => return Ok(When::Today),
        "yesterday" => return Ok(When::Yesterday),
        _ => {}
    }
    if let Some(ago) = t.strip_prefix('-') {
        let split = ago.find(|c: char| !c.is_ascii_digit()).unwrap_or(ago.len());
        let (n, unit) = ago.split_at(split);
        let n: i64 = n.parse().map_err(|_| parse_time(t).unwrap_err())?;
        let d = match unit {
            "s" => chrono::Duration::try_seconds(n),
            "m" => chrono::Duration::try_minutes(n),
            "h" => chrono::Duration::try_hours(n),
            "d" => chrono::Duration::try_days(n),
            "w" => chrono::Duration::try_weeks(n),
            _ => None,
        }
        .filter(|d| *d <= chrono::Duration::days(36_500))
        .ok_or_else(|| parse_time(t).unwrap_err())?;
        return Ok(When::Ago(d, format!("-{n}{unit}")));
    }
    let at = parse_time(t)?;
    // (A date alone is midnight UTC by definition; a time without offset is an assumption.)
    let naive = NaiveDate::parse_from_str(t, "%Y-%m-%d").is_err()
        && DateTime::parse_from_rfc3339(t).is_err();
    Ok(if naive {
        When::Naive(at, t.to_string())
    } else {
        When::At(at)
    })
}

/// `YYYY-MM-DD` (midnight UTC), RFC 3339, or a date and time without an offset (taken as
/// UTC: `2024-01-31T12:00:00`, `2024-01-31 12:00`), to the microsecond (PostHog's precision: a
/// finer bound would not be the one PostHog compares with).
pub(crate) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(crate::event::to_micros(t.with_timezone(&Utc)));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(crate::event::to_micros(t.and_utc()));
        }
    }
    Err(format!(
        "{text:?} is not a date; accepted: a date (2024-01-31, midnight UTC), a time with its offset (2024-01-31T12:00:00Z, 2024-01-31T14:00:00+02:00) or without one, taken as UTC (2024-01-31T12:00:00, 2024-01-31 12:00), or now, today, yesterday, -7d (also -30m, -12h, -2w), by PostHog's clock when the job starts"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times_parse_to_utc() {
        assert_eq!(
            parse_time("2024-01-31").unwrap().to_rfc3339(),
            "2024-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("2024-01-31T12:00:00+02:00")
                .unwrap()
                .to_rfc3339(),
            "2024-01-31T10:00:00+00:00"
        );
        assert!(parse_time("31/01/2024").unwrap_err().contains("2024-01-31"));
    }
}
