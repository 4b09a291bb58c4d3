//! Property tests of every parser: whatever the bytes, nothing panics, and
//! what a receiver would send is read back exactly.
//!
//! 512 cases per property in CI (a few seconds); `PROPTEST_CASES=100000
//! cargo test -p positioning --test properties --release` for a long run.

use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use positioning::nmea::{parse, NmeaError, Sentence};
use positioning::ubx::{Frame, NavPvt, StreamDecoder, MAX_BUFFER};
use positioning::Positioning;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn with_checksum(body: &str) -> String {
    let ck = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{ck:02X}")
}

/// A field as receivers (and broken ones) write them.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[0-9]{1,9}",
        "-?[0-9]{1,5}\\.[0-9]{0,6}",
        "[NSEWAVMTKD]",
        "[0-9.eE+-]{1,8}",
        "[ -~&&[^,*$]]{0,12}",
        Just("1e400".to_owned()),
        Just("nan".to_owned()),
    ]
}

/// A sentence of a type the service reads, with random fields and a right checksum.
fn sentence() -> impl Strategy<Value = String> {
    let kinds = prop_oneof![
        Just("GPGGA"),
        Just("GPRMC"),
        Just("GPGSA"),
        Just("GPGSV"),
        Just("GPVTG"),
        Just("GPGLL"),
        Just("GPGST"),
        Just("GPZDA"),
        Just("GNGNS"),
        Just("GNRMC"),
        Just("PUBX"),
        Just("GPTXT")
    ];
    (kinds, proptest::collection::vec(field(), 0..22)).prop_map(|(k, f)| with_checksum(&format!("{k},{}", f.join(","))))
}

/// A UBX frame's bytes.
fn ubx(class: u8, id: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0xB5, 0x62, class, id];
    f.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    f.extend_from_slice(payload);
    let (a, b) = f[2..].iter().fold((0u8, 0u8), |(a, b), &x| {
        let a = a.wrapping_add(x);
        (a, b.wrapping_add(a))
    });
    f.extend_from_slice(&[a, b]);
    f
}

#[derive(Debug, Clone)]
struct Gga {
    h: u32,
    m: u32,
    s: u32,
    cs: u32,
    lat_deg: u32,
    lat_min_e4: u32,
    south: bool,
    lon_deg: u32,
    lon_min_e4: u32,
    west: bool,
    quality: u8,
    sats: u8,
    alt_dm: i32,
}

fn gga() -> impl Strategy<Value = Gga> {
    (
        (0u32..24, 0u32..60, 0u32..60, 0u32..100),
        (0u32..90, 0u32..600_000, any::<bool>()),
        (0u32..180, 0u32..600_000, any::<bool>()),
        (0u8..9, 0u8..40, -5000i32..90_000),
    )
        .prop_map(
            |((h, m, s, cs), (lat_deg, lat_min_e4, south), (lon_deg, lon_min_e4, west), (quality, sats, alt_dm))| Gga {
                h,
                m,
                s,
                cs,
                lat_deg,
                lat_min_e4,
                south,
                lon_deg,
                lon_min_e4,
                west,
                quality,
                sats,
                alt_dm,
            },
        )
}

impl Gga {
    fn body(&self) -> String {
        format!(
            "GPGGA,{:02}{:02}{:02}.{:02},{:02}{:02}.{:04},{},{:03}{:02}.{:04},{},{},{:02},0.9,{:.1},M,-20.5,M,,",
            self.h,
            self.m,
            self.s,
            self.cs,
            self.lat_deg,
            self.lat_min_e4 / 10_000,
            self.lat_min_e4 % 10_000,
            if self.south { 'S' } else { 'N' },
            self.lon_deg,
            self.lon_min_e4 / 10_000,
            self.lon_min_e4 % 10_000,
            if self.west { 'W' } else { 'E' },
            self.quality,
            self.sats,
            f64::from(self.alt_dm) / 10.0,
        )
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nmea_parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
        let _ = parse(&bytes);
        let mut line = b"$GP".to_vec();
        line.extend_from_slice(&bytes);
        let _ = parse(&line);
    }

    #[test]
    fn nmea_parse_never_panics_on_sentences_with_right_checksums(s in sentence()) {
        // A right checksum always gets past the checksum check.
        prop_assert_ne!(parse(s.as_bytes()).err(), Some(NmeaError::Checksum));
    }

    #[test]
    fn a_generated_gga_parses_to_its_values(g in gga()) {
        let line = with_checksum(&g.body());
        let (head, s) = parse(line.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e:?} for {line}")))?;
        prop_assert_eq!(head, "GPGGA");
        let Sentence::Gga { time, pos, quality, sats, alt_msl, geoid_sep, .. } = s else {
            return Err(TestCaseError::fail(format!("not a GGA: {line}")));
        };
        let want_t = f64::from(g.h * 3600 + g.m * 60 + g.s) + f64::from(g.cs) / 100.0;
        prop_assert!(time.is_some_and(|t| (t - want_t).abs() < 1e-9), "{time:?} vs {want_t}");
        let sign = |neg: bool| if neg { -1.0 } else { 1.0 };
        let lat = sign(g.south) * (f64::from(g.lat_deg) + f64::from(g.lat_min_e4) / 1e4 / 60.0);
        let lon = sign(g.west) * (f64::from(g.lon_deg) + f64::from(g.lon_min_e4) / 1e4 / 60.0);
        let (plat, plon) = pos.ok_or_else(|| TestCaseError::fail(format!("no position in {line}")))?;
        prop_assert!((plat - lat).abs() < 1e-9 && (plon - lon).abs() < 1e-9, "{plat},{plon} vs {lat},{lon}");
        prop_assert_eq!((quality, sats), (g.quality, Some(g.sats)));
        prop_assert!(alt_msl.is_some_and(|a| (a - f64::from(g.alt_dm) / 10.0).abs() < 1e-9));
        prop_assert_eq!(geoid_sep, Some(-20.5));
    }

    #[test]
    fn a_generated_rmc_parses_to_its_values(
        g in gga(), valid in any::<bool>(), knots_e2 in 0u32..50_000, track_e2 in 0u32..36_000,
        (d, m, yy) in (1u32..=28, 1u32..=12, 0i32..100),
    ) {
        let body = format!(
            "GPRMC,{:02}{:02}{:02}.{:02},{},{:02}{:02}.{:04},{},{:03}{:02}.{:04},{},{}.{:02},{}.{:02},{:02}{:02}{:02},,,A",
            g.h, g.m, g.s, g.cs, if valid { 'A' } else { 'V' },
            g.lat_deg, g.lat_min_e4 / 10_000, g.lat_min_e4 % 10_000, if g.south { 'S' } else { 'N' },
            g.lon_deg, g.lon_min_e4 / 10_000, g.lon_min_e4 % 10_000, if g.west { 'W' } else { 'E' },
            knots_e2 / 100, knots_e2 % 100, track_e2 / 100, track_e2 % 100, d, m, yy,
        );
        let line = with_checksum(&body);
        let (_, s) = parse(line.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e:?} for {line}")))?;
        let Sentence::Rmc { time, valid: v, pos, speed_knots, track, date } = s else {
            return Err(TestCaseError::fail(format!("not an RMC: {line}")));
        };
        let want_t = f64::from(g.h * 3600 + g.m * 60 + g.s) + f64::from(g.cs) / 100.0;
        prop_assert!(time.is_some_and(|t| (t - want_t).abs() < 1e-9));
        prop_assert_eq!(v, valid);
        prop_assert!(pos.is_some());
        prop_assert!(speed_knots.is_some_and(|k| (k - f64::from(knots_e2) / 100.0).abs() < 1e-9));
        prop_assert!(track.is_some_and(|t| (t - f64::from(track_e2) / 100.0).abs() < 1e-9));
        // NMEA's century rule: two-digit years under 80 are 20xx.
        prop_assert_eq!(date, Some((d, m, if yy < 80 { 2000 + yy } else { 1900 + yy })));
    }

    #[test]
    fn a_wrong_checksum_or_one_changed_byte_is_rejected(g in gga(), delta in 1u8..=255, at in any::<prop::sample::Index>()) {
        let body = g.body();
        let ck = body.bytes().fold(0u8, |a, b| a ^ b);
        let wrong = format!("${body}*{:02X}", ck ^ delta);
        prop_assert_eq!(parse(wrong.as_bytes()).err(), Some(NmeaError::Checksum));
        // Any one body byte changed to another printable one: XOR differs.
        let mut bytes = body.into_bytes();
        let i = at.index(bytes.len());
        let was = bytes[i];
        let now = if was == b'~' { b'!' } else { was + 1 };
        prop_assume!(now != b'*' && now != b',' && was != b'*');
        bytes[i] = now;
        let mut line = vec![b'$'];
        line.extend_from_slice(&bytes);
        line.extend_from_slice(format!("*{ck:02X}").as_bytes());
        prop_assert_eq!(parse(&line).err(), Some(NmeaError::Checksum));
    }

    #[test]
    fn ubx_stream_never_panics_and_stays_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..40)) {
        let mut d = StreamDecoder::new();
        let mut out = Vec::new();
        let mut fed = 0u64;
        for c in &chunks {
            d.push(c, &mut out);
            fed += c.len() as u64;
        }
        d.finish();
        // Every byte is accounted for once: in a frame, skipped, dropped on overflow or truncated.
        let s = &d.stats;
        prop_assert!(s.skipped_bytes + s.overflow_bytes + s.truncated_bytes <= fed);
        prop_assert!(s.truncated_bytes <= MAX_BUFFER as u64);
        for f in &out {
            if let Frame::Ubx { class: 0x01, id: 0x07, payload } = f {
                let _ = NavPvt::parse(payload);
            }
            if let Frame::Nmea(line) = f {
                let _ = parse(line);
            }
        }
    }

    #[test]
    fn ubx_frames_and_nmea_lines_come_back_whatever_the_chunking(
        frames in proptest::collection::vec((any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..400)), 1..12),
        lines in proptest::collection::vec(sentence(), 0..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (i, (class, id, payload)) in frames.iter().enumerate() {
            stream.extend(ubx(*class, *id, payload));
            want.push(Frame::Ubx { class: *class, id: *id, payload: payload.clone() });
            if let Some(l) = lines.get(i) {
                stream.extend_from_slice(l.as_bytes());
                stream.extend_from_slice(b"\r\n");
                want.push(Frame::Nmea(l.as_bytes().to_vec()));
            }
        }
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        at.push(0);
        at.push(stream.len());
        at.sort_unstable();
        let mut d = StreamDecoder::new();
        let mut got = Vec::new();
        for w in at.windows(2) {
            d.push(&stream[w[0]..w[1]], &mut got);
        }
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(d.stats.skipped_bytes, 0);
        // One payload byte changed: that frame is not delivered as it was.
        let (class, id, payload) = &frames[0];
        if !payload.is_empty() {
            let mut bad = ubx(*class, *id, payload);
            bad[6] ^= 0x5A;
            let mut d = StreamDecoder::new();
            let mut got = Vec::new();
            d.push(&bad, &mut got);
            prop_assert!(!got.iter().any(|f| matches!(f, Frame::Ubx { .. })), "{got:?}");
            prop_assert_eq!(d.stats.ubx_bad_checksum, 1);
        }
    }

    #[test]
    fn a_nav_pvt_encoded_per_the_u_blox_layout_parses_to_its_values(
        itow in any::<u32>(), (year, month, day, hour, min, sec) in (1980u16..2100, 1u8..=12, 1u8..=31, 0u8..24, 0u8..60, 0u8..61),
        valid in 0u8..4, nano in -1_000_000_000i32..1_000_000_000, fix_type in 0u8..6, flags in any::<u8>(), num_sv in any::<u8>(),
        lon in -1_800_000_000i32..=1_800_000_000, lat in -900_000_000i32..=900_000_000,
        height in any::<i32>(), hmsl in any::<i32>(), hacc in any::<u32>(), vacc in any::<u32>(),
        vel_d in any::<i32>(), gspeed in any::<i32>(), head in any::<i32>(), extra in 0usize..16,
    ) {
        // UBX-NAV-PVT, u-blox 8 interface description: 92 bytes (84 on
        // protocol 14), little-endian; longer payloads from later versions.
        let mut p = vec![0u8; 92 + extra];
        p[0..4].copy_from_slice(&itow.to_le_bytes());
        p[4..6].copy_from_slice(&year.to_le_bytes());
        (p[6], p[7], p[8], p[9], p[10], p[11]) = (month, day, hour, min, sec, valid);
        p[16..20].copy_from_slice(&nano.to_le_bytes());
        (p[20], p[21], p[23]) = (fix_type, flags, num_sv);
        for (at, v) in [(24, lon), (28, lat), (32, height), (36, hmsl), (56, vel_d), (60, gspeed), (64, head)] {
            p[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        p[40..44].copy_from_slice(&hacc.to_le_bytes());
        p[44..48].copy_from_slice(&vacc.to_le_bytes());
        let n = NavPvt::parse(&p).ok_or_else(|| TestCaseError::fail("refused"))?;
        prop_assert_eq!((n.itow_ms, n.year, n.month, n.day, n.hour, n.min, n.sec), (itow, year, month, day, hour, min, sec));
        prop_assert_eq!((n.valid_date, n.valid_time, n.nano), (valid & 1 != 0, valid & 2 != 0, nano));
        prop_assert_eq!((n.fix_type, n.gnss_fix_ok, n.num_sv), (fix_type, flags & 1 != 0, num_sv));
        prop_assert_eq!((n.lon, n.lat), (f64::from(lon) * 1e-7, f64::from(lat) * 1e-7));
        prop_assert_eq!((n.height_m, n.hmsl_m), (f64::from(height) / 1e3, f64::from(hmsl) / 1e3));
        prop_assert_eq!((n.h_acc_m, n.v_acc_m), (f64::from(hacc) / 1e3, f64::from(vacc) / 1e3));
        prop_assert_eq!((n.vel_d_mps, n.g_speed_mps, n.head_mot_deg), (f64::from(vel_d) / 1e3, f64::from(gspeed) / 1e3, f64::from(head) * 1e-5));
        // Shorter than the oldest layout: refused, not read past the end.
        prop_assert!(NavPvt::parse(&p[..83]).is_none());
    }

    #[test]
    fn nav_pvt_parse_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = NavPvt::parse(&payload);
        for id in [0x02u8, 0x06, 0x07, 0x12, 0x20, 0x21, 0x03, 0x35] {
            let _ = positioning::ubx::nav_itow(0x01, id, &payload);
        }
    }

    #[test]
    fn the_service_survives_any_batch(
        msgs in proptest::collection::vec(
            (0usize..6, prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec(sentence(), 1..8).prop_map(|v| v.join("\r\n").into_bytes()),
            ]),
            1..12),
        nav in proptest::collection::vec((prop_oneof![Just(0x07u8), Just(0x06), Just(0x02), Just(0x12), Just(0x20)], proptest::collection::vec(any::<u8>(), 0..100)), 0..4),
    ) {
        let mut h = Harness::<Positioning>::with_acl("{}", &["svc/positioning/+/fix"]).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let topics = ["site/s/a/gnss/nmea", "site/s/b/gnss/ubx", "site/s/a/gnss/ubx", "x", "site/s/+/gnss/nmea", "site/s/c/gnss/nmea"];
        let mut batch: Vec<Message> = msgs.iter().map(|(t, p)| Message::new(topics[*t], p.clone())).collect();
        // UBX navigation frames with random payloads (right checksums).
        let mut ubx_bytes = Vec::new();
        for (id, p) in &nav {
            ubx_bytes.extend(ubx(0x01, *id, p));
        }
        batch.push(Message::new("site/s/b/gnss/ubx", ubx_bytes));
        let _ = h.send_batch(batch);
        let _ = h.tick(10_000);
        for (_, body) in h.take_published() {
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&v["class"], "TPV");
        }
    }
}
