//! `outpostctl audit`: the customer's view of what left the site. Reads the
//! agent's hash-chained export log (`{state_dir}/sharing-audit.jsonl`),
//! never the agent itself, so it works offline and on a copy of the file.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args)]
pub struct Audit {
    /// The audit log; default `{state_dir}/sharing-audit.jsonl` of `--config`.
    #[arg(long, global = true)]
    file: Option<PathBuf>,
    /// The agent's config, to find its state folder.
    #[arg(long, global = true, default_value = "/etc/outpost/outpost.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the whole chain: every entry's hash and its link to the one
    /// before. Exit 0 only when intact; prints the head hash to keep elsewhere.
    Verify {
        /// Also require the chain to end at this hash (one you kept earlier
        /// still being in the chain proves nothing was cut off after it is
        /// not enough: this pins the end).
        #[arg(long)]
        expect_head: Option<String>,
    },
    /// What left the site: each batch with when, to whom, under which
    /// policy and for what purpose, and the messages themselves.
    Show {
        /// Only batches sent to this provider.
        #[arg(long)]
        provider: Option<String>,
        /// Only batches since: milliseconds since the epoch, or an age such
        /// as `30m`, `24h`, `7d`.
        #[arg(long)]
        since: Option<String>,
        /// One JSON entry per line instead of the readable listing.
        #[arg(long)]
        json: bool,
    },
}

fn log_path(a: &Audit) -> anyhow::Result<PathBuf> {
    if let Some(f) = &a.file {
        return Ok(f.clone());
    }
    let cfg = outpost::config::AgentConfig::load(&a.config)
        .with_context(|| "give the audit log with --file, or the agent's config with --config")?;
    Ok(cfg.state_dir.join("sharing-audit.jsonl"))
}

/// `1700000000000`, or an age before now (`90s`, `30m`, `24h`, `7d`).
fn parse_since(s: &str, now_ms: u64) -> anyhow::Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 =
        num.parse().with_context(|| format!("--since '{s}': give milliseconds since the epoch or an age like 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--since '{s}': the unit must be s, m, h or d"),
    };
    Ok(now_ms.saturating_sub(secs * 1000))
}

fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = outpost_sdk::civil::civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Runs the command; `Ok(false)` when the chain is broken (exit 1).
pub fn run(a: Audit) -> anyhow::Result<bool> {
    let path = log_path(&a)?;
    match &a.command {
        AuditCommand::Verify { expect_head } => {
            let result = match expect_head {
                Some(h) => outpost_sharing::verify_with_head(&path, h),
                None => outpost_sharing::verify(&path),
            };
            match result {
                Ok(s) => {
                    let span = match (s.first_at_ms, s.last_at_ms) {
                        (Some(a), Some(b)) => format!(", {} to {}", when(a), when(b)),
                        _ => String::new(),
                    };
                    println!("audit log {} is intact: {} export batches{span}", path.display(), s.entries);
                    println!(
                        "head {}  (keep this hash elsewhere; `--expect-head` checks the log still ends there)",
                        s.head
                    );
                    Ok(true)
                }
                Err(e) => {
                    eprintln!("audit log {} is NOT intact: {e}", path.display());
                    eprintln!("  the entries up to the line named are trustworthy; keep the file as evidence and tell the provider");
                    Ok(false)
                }
            }
        }
        AuditCommand::Show { provider, since, json } => {
            let since = since.as_deref().map(|s| parse_since(s, outpost::dispatch::now_ms())).transpose()?;
            let entries = outpost_sharing::query(&path, provider.as_deref(), since)
                .with_context(|| format!("cannot read {}; run `outpostctl audit verify`", path.display()))?;
            let mut messages = 0usize;
            for e in &entries {
                messages += e.messages.len();
                if *json {
                    println!("{}", serde_json::to_string(e)?);
                    continue;
                }
                println!(
                    "#{} {}  to {} via {}  ({} messages, policy {})",
                    e.seq,
                    when(e.at_ms),
                    e.provider,
                    e.destination,
                    e.messages.len(),
                    &e.policy_sha256[..12.min(e.policy_sha256.len())]
                );
                for m in &e.messages {
                    println!("    {}  [{}]  {} B  {}", m.topic, m.purpose, m.bytes, m.payload);
                }
            }
            if !*json {
                println!("{} batches, {messages} messages", entries.len());
            }
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_dates() {
        assert_eq!(parse_since("1700000000000", 0).expect("ms"), 1_700_000_000_000);
        assert_eq!(parse_since("2h", 10_000_000).expect("age"), 10_000_000 - 7_200_000);
        assert!(parse_since("2w", 0).is_err());
        assert_eq!(when(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(when(1_796_215_200_000), "2026-12-02 12:40:00 UTC");
    }
}
