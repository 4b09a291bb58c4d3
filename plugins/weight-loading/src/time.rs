//! Site-local timestamps `YYYY-MM-DD HH:MM:SS` (no zone) as seconds on a
//! civil-time axis. Only differences and order matter to the service, so
//! the axis is the proleptic Gregorian calendar treated as UTC.

use outpost_sdk::civil::{civil_from_days, days_from_civil, days_in_month};

/// Parses `YYYY-MM-DD HH:MM:SS` (a `T` separator is also accepted).
pub fn parse(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = &b[r];
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter().try_fold(0i64, |acc, d| Some(acc * 10 + i64::from(d - b'0')))
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Formats seconds back to `YYYY-MM-DD HH:MM:SS`.
pub fn format(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        for s in ["2022-11-07 08:22:49", "2000-02-29 23:59:59", "1970-01-01 00:00:00", "2100-12-31 12:00:00"] {
            assert_eq!(format(parse(s).expect(s)), s);
        }
        assert_eq!(parse("1970-01-02 00:00:01"), Some(86_401));
        assert_eq!(parse("2022-11-07T08:22:49"), parse("2022-11-07 08:22:49"));
        for bad in [
            "2022-11-07",
            "2022-13-01 00:00:00",
            "2022-02-29 00:00:00",
            "2022-11-07 24:00:00",
            "2022-11-0x 00:00:00",
            "11/7/2022 8:00",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
