//! Network-local timestamps `YYYY-MM-DD HH:MM` as minutes since 1970-01-01 00:00 (no zone).

use outpost_sdk::civil::{civil_from_days, days_from_civil, days_in_month};

/// Parses `YYYY-MM-DD HH:MM` (a trailing `:SS` of `00` is accepted).
pub fn parse_minutes(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !(b.len() == 16 || (b.len() == 19 && &b[16..] == b":00")) || !s.is_ascii() {
        return None;
    }
    if b[4] != b'-' || b[7] != b'-' || b[10] != b' ' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 1440 + h * 60 + mi)
}

/// Formats minutes since 1970 as `YYYY-MM-DD HH:MM`.
pub fn format_minutes(m: i64) -> String {
    let days = m.div_euclid(1440);
    let rem = m.rem_euclid(1440);
    let (y, mo, d) = civil_from_days(days);
    format!("{y:04}-{mo:02}-{d:02} {:02}:{:02}", rem / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_known_values() {
        // 2019-01-01 00:00 is 17,897 days after 1970-01-01 (date -d 2019-01-01 +%s / 86400).
        assert_eq!(parse_minutes("2019-01-01 00:00"), Some(17_897 * 1440));
        assert_eq!(parse_minutes("2019-03-01 00:05"), Some((17_897 + 59) * 1440 + 5));
        for m in [0, 17_897 * 1440 + 1439, 18_321 * 1440 + 7] {
            assert_eq!(parse_minutes(&format_minutes(m)), Some(m));
        }
        for bad in ["2019-02-29 00:00", "2019-01-01 24:00", "2019-1-01 00:00", "", "2019-01-01T00:00"] {
            assert_eq!(parse_minutes(bad), None, "{bad}");
        }
    }
}
