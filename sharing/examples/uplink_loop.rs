//! What the agent's uplink does with this crate, with rough figures:
//! offer each bus message, record each batch in the audit log before sending, flush
//! aggregates when due, then verify the log as `outpostctl audit verify` would.
//!
//! `cargo run --release -p outpost-sharing --example uplink_loop [messages]`

use std::path::Path;
use std::time::Instant;

use outpost_sharing::{verify, AuditLog, AuditMessage, Decision, Exporter, Policy};

const POLICY: &str = r#"
version = 1
[[export]]
provider = "acme"
topics = ["svc/weight-loading/+/shift"]
purpose = "loading KPIs for the monthly service review"
drop = ["operator"]
[export.aggregate]
period_s = 900
fields = ["payload_t", "cycle_s"]

[[export]]
provider = "acme"
topics = ["svc/positioning/+/fix"]
purpose = "fleet map at block level"
drop = ["driver"]
[export.round_position]
metres = 100
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(200_000);
    let policy = Policy::parse(POLICY, Path::new("sharing.toml"))?;
    let sha = policy.sha256().to_owned();
    let mut exporter = Exporter::new(policy);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sharing-audit.jsonl");
    let mut audit = AuditLog::open(&path)?;

    let start = Instant::now();
    let mut batch = Vec::new();
    let mut batches = 0u64;
    let mut in_audit = std::time::Duration::ZERO;
    for i in 0..n {
        let now_ms = 1_700_000_000_000 + i * 10;
        let (topic, payload) = match i % 3 {
            0 => (
                format!("svc/positioning/t{}/fix", i % 20),
                format!(
                    r#"{{"lat":{},"lon":{},"speed":3.2,"driver":"D{}"}}"#,
                    47.37 + (i % 97) as f64 * 1e-4,
                    8.54,
                    i % 9
                ),
            ),
            1 => (
                format!("svc/weight-loading/site{}/shift", i % 4),
                format!(r#"{{"payload_t":{},"cycle_s":{},"operator":"Jo"}}"#, 30 + i % 11, 40 + i % 7),
            ),
            _ => ("svc/traffic-awareness/site/encounter".to_owned(), r#"{"a":"t1","b":"t2"}"#.to_owned()),
        };
        if let Decision::Export(e) = exporter.offer("acme", &topic, payload.as_bytes(), now_ms) {
            batch.push(AuditMessage::from(&e));
        }
        let due = exporter.flush_due("acme", now_ms);
        batch.extend(due.iter().map(AuditMessage::from));
        if batch.len() >= 100 {
            let t = Instant::now();
            audit.append(now_ms, "acme", "mqtts://ops.acme.example:8883", &sha, std::mem::take(&mut batch))?;
            in_audit += t.elapsed();
            batches += 1;
        }
    }
    let offered = start.elapsed();

    let verify_start = Instant::now();
    let summary = verify(&path)?;
    let verified = verify_start.elapsed();
    let c = exporter.counters();
    println!(
        "{n} messages in {:.2} s; offer+flush {:.0}/s; {batches} audit appends of 100 messages (write + fsync) {:.2} ms each",
        offered.as_secs_f64(),
        n as f64 / (offered - in_audit).as_secs_f64(),
        in_audit.as_secs_f64() * 1e3 / batches.max(1) as f64
    );
    println!(
        "exported {} ({} bytes), aggregated {} into {} summaries, held {} {:?}",
        c.exported_messages, c.exported_bytes, c.aggregated_inputs, c.aggregates_flushed, c.held, c.held_by_reason
    );
    println!(
        "verify: {} entries, {:.1} MB in {:.2} s, head {}",
        summary.entries,
        std::fs::metadata(&path)?.len() as f64 / 1e6,
        verified.as_secs_f64(),
        summary.head
    );
    Ok(())
}
