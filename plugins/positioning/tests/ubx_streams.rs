//! The UBX stream decoder against pyubx2 on its own test streams
//! (tests/data/pyubx2-ubx-logs), corrupted ones included. Expected frames
//! and values are parsed from pyubx2's own test file (`test_stream.py.txt`,
//! its `EXPECTED_RESULTS` lists); the two example recordings without such a
//! list are checked against pyubx2's decode (`expected_frames.json`).

use positioning::ubx::{Frame, HnrPvt, NavPosLlh, NavPvt, StreamDecoder, StreamStats};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/data/pyubx2-ubx-logs")).to_path_buf()
}

fn decode(data: &[u8], chunk: usize) -> (Vec<Frame>, StreamStats) {
    let mut d = StreamDecoder::new();
    let mut frames = Vec::new();
    for c in data.chunks(chunk) {
        d.push(c, &mut frames);
    }
    d.finish();
    (frames, d.stats)
}

/// One `def test...` of pyubx2's test_stream.py that reads a whole stream
/// and lists every frame it must yield (`EXPECTED_RESULTS`).
struct PyTest {
    name: String,
    stream: String,
    /// Protocols the test's `protfilter` keeps: (UBX, NMEA, RTCM3).
    keeps: (bool, bool, bool),
    /// The expected frames, in pyubx2's text form.
    expected: Vec<String>,
}

/// Parses test_stream.py.txt. Tests about errors (`quitonerror` other than
/// raise, `assertRaises`) or reading only part of a stream are left out.
fn pyubx2_tests() -> Vec<PyTest> {
    let text = std::fs::read_to_string(dir().join("test_stream.py.txt")).expect("test_stream.py.txt");
    // Python joins adjacent string literals: do the same first.
    let joined = regex_free_join(&text);
    let mut tests = Vec::new();
    for block in joined.split("\n    def ").skip(1) {
        let name = block.split('(').next().unwrap_or("").to_owned();
        let stream = match block.split("os.path.join(DIRNAME, \"").nth(1).and_then(|r| r.split('"').next()) {
            Some(s) => s.to_owned(),
            None => continue,
        };
        if !block.contains("EXPECTED_RESULTS = ")
            || block.contains("assertRaises")
            || block.contains("ERR_LOG")
            || block.contains("ERR_IGNORE")
            || block.contains("quitonerror=0")
            || block.contains("quitonerror=1")
            || block.contains("catchio")
            || block.contains("break")
        {
            continue;
        }
        let filter =
            block.split("protfilter=").nth(1).map(|r| r.split([',', ')']).next().unwrap_or("").trim().to_owned());
        let keeps = match filter.as_deref() {
            None | Some("3") | Some("UBX_PROTOCOL | NMEA_PROTOCOL") => (true, true, false),
            Some("7") => (true, true, true),
            Some("UBX_PROTOCOL") | Some("2") => (true, false, false),
            Some("NMEA_PROTOCOL") | Some("1") => (false, true, false),
            Some(other) => panic!("{name}: protfilter {other} not understood"),
        };
        let list = block.split("EXPECTED_RESULTS = ").nth(1).unwrap_or("");
        let list = &list[..list.find("\n        )").or_else(|| list.find("\n        ]")).unwrap_or(list.len())];
        let expected: Vec<String> =
            list.split("\"<").skip(1).filter_map(|e| e.find(")>\"").map(|end| format!("<{}", &e[..end + 2]))).collect();
        // The count the test asserts, when it states one.
        let asserted = block
            .split("self.assertEqual(i, ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|n| n.trim().parse::<usize>().ok());
        if asserted.is_some_and(|n| n != expected.len()) {
            // The list is a sample (e.g. testDEBUG checks 2 of 188 frames).
            println!("{name}: skipped, EXPECTED_RESULTS lists {} of {asserted:?} frames", expected.len());
            continue;
        }
        tests.push(PyTest { name, stream, keeps, expected });
    }
    tests
}

/// Joins Python's implicitly concatenated literals (`"a"\n   "b"` -> `"ab"`).
fn regex_free_join(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(q) = rest.find('"') {
        out.push_str(&rest[..q]);
        let after = &rest[q + 1..];
        let trimmed = after.trim_start();
        // A closing quote followed (across whitespace/newline) by an opening one.
        if after.len() != trimmed.len()
            && after[..after.len() - trimmed.len()].contains('\n')
            && trimmed.starts_with('"')
            && out.ends_with(|c: char| c != '(' && c != ' ' && c != '\n' && c != ',')
        {
            rest = &trimmed[1..];
        } else {
            out.push('"');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `key=value` of a pyubx2 text form, as a number.
fn field(expected: &str, key: &str) -> f64 {
    let pat = format!(" {key}=");
    let v = expected.split(&pat).nth(1).and_then(|r| r.split([',', ')']).next()).and_then(|v| v.parse::<f64>().ok());
    v.unwrap_or_else(|| panic!("no {key} in {expected}"))
}

#[test]
fn frame_counts_and_values_match_pyubx2_expected_results() {
    let tests = pyubx2_tests();
    assert!(tests.len() >= 15, "only {} pyubx2 tests parsed", tests.len());
    let mut checked_values = 0;
    let mut identified = 0;
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("ubx_class_id.json")).expect("ubx_class_id.json"))
            .expect("json");
    let class_id: std::collections::BTreeMap<String, (u64, u64)> = table["class_id"]
        .as_object()
        .expect("class_id")
        .iter()
        .map(|(k, v)| (k.clone(), (v[0].as_u64().expect("class"), v[1].as_u64().expect("id"))))
        .collect();
    for t in &tests {
        let data = std::fs::read(dir().join(&t.stream)).expect("stream");
        let (frames, stats) = decode(&data, 4096);
        for chunk in [1usize, 7, 1024] {
            assert_eq!(decode(&data, chunk).0, frames, "{}: chunks of {chunk} decode differently", t.stream);
        }
        let kept: Vec<&Frame> = frames
            .iter()
            .filter(|f| match f {
                Frame::Ubx { .. } => t.keeps.0,
                Frame::Nmea(_) => t.keeps.1,
                Frame::Rtcm3 { .. } => t.keeps.2,
            })
            .collect();
        // Each frame's identity as pyubx2 names it: UBX by class and id
        // (pyubx2's own table, ubx_class_id.json), NMEA by talker and
        // sentence, RTCM3 by message type.
        let ours: Vec<String> = kept
            .iter()
            .map(|f| match f {
                Frame::Ubx { class, id, .. } => format!("UBX {class:#04x} {id:#04x}"),
                Frame::Nmea(line) => {
                    // pyubx2 names u-blox PUBX sentences with their message id (PUBX00).
                    let text = String::from_utf8_lossy(line);
                    let mut fields = text.trim_start_matches(['$', '!']).split([',', '*']);
                    let head = fields.next().unwrap_or("").to_owned();
                    let sub = if head == "PUBX" { fields.next().unwrap_or("") } else { "" };
                    format!("NMEA {head}{sub}")
                }
                Frame::Rtcm3 { message_type } => format!("RTCM {message_type}"),
            })
            .collect();
        let want: Vec<String> = t
            .expected
            .iter()
            .map(|e| {
                let (proto, rest) = e[1..].split_once('(').unwrap_or(("", ""));
                let name = rest.split([',', ')']).next().unwrap_or("").trim();
                match proto {
                    "UBX" => match class_id.get(name) {
                        Some((c, i)) => format!("UBX {c:#04x} {i:#04x}"),
                        None => panic!("{}: {name} missing from ubx_class_id.json", t.name),
                    },
                    "NMEA" => format!("NMEA {name}"),
                    "RTCM" => format!("RTCM {name}"),
                    other => panic!("{}: protocol {other} not understood", t.name),
                }
            })
            .collect();
        println!(
            "{:<28} {:<34} frames {:>3} (pyubx2 {:>3})  bad checksums {}",
            t.name,
            t.stream,
            ours.len(),
            want.len(),
            stats.ubx_bad_checksum
        );
        assert_eq!(ours, want, "{}: frames (protocol, class and id) differ from pyubx2", t.name);
        identified += ours.len();
        for (f, e) in kept.iter().zip(&t.expected) {
            let Frame::Ubx { class, id, payload } = f else {
                continue;
            };
            let close7 = |a: f64, b: f64| (a - b).abs() < 1e-7 + 1e-12;
            match (class, id) {
                (0x01, 0x07) if e.starts_with("<UBX(NAV-PVT,") => {
                    let p = NavPvt::parse(payload).expect("NAV-PVT payload");
                    assert!(
                        close7(p.lat, field(e, "lat")) && close7(p.lon, field(e, "lon")),
                        "{}: {p:?} vs {e}",
                        t.name
                    );
                    assert_eq!((p.height_m * 1e3).round(), field(e, "height"), "{}: height", t.name);
                    assert_eq!((p.hmsl_m * 1e3).round(), field(e, "hMSL"), "{}: hMSL", t.name);
                    assert_eq!((p.g_speed_mps * 1e3).round(), field(e, "gSpeed"), "{}: gSpeed", t.name);
                    assert_eq!(f64::from(p.fix_type), field(e, "fixType"), "{}: fixType", t.name);
                    assert_eq!(f64::from(p.num_sv), field(e, "numSV"), "{}: numSV", t.name);
                    checked_values += 1;
                }
                (0x01, 0x02) if e.starts_with("<UBX(NAV-POSLLH,") => {
                    let p = NavPosLlh::parse(payload).expect("NAV-POSLLH payload");
                    assert!(
                        close7(p.lat, field(e, "lat")) && close7(p.lon, field(e, "lon")),
                        "{}: {p:?} vs {e}",
                        t.name
                    );
                    assert_eq!(f64::from(p.height_mm), field(e, "height"));
                    assert_eq!(f64::from(p.hmsl_mm), field(e, "hMSL"));
                    assert_eq!(f64::from(p.h_acc_mm), field(e, "hAcc"));
                    assert_eq!(f64::from(p.v_acc_mm), field(e, "vAcc"));
                    checked_values += 1;
                }
                (0x28, 0x00) if e.starts_with("<UBX(HNR-PVT,") => {
                    let p = HnrPvt::parse(payload).expect("HNR-PVT payload");
                    assert!(
                        close7(p.lat, field(e, "lat")) && close7(p.lon, field(e, "lon")),
                        "{}: {p:?} vs {e}",
                        t.name
                    );
                    assert_eq!(f64::from(p.height_mm), field(e, "height"));
                    assert_eq!(f64::from(p.hmsl_mm), field(e, "hMSL"));
                    assert_eq!(f64::from(p.g_speed_mms), field(e, "gSpeed"));
                    assert_eq!(f64::from(p.speed_mms), field(e, "speed"));
                    assert_eq!(f64::from(p.fix_type), field(e, "gpsFix"));
                    checked_values += 1;
                }
                _ => {}
            }
        }
    }
    println!("{identified} frames identified as pyubx2 does; {checked_values} NAV-PVT/NAV-POSLLH/HNR-PVT checked field by field");
    assert!(identified >= 200, "only {identified} frames compared with pyubx2");
    assert!(checked_values >= 20, "only {checked_values} position frames checked");
}

/// The two example recordings have no expected list; pyubx2 itself decoded
/// them (`make_expected.py`): same UBX frame count and NAV-PVT values.
#[test]
fn example_recordings_match_pyubx2_oracle() {
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(dir().join("expected_frames.json")).expect("expected_frames.json"),
    )
    .expect("json");
    for name in ["mon_span.ubx", "2023-4-17_82912_serial-COM3.ubx"] {
        let data = std::fs::read(dir().join(name)).expect("stream");
        let (frames, _) = decode(&data, 64);
        let ubx = frames.iter().filter(|f| matches!(f, Frame::Ubx { .. })).count() as u64;
        let want = expected[name]["ubx_frames"].as_u64().unwrap_or(u64::MAX);
        // pyubx2 (output message mode) drops the receiver-bound CFG-VALGET
        // polls of the COM3 session although their checksums are valid; we
        // keep every valid frame, so there we find more.
        if name.starts_with("2023") {
            assert!(ubx >= want, "{name}: UBX frames {ubx} < {want}");
        } else {
            assert_eq!(ubx, want, "{name}: UBX frames");
        }
        let pvts: Vec<NavPvt> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Ubx { class: 1, id: 7, payload } => NavPvt::parse(payload),
                _ => None,
            })
            .collect();
        let want = expected[name]["nav_pvt"].as_array().expect("list");
        assert_eq!(pvts.len(), want.len(), "{name}: NAV-PVT count");
        for (ours, w) in pvts.iter().zip(want) {
            let f = |k: &str| w[k].as_f64().unwrap_or(f64::NAN);
            assert!(
                (ours.lat - f("lat")).abs() < 1e-7 && (ours.lon - f("lon")).abs() < 1e-7,
                "{name}: {ours:?} vs {w}"
            );
            assert_eq!((ours.hmsl_m * 1e3).round(), f("hmsl_mm"), "{name}: hMSL");
        }
    }
}

#[test]
fn corrupted_streams_are_counted_and_resynchronised() {
    let bad = |name: &str| decode(&std::fs::read(dir().join(name)).expect("stream"), 64).1;
    assert!(bad("pygpsdata-BADCK2.log").ubx_bad_checksum >= 1);
    assert!(bad("pygpsdata-MIXED3BADCK.log").ubx_bad_checksum >= 1);
    assert!(bad("pygpsdata-MIXED-RTCM3BADCRC.log").rtcm3_bad_crc >= 1);
    for truncated in ["pygpsdata-BADEOF1.log", "pygpsdata-BADEOF2.log", "pygpsdata-BADEOF3.log"] {
        assert!(bad(truncated).truncated_bytes > 0, "{truncated}: truncated tail counted");
    }
    // pyubx2's testUBXITERATE_ERR2: after the bad NAV-PVT checksum, the
    // next GPGGA (08:02:48) is still decoded.
    let data = std::fs::read(dir().join("pygpsdata-MIXED3BADCK.log")).expect("stream");
    let (frames, _) = decode(&data, 5);
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Nmea(l) if l.starts_with(b"$GPGGA,080248"))),
        "no resynchronisation after the bad frame"
    );
    let hdr = bad("pygpsdata-BADHDR.log");
    assert!(hdr.skipped_bytes > 0, "bad header skipped: {hdr:?}");
}

#[test]
fn mangled_streams_never_panic() {
    // Deterministic xorshift: flip bits, cut and splice every stream.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for entry in std::fs::read_dir(dir()).expect("dir").filter_map(Result::ok) {
        let data = std::fs::read(entry.path()).expect("read");
        for _ in 0..20 {
            let mut d = data.clone();
            for _ in 0..(d.len() / 50).max(1) {
                if d.is_empty() {
                    break;
                }
                let i = (next() as usize) % d.len();
                d[i] ^= 1 << (next() % 8);
            }
            let cut = if d.is_empty() { 0 } else { (next() as usize) % d.len() };
            d.truncate(cut);
            let (frames, _) = decode(&d, 1 + (next() as usize) % 300);
            for f in frames {
                if let Frame::Ubx { class: 1, id: 7, payload } = f {
                    let _ = NavPvt::parse(&payload);
                }
            }
        }
    }
}
