//! Property tests: peer-controlled topics and payloads, and arbitrary audit files,
//! never panic; a valid log with any byte changed never verifies.

use std::path::Path;

use outpost_sharing::{verify, AuditLog, AuditMessage, Decision, Exporter, Policy};
use proptest::prelude::*;

const POLICY: &str = r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/weight-loading/+/shift"]
purpose = "aggregated"
drop = ["operator", "truck.driver_id"]
[export.round_position]
metres = 50
fields = [["lat", "lon"], ["pos.lat", "pos.lon"]]
[export.aggregate]
period_s = 1
fields = ["payload_t", "pos.lat"]
group_by = ["site", "truck.id"]

[[export]]
provider = "acme"
topics = ["svc/positioning/#"]
purpose = "rounded"
drop = ["a.b.c"]
[export.round_position]
metres = 0.001

[[export]]
provider = "acme"
topics = ["raw/+"]
purpose = "raw"
"#;

fn json_like() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-100.0f64..100.0).prop_map(serde_json::Value::from),
        (-200.0f64..200.0).prop_map(serde_json::Value::from),
        ".{0,8}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("lat".to_owned()),
                    Just("lon".to_owned()),
                    Just("pos".to_owned()),
                    Just("payload_t".to_owned()),
                    Just("site".to_owned()),
                    Just("truck".to_owned()),
                    Just("id".to_owned()),
                    Just("operator".to_owned()),
                    "[a-z.]{1,6}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    value.prop_map(|v| serde_json::to_vec(&v).unwrap())
}

fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        "svc/weight-loading/[a-z+#/]{0,4}/shift",
        "svc/positioning/.{0,6}",
        "raw/[a-z+/]{0,3}",
        "[a-z/+#$]{0,6}",
        ".{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn offer_never_panics(
        messages in prop::collection::vec(
            (topic(), prop_oneof![json_like(), prop::collection::vec(any::<u8>(), 0..64)], any::<u64>(), any::<bool>()),
            1..16,
        ),
    ) {
        let policy = Policy::parse(POLICY, Path::new("p.toml")).unwrap();
        let mut ex = Exporter::new(policy.clone());
        let mut counted = 0u64;
        for (topic, payload, now, small_now) in messages {
            let now = if small_now { now % 10_000 } else { now };
            let provider = if now % 7 == 0 { "other" } else { "acme" };
            match ex.offer(provider, &topic, &payload, now) {
                Decision::Export(e) => {
                    prop_assert!(policy.rules()[e.rule].topics.iter().any(|f| f.matches(&topic)));
                    prop_assert_eq!(e.topic, topic);
                }
                Decision::Aggregated { rule } => prop_assert_eq!(rule, 0),
                Decision::Held(_) => {}
            }
            counted += 1;
            let _ = ex.flush_due("acme", now);
            if now % 5 == 0 {
                ex.set_policy(policy.clone());
            }
        }
        let c = ex.counters();
        prop_assert_eq!(counted, c.held + c.aggregated_inputs + (c.exported_messages - c.aggregates_flushed));
    }

    #[test]
    fn verify_and_open_never_panic_on_arbitrary_files(content in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, &content).unwrap();
        let _ = verify(&path);
        let _ = outpost_sharing::query(&path, Some("acme"), Some(5));
        let _ = AuditLog::open(&path);
    }

    #[test]
    fn any_changed_byte_fails_verification(index in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        let policy = "ab".repeat(32);
        for n in 0..3u8 {
            let messages = vec![
                AuditMessage::new("svc/a/b", "why", format!("{{\"v\":{n},\"s\":\"x\\\"y\"}}").as_bytes()),
                AuditMessage::new("svc/a/c", "why", &[n, 0xff]),
            ];
            log.append(u64::from(n) * 1000, "acme", "ops", &policy, messages).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let i = index.index(bytes.len());
        bytes[i] ^= xor;
        std::fs::write(&path, &bytes).unwrap();
        prop_assert!(verify(&path).is_err(), "byte {} ^ {:#x} went unnoticed", i, xor);
        let _ = AuditLog::open(&path);
    }
}
