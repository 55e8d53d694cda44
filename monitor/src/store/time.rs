//! Points in time as users write them: RFC 3339 (`2026-11-22T02:00:00Z`,
//! `2026-11-22T03:00:00+01:00`), a duration before now (`2h`, `30m`,
//! `1h 30m`, `7d`), `now`, or Unix nanoseconds.
use time::format_description::well_known::Rfc3339;

/// Parses a point in time relative to `now` (Unix nanoseconds).
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(
            "empty; give RFC 3339 (2026-11-22T02:00:00Z) or a duration before now (2h)".into(),
        );
    }
    if t == "now" {
        return Ok(now);
    }
    if let Ok(dt) = time::OffsetDateTime::parse(t, &Rfc3339) {
        return i64::try_from(dt.unix_timestamp_nanos())
            .map_err(|_| format!("{t:?} is out of range"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) && t.len() > 12 {
        return t.parse::<i64>().map_err(|e| format!("{t:?}: {e}"));
    }
    let ago = t.strip_suffix(" ago").unwrap_or(t);
    match humantime::parse_duration(ago) {
        Ok(d) => {
            let n = i64::try_from(d.as_nanos()).map_err(|_| format!("{t:?} is too long"))?;
            Ok(now.saturating_sub(n))
        }
        Err(e) => Err(format!(
            "{t:?} is neither RFC 3339 (2026-11-22T02:00:00Z) nor a duration before now (2h, 30m): {e}"
        )),
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
        return Err(("until", format!("{until:?} is before since ({since:?})")));
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
    fn window_checks_order_and_names_the_field() {
        assert_eq!(parse_window("2h", "", NOW).unwrap().1, NOW);
        assert_eq!(parse_window("1h", "2h", NOW).unwrap_err().0, "until");
        assert_eq!(parse_window("x", "", NOW).unwrap_err().0, "since");
    }
}
