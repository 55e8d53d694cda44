//! Points in time as users write them: RFC 3339 (`2026-11-22T02:00:00Z`,
//! `2026-11-22T03:00:00+01:00`), a date or a date and time in UTC
//! (`2026-11-22`, `2026-11-22 02:00`, `2026-11-22 02:00:00.5`), Unix
//! seconds (`1795308341`, `0` for the beginning), Unix nanoseconds (more
//! than 12 digits), a duration before now (`2h`, `30m`, `1h 30m`, `7d`,
//! `2h ago`), or `now`.
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

/// What every refusal shows, so the user sees a form that works.
const FORMS: &str = "give RFC 3339 (2026-11-22T02:00:00Z), a UTC date or date and time \
     (2026-11-22, 2026-11-22 02:00:00), Unix seconds (1795308341), or a duration before \
     now (2h, 30m, 7d)";

/// Parses a point in time relative to `now` (Unix nanoseconds).
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty; {FORMS}"));
    }
    if t == "now" {
        return Ok(now);
    }
    if let Ok(dt) = time::OffsetDateTime::parse(t, &Rfc3339) {
        return i64::try_from(dt.unix_timestamp_nanos())
            .map_err(|_| format!("{t:?} is out of range"));
    }
    if let Some(n) = utc_date_time(t) {
        return i64::try_from(n).map_err(|_| format!("{t:?} is out of range"));
    }
    if looks_like_a_date(t) {
        return Err(format!("{t:?}: {}; {FORMS}", date_fault(t)));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let n: i64 = t.parse().map_err(|e| format!("{t:?}: {e}"))?;
        // Up to 12 digits is Unix seconds (until the year 33658), more is
        // Unix nanoseconds (what the JSON output's `unix_nanos` carries);
        // milliseconds and microseconds would be ambiguous and are refused.
        return match t.len() {
            0..=12 => n
                .checked_mul(1_000_000_000)
                .ok_or_else(|| format!("{t:?} is out of range")),
            13..=16 => Err(format!(
                "{t:?} looks like Unix milliseconds or microseconds; give Unix seconds \
                 (1795308341) or nanoseconds (1795308341000000000)"
            )),
            _ => Ok(n),
        };
    }
    let ago = t.strip_suffix(" ago").unwrap_or(t);
    match humantime::parse_duration(ago) {
        Ok(d) => {
            let n = i64::try_from(d.as_nanos()).map_err(|_| format!("{t:?} is too long"))?;
            Ok(now.saturating_sub(n))
        }
        Err(e) => Err(format!("{t:?} is not a point in time ({e}); {FORMS}")),
    }
}

/// `2026-11-22`, `2026-11-22 02:00`, `2026-11-22T02:00:00`, with an
/// optional fraction of a second: a date and time without an offset, read
/// as UTC (the daemon's logs and every output are in UTC).
fn utc_date_time(t: &str) -> Option<i128> {
    let date = format_description!("[year]-[month]-[day]");
    if let Ok(d) = time::Date::parse(t, &date) {
        return Some(d.midnight().assume_utc().unix_timestamp_nanos());
    }
    let (d, clock) = t.split_once([' ', 'T'])?;
    let d = time::Date::parse(d, &date).ok()?;
    let forms = [
        format_description!("[hour]:[minute]"),
        format_description!("[hour]:[minute]:[second]"),
        format_description!("[hour]:[minute]:[second].[subsecond]"),
    ];
    let clock = forms
        .iter()
        .find_map(|f| time::Time::parse(clock.trim(), f).ok())?;
    Some(
        time::PrimitiveDateTime::new(d, clock)
            .assume_utc()
            .unix_timestamp_nanos(),
    )
}

/// Starts as a date does (`YYYY-`): meant as one, so its fault is a
/// date's, not that of a duration.
fn looks_like_a_date(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() > 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// Why `t`, written as a date (and maybe a time), is not one: the first
/// component out of range (`month 13 is out of range (1-12)`), or the
/// form that was expected.
fn date_fault(t: &str) -> String {
    let (d, clock) = match t.split_once([' ', 'T']) {
        Some((d, c)) => (d, Some(c.trim())),
        None => (t, None),
    };
    let num = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let parts: Vec<&str> = d.split('-').collect();
    let [Some(year), Some(month), Some(day)] = [
        parts.first().and_then(|p| num(p, 4)),
        parts.get(1).and_then(|p| num(p, 2)),
        parts.get(2).and_then(|p| num(p, 2)),
    ] else {
        return format!("{d:?} is not a date (YYYY-MM-DD)");
    };
    if parts.len() != 3 {
        return format!("{d:?} is not a date (YYYY-MM-DD)");
    }
    let Some(m) = u8::try_from(month)
        .ok()
        .and_then(|m| time::Month::try_from(m).ok())
    else {
        return format!("month {month} is out of range (1-12)");
    };
    let last = time::util::days_in_month(m, year as i32);
    if day == 0 || day > u32::from(last) {
        return format!("day {day} is out of range for {year}-{month:02} (1-{last})");
    }
    let Some(clock) = clock else {
        return format!("{t:?} is not a date (YYYY-MM-DD)");
    };
    // Without the offset (Z, +01:00) and the fraction of a second.
    let bare = clock
        .trim_end_matches(['Z', 'z'])
        .split(['+', '-'])
        .next()
        .unwrap_or("")
        .split('.')
        .next()
        .unwrap_or("");
    let hms: Vec<Option<u32>> = bare.split(':').map(|p| num(p, 2)).collect();
    if !(2..=3).contains(&hms.len()) || hms.iter().any(Option::is_none) {
        return format!(
            "{clock:?} is not a time of day (HH:MM, HH:MM:SS, or RFC 3339 with an offset)"
        );
    }
    for (v, (name, max)) in hms
        .iter()
        .flatten()
        .zip([("hour", 23), ("minute", 59), ("second", 59)])
    {
        if *v > max {
            return format!("{name} {v} is out of range (0-{max})");
        }
    }
    format!("{clock:?} is not a time of day (HH:MM, HH:MM:SS, or RFC 3339 with an offset)")
}

/// How an empty bound of a window reads in an error.
fn bound(s: &str, empty: &'static str) -> String {
    if s.trim().is_empty() {
        empty.into()
    } else {
        format!("{s:?}")
    }
}

/// A window [since, until) in Unix nanoseconds; `until` defaults to now.
pub fn parse_window(
    since: &str,
    until: &str,
    now: i64,
) -> Result<(i64, i64), (&'static str, String)> {
    let s = if since.trim().is_empty() {
        0
    } else {
        parse_time(since, now).map_err(|e| ("since", e))?
    };
    let u = if until.trim().is_empty() {
        now
    } else {
        parse_time(until, now).map_err(|e| ("until", e))?
    };
    if u < s {
        return Err((
            "until",
            format!(
                "{} is before since ({})",
                bound(until, "(now)"),
                bound(since, "(the beginning)")
            ),
        ));
    }
    Ok((s, u))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_308_341_000_000_000;

    #[test]
    fn accepts_rfc3339_durations_and_nanos() {
        assert_eq!(parse_time("2h", NOW).unwrap(), NOW - 7_200_000_000_000);
        assert_eq!(parse_time("30m ago", NOW).unwrap(), NOW - 1_800_000_000_000);
        assert_eq!(parse_time("now", NOW).unwrap(), NOW);
        assert_eq!(
            parse_time("2026-11-22T00:45:41Z", NOW).unwrap(),
            1_795_308_341_000_000_000
        );
        assert_eq!(
            parse_time("2026-11-22T01:45:41.5+01:00", NOW).unwrap(),
            1_795_308_341_500_000_000
        );
        assert_eq!(
            parse_time("1795308341000000001", NOW).unwrap(),
            1_795_308_341_000_000_001
        );
        assert!(parse_time("yesterday-ish", NOW).is_err());
        assert!(parse_time("", NOW).is_err());
    }

    #[test]
    fn accepts_what_people_type_dates_unix_seconds_and_zero() {
        // The beginning of time, not "0 seconds ago" (which read as now
        // and returned nothing, silently).
        assert_eq!(parse_time("0", NOW).unwrap(), 0);
        assert_eq!(parse_time("1795308341", NOW).unwrap(), NOW);
        assert_eq!(
            parse_time("2026-11-22", NOW).unwrap(),
            1_795_305_600_000_000_000
        );
        assert_eq!(parse_time("2026-11-22 00:45:41", NOW).unwrap(), NOW);
        assert_eq!(parse_time("2026-11-22T00:45:41", NOW).unwrap(), NOW);
        assert_eq!(
            parse_time("2026-11-22 00:45", NOW).unwrap(),
            NOW - 41_000_000_000
        );
        assert_eq!(
            parse_time("2026-11-22 00:45:41.25", NOW).unwrap(),
            NOW + 250_000_000
        );
        assert_eq!(parse_time("7d", NOW).unwrap(), NOW - 7 * 86_400_000_000_000);
    }

    #[test]
    fn refusals_show_a_form_that_works() {
        for bad in [
            "1795308341000",
            "2026-13-01",
            "2026-11-22 25:00",
            "tomorrow",
            "12 parsecs",
        ] {
            let e = parse_time(bad, NOW).unwrap_err();
            assert!(e.contains("1795308341"), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    /// A date with a component out of range says which, not where a
    /// duration's parser stumbled ("invalid character at 4").
    #[test]
    fn a_date_out_of_range_names_the_component() {
        let fault = |t: &str| {
            let e = parse_time(t, NOW).unwrap_err();
            assert!(!e.contains("invalid character"), "{e}");
            assert!(e.ends_with(FORMS), "{e}");
            e.strip_suffix(FORMS).unwrap().to_string()
        };
        assert_eq!(
            fault("2026-13-01"),
            "\"2026-13-01\": month 13 is out of range (1-12); "
        );
        assert_eq!(
            fault("2026-02-30"),
            "\"2026-02-30\": day 30 is out of range for 2026-02 (1-28); "
        );
        assert_eq!(
            fault("2026-11-22 25:00"),
            "\"2026-11-22 25:00\": hour 25 is out of range (0-23); "
        );
        assert_eq!(
            fault("2026-11-22T10:61:00Z"),
            "\"2026-11-22T10:61:00Z\": minute 61 is out of range (0-59); "
        );
        assert_eq!(
            fault("2026-11-22 noon"),
            "\"2026-11-22 noon\": \"noon\" is not a time of day (HH:MM, HH:MM:SS, or RFC 3339 with an offset); "
        );
        assert_eq!(
            fault("2026-1-22"),
            "\"2026-1-22\": \"2026-1-22\" is not a date (YYYY-MM-DD); "
        );
    }

    #[test]
    fn window_checks_order_and_names_the_field() {
        assert_eq!(
            parse_window("2027-01-01", "", NOW).unwrap_err(),
            (
                "until",
                "(now) is before since (\"2027-01-01\")".to_string()
            )
        );
        assert_eq!(parse_window("2h", "", NOW).unwrap().1, NOW);
        assert_eq!(parse_window("1h", "2h", NOW).unwrap_err().0, "until");
        assert_eq!(parse_window("x", "", NOW).unwrap_err().0, "since");
    }
}
