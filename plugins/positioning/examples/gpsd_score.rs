//! Scores fixes the service published (one JSON-lines file per capture, as
//! `outpostctl run` prints them) against gpsd's `.chk` files; prints the
//! table; exits 1 when below the quality bar. Used by `cargo xtask eval
//! positioning DIR`.
//!
//! usage: gpsd_score CAPTURES_DIR FIXES_DIR
//! (FIXES_DIR holds `<capture path relative to CAPTURES_DIR>.fixes.jsonl`)

use positioning::score::{self, Table};
use serde_json::Value;
use std::path::PathBuf;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [captures, fixes] = args.as_slice() else {
        eprintln!("usage: gpsd_score CAPTURES_DIR FIXES_DIR");
        std::process::exit(2);
    };
    let files = score::captures(captures).unwrap_or_else(|e| {
        eprintln!("{}: {e}", captures.display());
        std::process::exit(2)
    });
    let mut t = Table::default();
    for f in &files {
        let rel = f.strip_prefix(captures).unwrap_or(f);
        let chk = std::fs::read_to_string(score::chk_of(f)).expect("chk");
        let out = fixes.join(format!("{}.fixes.jsonl", rel.display()));
        let text = std::fs::read_to_string(&out).unwrap_or_else(|e| {
            eprintln!("{}: {e}", out.display());
            std::process::exit(2)
        });
        let ours: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["topic"].as_str().is_some_and(|t| t.starts_with("svc/positioning/")))
            .map(|v| v["payload"].clone())
            .collect();
        let binary = score::is_binary(&std::fs::read(f).expect("capture"));
        t.add(if binary { "UBX" } else { "NMEA" }, &rel.display().to_string(), score::score(&chk, &ours));
    }
    print!("{}", t.render());
    let below = t.below_bar();
    if below.is_empty() {
        println!(
            "quality bar met: at least {:.0}% of all epochs and {:.0}% of every capture's",
            score::BAR_OVERALL * 100.0,
            score::BAR_PER_FILE * 100.0
        );
    } else {
        println!("below the quality bar:\n{}", below.join("\n"));
        std::process::exit(1);
    }
}
