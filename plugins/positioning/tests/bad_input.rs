//! Bad input is counted by reason and the service keeps running: the
//! device cap, topics that name no usable asset, invalid UTF-8 and binary
//! junk, numbers like 1e400 inside sentences, a bad config, and receiver
//! time jumps of days.

use outpost_sdk::testing::Harness;
use outpost_sdk::Message;
use positioning::Positioning;

const ACL: &[&str] = &["svc/positioning/+/fix"];

/// A sentence with its correct checksum.
fn nmea(body: &str) -> String {
    let ck = body.bytes().fold(0u8, |a, b| a ^ b);
    format!("${body}*{ck:02X}")
}

fn epoch(hms: &str, ddmmyy: &str) -> String {
    [
        nmea(&format!("GPGGA,{hms}.000,3747.0873,S,17518.8938,E,1,08,1.1,59.9,M,23.7,M,,0000")),
        nmea(&format!("GPRMC,{hms}.000,A,3747.0873,S,17518.8938,E,0.69,181.39,{ddmmyy},,,A")),
    ]
    .join("\n")
}

fn counter(h: &Harness<Positioning>, name: &str) -> u64 {
    h.host().counters.get(name).copied().unwrap_or(0)
}

fn fixes_of(h: &mut Harness<Positioning>, asset: &str) -> usize {
    let topic = format!("svc/positioning/{asset}/fix");
    h.take_published().iter().filter(|(t, _)| *t == topic).count()
}

#[test]
fn the_device_cap_refuses_new_devices_only() {
    let mut h = Harness::<Positioning>::with_acl(r#"{"max_devices": 2}"#, ACL).expect("init");
    for (i, hms) in ["030719", "030720", "030721"].iter().enumerate() {
        for dev in ["d-1", "d-2", "d-3"] {
            h.send(&format!("site/s/{dev}/gnss/nmea"), epoch(hms, "311214")).expect("never an error");
        }
        assert_eq!(counter(&h, "devices_rejected"), i as u64 + 1, "every input of d-3 is refused");
    }
    let out = h.take_published();
    assert!(
        out.iter().any(|(t, _)| t == "svc/positioning/d-1/fix")
            && out.iter().any(|(t, _)| t == "svc/positioning/d-2/fix")
    );
    assert!(!out.iter().any(|(t, _)| t == "svc/positioning/d-3/fix"));
    h.tick(10_000).expect("tick");
    assert_eq!(h.host().kpis.get("devices"), Some(&2.0));
}

#[test]
fn unusable_topics_invalid_utf8_and_huge_numbers_are_counted() {
    let mut h = Harness::<Positioning>::with_acl("{}", ACL).expect("init");
    for topic in ["site/s/a+b/gnss/nmea", "site/s//gnss/nmea", "site/s/a#/gnss/nmea", "site/s/a\u{7}/gnss/nmea"] {
        h.send(topic, epoch("030719", "311214")).expect("counted, not an error");
    }
    let long = format!("site/s/{}/gnss/nmea", "x".repeat(200));
    h.send(&long, epoch("030719", "311214")).expect("counted");
    assert_eq!(counter(&h, "bad_topic"), 5);
    assert!(h.take_published().is_empty(), "no fix on a topic that cannot be published");

    // One message: invalid UTF-8 inside a sentence (checksum right over the
    // bytes), binary junk, an altitude of 1e400 and an `inf` speed, then
    // good epochs.
    let mut payload = Vec::new();
    let bad_body = b"GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,\xff\xfe,M,23.7,M,,0000";
    let ck = bad_body.iter().fold(0u8, |a, b| a ^ b);
    payload.extend_from_slice(b"$");
    payload.extend_from_slice(bad_body);
    payload.extend_from_slice(format!("*{ck:02X}\n").as_bytes());
    payload.extend_from_slice(b"\x00\x01\x02\xb5\x62\xff\xff\xff\n");
    payload
        .extend_from_slice(nmea("GPGGA,030719.000,3747.0873,S,17518.8938,E,1,08,1.1,1e400,M,23.7,M,,0000").as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(nmea("GPRMC,030719.000,A,3747.0873,S,17518.8938,E,inf,181.39,311214,,,A").as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(epoch("030720", "311214").as_bytes());
    payload.push(b'\n');
    payload.extend_from_slice(epoch("030721", "311214").as_bytes());
    h.send_batch(vec![Message::new("site/s/rx-1/gnss/nmea", payload)]).expect("counted, not an error");
    assert_eq!(counter(&h, "malformed"), 3, "invalid UTF-8, 1e400 and inf");
    assert_eq!(counter(&h, "skipped_lines"), 1, "binary junk");
    assert!(fixes_of(&mut h, "rx-1") >= 1, "the good epochs after the bad lines still give fixes");
    // The same junk as a UBX stream: skipped bytes, no panic, still running.
    h.send("site/s/rx-2/gnss/ubx", &b"\xb5\x62\x01\x07\xff\xff\x00\xff\xfe$GP\xff\n"[..]).expect("ok");
    h.send("site/s/rx-1/gnss/nmea", epoch("030722", "311214")).expect("ok");
    assert!(fixes_of(&mut h, "rx-1") >= 1);
}

#[test]
fn a_bad_config_is_refused_by_name() {
    // serde_json refuses 1e400 before any key is read: it names the place.
    for (cfg, needle) in
        [(r#"{"max_devices": 1e400}"#, "out of range at line 1 column 21"), (r#"{"max_devices": 0}"#, "max_devices")]
    {
        match Harness::<Positioning>::with_acl(cfg, ACL) {
            Err(e) => assert!(format!("{e:?}").contains(needle), "{e:?}"),
            Ok(_) => panic!("{cfg} accepted"),
        }
    }
}

#[test]
fn receiver_time_jumps_of_days_are_counted() {
    let mut h = Harness::<Positioning>::with_acl("{}", ACL).expect("init");
    let send = |h: &mut Harness<Positioning>, body: String, wall: u64| {
        let mut m = Message::new("site/s/j-1/gnss/nmea", body.into_bytes());
        m.received_ms = wall;
        h.send_batch(vec![m]).expect("never an error");
    };
    let wall0 = 1_000_000u64;
    for (k, hms) in ["030719", "030720", "030721", "030722"].iter().enumerate() {
        send(&mut h, epoch(hms, "311214"), wall0 + 1000 * k as u64);
    }
    assert_eq!(counter(&h, "time_jumps"), 0, "one epoch a second, one second of wall time apart");
    // The receiver's date jumps three days while a second passes.
    send(&mut h, epoch("030723", "030115"), wall0 + 4000);
    let ahead = counter(&h, "time_jumps");
    assert!(ahead >= 1, "three days ahead in a second");
    // And back to the right date: a jump back of three days.
    send(&mut h, epoch("030724", "311214"), wall0 + 5000);
    assert!(counter(&h, "time_jumps") > ahead, "three days back");
    // Still published as the receiver said (gpsd does the same), and running.
    send(&mut h, epoch("030725", "311214"), wall0 + 6000);
    assert!(fixes_of(&mut h, "j-1") >= 6);
}
