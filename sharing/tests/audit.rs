//! The audit log on disk: appending, reopening, and catching every kind of tampering.

use std::fs;
use std::path::{Path, PathBuf};

use outpost_sharing::{
    query, verify, verify_with_head, AuditError, AuditLog, AuditMessage, Corruption, VerifySummary, ZERO_HASH,
};

const POLICY: &str = "1111111111111111111111111111111111111111111111111111111111111111";

fn batch(n: u32) -> Vec<AuditMessage> {
    vec![
        AuditMessage::new(
            "svc/weight-loading/north/shift",
            "loading KPIs",
            format!("{{\"payload_t\":{n}}}").as_bytes(),
        ),
        AuditMessage::new("svc/leak-detection/n1/alarm", "leak alarms", &[0xde, 0xad, n as u8]),
    ]
}

/// A log with three batches: acme at 1000, other at 2000, acme at 3000.
fn three(dir: &Path) -> (PathBuf, VerifySummary) {
    let path = dir.join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!((log.next_seq(), log.head()), (1, ZERO_HASH));
    let first = log.append(1_000, "acme", "mqtts://ops.acme.example:8883", POLICY, batch(11)).unwrap();
    assert_eq!((first.seq, first.prev.as_str()), (1, ZERO_HASH));
    let second = log.append(2_000, "other", "ops-center-2", POLICY, batch(12)).unwrap();
    assert_eq!(second.prev, first.hash);
    let third = log.append(3_000, "acme", "mqtts://ops.acme.example:8883", POLICY, batch(13)).unwrap();
    assert_eq!(third.seq, 3);
    assert_eq!(log.head(), third.hash);
    let summary = verify(&path).unwrap();
    assert_eq!(
        summary,
        VerifySummary { entries: 3, first_at_ms: Some(1_000), last_at_ms: Some(3_000), head: third.hash.clone() }
    );
    (path, summary)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn corrupt_at(result: Result<VerifySummary, AuditError>) -> (u64, Corruption) {
    match result {
        Err(AuditError::Corrupt { line, problem, .. }) => (line, problem),
        other => panic!("expected a corrupt line, got {other:?}"),
    }
}

#[test]
fn three_batches_verify_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let all = query(&path, None, None).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].messages[0].payload, serde_json::json!({"payload_t": 11}));
    assert_eq!(all[0].messages[1].payload, serde_json::json!("3q0L"));
    assert_eq!(all[0].messages[1].bytes, 3);
    let acme: Vec<u64> = query(&path, Some("acme"), None).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(acme, [1, 3]);
    let since: Vec<u64> = query(&path, None, Some(2_000)).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(since, [2, 3]);
    assert!(query(&path, Some("nobody"), None).unwrap().is_empty());
}

#[cfg(unix)]
#[test]
fn created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    AuditLog::open(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn a_changed_payload_is_caught_on_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let mut l = lines(&path);
    assert!(l[1].contains(r#""payload_t":12"#));
    l[1] = l[1].replace(r#""payload_t":12"#, r#""payload_t":13"#);
    write_lines(&path, &l);
    let (line, problem) = corrupt_at(verify(&path));
    assert_eq!(line, 2);
    assert!(matches!(problem, Corruption::HashMismatch { .. }), "{problem:?}");
    let message = verify(&path).unwrap_err().to_string();
    assert!(message.contains("line 2: entry was modified"), "{message}");
    assert!(query(&path, Some("acme"), None).is_err(), "query must not hide tampering");
}

#[test]
fn any_flipped_byte_in_the_middle_entry_names_line_2() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let original = fs::read(&path).unwrap();
    let start = original.iter().position(|b| *b == b'\n').unwrap() + 1;
    let end = start + original[start..].iter().position(|b| *b == b'\n').unwrap();
    for i in start..end {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let (line, _) = corrupt_at(verify(&path));
        assert_eq!(line, 2, "flipping byte {i} ({:?})", original[i] as char);
    }
}

#[test]
fn a_removed_entry_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let mut l = lines(&path);
    l.remove(1);
    write_lines(&path, &l);
    assert_eq!(corrupt_at(verify(&path)), (2, Corruption::SeqMismatch { expected: 2, found: 3 }));
}

#[test]
fn reordered_entries_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let mut l = lines(&path);
    l.swap(1, 2);
    write_lines(&path, &l);
    assert_eq!(corrupt_at(verify(&path)), (2, Corruption::SeqMismatch { expected: 2, found: 3 }));
}

#[test]
fn a_rewritten_entry_with_a_fresh_hash_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let mut entries = query(&path, None, None).unwrap();
    entries[1].destination = "somewhere-else".into();
    entries[1].hash = outpost_sharing::entry_hash(&entries[1]);
    let l: Vec<String> = entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
    write_lines(&path, &l);
    let (line, problem) = corrupt_at(verify(&path));
    assert_eq!(line, 3);
    assert!(matches!(problem, Corruption::PrevMismatch { .. }), "{problem:?}");
}

#[test]
fn truncation_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
    assert_eq!(corrupt_at(verify(&path)), (3, Corruption::Truncated));

    let mut l = lines(&path);
    l.truncate(1);
    l.push("this is not json".into());
    write_lines(&path, &l);
    let (line, problem) = corrupt_at(verify(&path));
    assert_eq!(line, 2);
    assert!(matches!(problem, Corruption::NotAnEntry(_)), "{problem:?}");

    l[1] = String::new();
    write_lines(&path, &l);
    assert_eq!(corrupt_at(verify(&path)), (2, Corruption::Empty));
}

#[test]
fn reopen_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (path, summary) = three(dir.path());
    let mut log = AuditLog::open(&path).unwrap();
    assert_eq!(log.next_seq(), 4);
    assert_eq!(log.head(), summary.head);
    let fourth = log.append(4_000, "acme", "ops", POLICY, batch(14)).unwrap();
    assert_eq!((fourth.seq, fourth.prev.as_str()), (4, summary.head.as_str()));
    drop(log);
    let after = verify(&path).unwrap();
    assert_eq!((after.entries, after.last_at_ms, after.head.as_str()), (4, Some(4_000), fourth.hash.as_str()));
}

fn open_refusal(path: &Path) -> (Corruption, String) {
    match AuditLog::open(path) {
        Err(e @ AuditError::LastLineCorrupt { .. }) => {
            let message = e.to_string();
            let AuditError::LastLineCorrupt { problem, .. } = e else { unreachable!() };
            (problem, message)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn open_refuses_a_corrupt_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three(dir.path());
    let good = fs::read(&path).unwrap();

    // Cut in the middle of the last line (an interrupted write).
    fs::write(&path, &good[..good.len() - 10]).unwrap();
    let (problem, message) = open_refusal(&path);
    assert_eq!(problem, Corruption::Truncated);
    assert!(message.contains("outpostctl audit verify"), "{message}");

    // A modified last line.
    fs::write(&path, &good).unwrap();
    let mut l = lines(&path);
    l[2] = l[2].replace(r#""at_ms":3000"#, r#""at_ms":3001"#);
    write_lines(&path, &l);
    assert!(matches!(open_refusal(&path).0, Corruption::HashMismatch { .. }));

    // Garbage.
    fs::write(&path, [&good[..], b"garbage\n"].concat()).unwrap();
    assert!(matches!(open_refusal(&path).0, Corruption::NotAnEntry(_)));

    // The file is left as it was: nothing appended.
    assert_eq!(fs::read(&path).unwrap(), [&good[..], b"garbage\n"].concat());
}

#[test]
fn open_reads_a_last_line_longer_than_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let mut log = AuditLog::open(&path).unwrap();
    log.append(1, "acme", "ops", POLICY, batch(1)).unwrap();
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(200_000));
    let e = log.append(2, "acme", "ops", POLICY, vec![AuditMessage::new("t", "p", big.as_bytes())]).unwrap();
    drop(log);
    let log = AuditLog::open(&path).unwrap();
    assert_eq!((log.next_seq(), log.head()), (3, e.hash.as_str()));
}

#[test]
fn anchored_head() {
    let dir = tempfile::tempdir().unwrap();
    let (path, summary) = three(dir.path());
    assert_eq!(verify_with_head(&path, &summary.head).unwrap(), summary);
    // Later appends keep the anchor valid.
    AuditLog::open(&path).unwrap().append(9_000, "acme", "ops", POLICY, vec![]).unwrap();
    assert_eq!(verify_with_head(&path, &summary.head.to_uppercase()).unwrap().entries, 4);
    // Cutting whole lines from the end keeps a valid chain, but loses the anchor.
    let l = lines(&path);
    write_lines(&path, &l[..2]);
    assert_eq!(verify(&path).unwrap().entries, 2);
    assert!(matches!(verify_with_head(&path, &summary.head), Err(AuditError::HeadNotFound { .. })));
}

#[test]
fn bad_policy_hash_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = AuditLog::open(&dir.path().join("a.jsonl")).unwrap();
    let e = log.append(1, "acme", "ops", "not-a-hash", vec![]).unwrap_err();
    assert!(matches!(e, AuditError::InvalidInput { .. }), "{e:?}");
    assert_eq!(log.next_seq(), 1);
}

#[test]
fn missing_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(verify(&dir.path().join("none")), Err(AuditError::Io { .. })));
}

/// A write that fails is an error to the caller, and a partial line that cannot be cut
/// stops all later appends. `/dev/full` fails every write and cannot be truncated.
#[cfg(target_os = "linux")]
#[test]
fn a_failed_write_is_an_error_and_poisons() {
    let mut log = AuditLog::open(Path::new("/dev/full")).unwrap();
    let e = log.append(1, "acme", "ops", POLICY, batch(1)).unwrap_err();
    assert!(matches!(e, AuditError::Io { .. }), "{e:?}");
    assert_eq!(log.next_seq(), 1);
    let e = log.append(2, "acme", "ops", POLICY, batch(2)).unwrap_err();
    assert!(matches!(e, AuditError::Poisoned { .. }), "{e:?}");
}
