//! NMEA 0183 sentence parsing: checksum, talker, and the fix-related
//! sentences (GGA, RMC, GSA, GSV, VTG, GLL, GST, ZDA, GNS). Anything else is
//! reported as `Other` so the caller can count it; nothing here panics on input.

/// Why a line is not a usable sentence (each is counted by the service).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NmeaError {
    /// Not starting with `$`/`!` (gpsd `#` comments, binary, garbage).
    #[error("not an NMEA sentence")]
    NotNmea,
    /// `*hh` present and wrong.
    #[error("checksum mismatch")]
    Checksum,
    /// Too short, not ASCII, or a field that reads as infinite or NaN.
    #[error("malformed sentence")]
    Malformed,
}

/// UTC time of day in seconds.
pub type TimeOfDay = f64;

#[derive(Debug, Clone, PartialEq)]
pub enum Sentence {
    Gga {
        time: Option<TimeOfDay>,
        pos: Option<(f64, f64)>,
        quality: u8,
        sats: Option<u8>,
        hdop: Option<f64>,
        alt_msl: Option<f64>,
        geoid_sep: Option<f64>,
    },
    Rmc {
        time: Option<TimeOfDay>,
        valid: bool,
        pos: Option<(f64, f64)>,
        speed_knots: Option<f64>,
        track: Option<f64>,
        date: Option<(u32, u32, i32)>,
    },
    Gsa {
        mode: Option<u8>,
        pdop: Option<f64>,
        hdop: Option<f64>,
        vdop: Option<f64>,
    },
    Gsv,
    Vtg {
        track: Option<f64>,
        speed_knots: Option<f64>,
        speed_kmh: Option<f64>,
    },
    Gll {
        time: Option<TimeOfDay>,
        valid: bool,
        pos: Option<(f64, f64)>,
    },
    Gst {
        time: Option<TimeOfDay>,
    },
    Zda {
        time: Option<TimeOfDay>,
        date: Option<(u32, u32, i32)>,
    },
    Gns {
        time: Option<TimeOfDay>,
        pos: Option<(f64, f64)>,
        valid: bool,
        alt_msl: Option<f64>,
        geoid_sep: Option<f64>,
    },
    /// A valid sentence this service does not use (vendor `$P...`, AIS, TXT, ...).
    Other,
}

impl Sentence {
    /// The time of day the sentence carries, if any (cycle detection).
    pub fn time(&self) -> Option<TimeOfDay> {
        match self {
            Sentence::Gga { time, .. }
            | Sentence::Rmc { time, .. }
            | Sentence::Gll { time, .. }
            | Sentence::Gst { time, .. }
            | Sentence::Zda { time, .. }
            | Sentence::Gns { time, .. } => *time,
            _ => None,
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Parses one sentence (without line terminator). A missing `*hh` is
/// accepted, as gpsd does for receivers that omit it.
pub fn parse(line: &[u8]) -> Result<(String, Sentence), NmeaError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let body = match line.first() {
        Some(b'$') | Some(b'!') => &line[1..],
        _ => return Err(NmeaError::NotNmea),
    };
    let (body, checksum) = match body.iter().rposition(|&b| b == b'*') {
        Some(star) => (&body[..star], Some(&body[star + 1..])),
        None => (body, None),
    };
    if let Some(ck) = checksum {
        let ck = ck.trim_ascii_end();
        if ck.len() < 2 {
            return Err(NmeaError::Malformed);
        }
        let want = hex(ck[0]).zip(hex(ck[1])).map(|(h, l)| h << 4 | l).ok_or(NmeaError::Malformed)?;
        let got = body.iter().fold(0u8, |acc, b| acc ^ b);
        if want != got {
            return Err(NmeaError::Checksum);
        }
    }
    if !body.is_ascii() {
        return Err(NmeaError::Malformed);
    }
    let text = std::str::from_utf8(body).map_err(|_| NmeaError::Malformed)?;
    let f = fields(text);
    // NMEA numbers are plain decimals: one that reads as infinite or NaN
    // (`1e400`, `inf`, `nan`) is a corrupt field, not a missing one. Only a
    // field with a letter or over 300 characters can read so: the others
    // are not parsed here.
    if f.iter().any(|v| {
        (v.len() > 300 || v.bytes().any(|b| b.is_ascii_alphabetic()))
            && v.trim().parse::<f64>().is_ok_and(|x| !x.is_finite())
    }) {
        return Err(NmeaError::Malformed);
    }
    let head = f[0];
    if head.len() < 5 || head.starts_with('P') || line[0] == b'!' {
        return Ok((head.to_owned(), Sentence::Other));
    }
    let kind = &head[head.len() - 3..];
    let g = |i: usize| f.get(i).copied().unwrap_or("");
    let sentence = match kind {
        "GGA" => Sentence::Gga {
            time: time_of_day(g(1)),
            pos: position(g(2), g(3), g(4), g(5)),
            quality: g(6).parse().unwrap_or(0),
            sats: g(7).parse().ok(),
            hdop: num(g(8)),
            alt_msl: num(g(9)),
            geoid_sep: num(g(11)),
        },
        "RMC" => Sentence::Rmc {
            time: time_of_day(g(1)),
            valid: g(2) == "A",
            pos: position(g(3), g(4), g(5), g(6)),
            speed_knots: num(g(7)),
            track: num(g(8)),
            date: ddmmyy(g(9)),
        },
        "GSA" => Sentence::Gsa {
            mode: g(2).parse().ok(),
            pdop: num(g(15)),
            hdop: num(g(16)),
            vdop: num(g(17).split('*').next().unwrap_or("")),
        },
        "GSV" => Sentence::Gsv,
        "VTG" => {
            // Old-style VTG has no unit letters: track, magnetic, knots, km/h.
            if g(2) == "T" || g(6) == "N" || g(8) == "K" {
                Sentence::Vtg { track: num(g(1)), speed_knots: num(g(5)), speed_kmh: num(g(7)) }
            } else {
                Sentence::Vtg { track: num(g(1)), speed_knots: num(g(3)), speed_kmh: num(g(4)) }
            }
        }
        "GLL" => Sentence::Gll {
            time: time_of_day(g(5)),
            valid: g(6) == "A" || g(6).is_empty(),
            pos: position(g(1), g(2), g(3), g(4)),
        },
        "GST" => Sentence::Gst { time: time_of_day(g(1)) },
        "ZDA" => Sentence::Zda {
            time: time_of_day(g(1)),
            date: match (g(2).parse::<u32>(), g(3).parse::<u32>(), g(4).parse::<i32>()) {
                (Ok(d), Ok(m), Ok(y)) if (1..=31).contains(&d) && (1..=12).contains(&m) => Some((d, m, y)),
                _ => None,
            },
        },
        "GNS" => Sentence::Gns {
            time: time_of_day(g(1)),
            pos: position(g(2), g(3), g(4), g(5)),
            valid: g(6).chars().any(|c| c != 'N'),
            alt_msl: num(g(9)),
            geoid_sep: num(g(10)),
        },
        _ => Sentence::Other,
    };
    Ok((head.to_owned(), sentence))
}

fn num(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// `hhmmss.ss` to seconds of day.
pub fn time_of_day(s: &str) -> Option<TimeOfDay> {
    if s.len() < 6 || !s.is_char_boundary(2) || !s.is_char_boundary(4) {
        return None;
    }
    let h: u32 = s[0..2].parse().ok()?;
    let m: u32 = s[2..4].parse().ok()?;
    let sec: f64 = s[4..].parse().ok()?;
    (h < 24 && m < 60 && (0.0..61.0).contains(&sec)).then(|| f64::from(h * 3600 + m * 60) + sec)
}

/// `ddmmyy` with the NMEA century rule (two-digit years < 80 are 20xx).
fn ddmmyy(s: &str) -> Option<(u32, u32, i32)> {
    if s.len() != 6 {
        return None;
    }
    let d: u32 = s.get(0..2)?.parse().ok()?;
    let m: u32 = s.get(2..4)?.parse().ok()?;
    let y: i32 = s.get(4..6)?.parse().ok()?;
    ((1..=31).contains(&d) && (1..=12).contains(&m)).then_some((d, m, if y < 80 { 2000 + y } else { 1900 + y }))
}

/// `ddmm.mmmm,N,dddmm.mmmm,E` to signed degrees.
fn position(lat: &str, ns: &str, lon: &str, ew: &str) -> Option<(f64, f64)> {
    let dm = |s: &str, deg_digits: usize| -> Option<f64> {
        let dot = s.find('.').unwrap_or(s.len());
        if dot < deg_digits || !s.is_char_boundary(dot - 2) {
            return None;
        }
        let deg: f64 = s[..dot - 2].parse().ok()?;
        let min: f64 = s[dot - 2..].parse().ok()?;
        (min < 60.0).then_some(deg + min / 60.0)
    };
    let mut la = dm(lat, 3)?;
    let mut lo = dm(lon, 3)?;
    match ns {
        "S" => la = -la,
        "N" => {}
        _ => return None,
    }
    match ew {
        "W" => lo = -lo,
        "E" => {}
        _ => return None,
    }
    ((-90.0..=90.0).contains(&la) && (-180.0..=180.0).contains(&lo)).then_some((la, lo))
}

/// The comma-separated fields of a sentence's text. Splits on the byte:
/// `str::split(',')` searches with `memchr`, which compiled to wasm32 reads
/// 4 bytes at a time and costs more than the short fields it skips (a comma
/// is ASCII, so every piece is valid UTF-8).
pub fn fields(text: &str) -> Vec<&str> {
    let mut out = Vec::with_capacity(24);
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if b == b',' {
            out.push(&text[start..i]);
            start = i + 1;
        }
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn fields_split_like_str_split(text in "[a-z0-9,.*é€ -]{0,40}") {
            proptest::prop_assert_eq!(fields(&text), text.split(',').collect::<Vec<_>>());
        }
    }

    #[test]
    fn fields_keep_empty_ends() {
        assert_eq!(fields(""), vec![""]);
        assert_eq!(fields(",a,,b,"), vec!["", "a", "", "b", ""]);
    }

    #[test]
    fn huge_or_spelled_out_numbers_are_corrupt() {
        for bad in ["$GPGGA,1e400,3747.0873,S", "$GPGGA,inf,3747.0873,S", "$GPGGA,NaN,3747.0873,S"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        let long = format!("$GPGGA,1{},3747.0873,S", "0".repeat(320));
        assert!(parse(long.as_bytes()).is_err(), "a 321-digit number is infinite");
    }

    #[test]
    fn gga_with_checksum() {
        let (head, s) =
            parse(b"$GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000*7D").expect("valid");
        assert_eq!(head, "GPGGA");
        match s {
            Sentence::Gga { time, pos: Some((lat, lon)), quality, alt_msl, geoid_sep, .. } => {
                assert_eq!(time, Some(3.0 * 3600.0 + 7.0 * 60.0 + 19.0));
                assert!((lat + 37.784788333).abs() < 1e-8 && (lon - 175.314896667).abs() < 1e-8);
                assert_eq!((quality, alt_msl, geoid_sep), (1, Some(59.9), Some(23.7)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_checksum_and_garbage_are_errors_not_panics() {
        assert_eq!(parse(b"$GPGGA,1,2,3*00").unwrap_err(), NmeaError::Checksum);
        assert_eq!(parse(b"# gpsd header").unwrap_err(), NmeaError::NotNmea);
        assert_eq!(parse(b"$GPGGA*Z").unwrap_err(), NmeaError::Malformed);
        assert!(matches!(parse(b"$PGRME,15.0,M,45.0,M,25.0,M*1C"), Ok((_, Sentence::Other)) | Err(_)));
        for junk in [&b"$\xff\xfe*00"[..], b"$GPRMC,99,A,9999.9,N,x,E", b"$GPGGA,,,,,,,,,,,,,,", b"$GP"] {
            let _ = parse(junk);
        }
    }
}

