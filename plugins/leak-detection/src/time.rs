//! Network-local timestamps `YYYY-MM-DD HH:MM` as minutes since 1970-01-01 00:00 (no zone).

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

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
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
