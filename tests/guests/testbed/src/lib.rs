//! Testbed service. For each message on `a/b/{tail}` it acts on the
//! payload and publishes to `{out}/{tail}`:
//! - `trap` panics (a trap under panic=abort), `loop` spins forever,
//!   `alloc` grows memory without bound, `acl` publishes outside its ACL;
//! - `count` increments a persistent counter and publishes its value;
//! - `spin:MS:TEXT` busy-waits MS ms, then publishes TEXT;
//! - `bad` returns a bad-input error; anything else is echoed back.
//!
//! With config `echo_only = true` it echoes everything (a healthy neighbour).

use outpost_sdk::{export_service, host, Message, Service, ServiceError};

pub struct Testbed {
    config: Config,
    hoard: Vec<Vec<u8>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Prefix of output topics.
    #[serde(default = "default_out")]
    out: String,
    /// Echo every payload, commands included (a well-behaved neighbour).
    #[serde(default)]
    echo_only: bool,
}

fn default_out() -> String {
    "test/out".into()
}

/// Busy-waits about `ms` milliseconds (no clocks needed inside the guest).
fn spin(ms: u64) {
    let mut x = 1u64;
    for _ in 0..ms * 200_000 {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

impl Service for Testbed {
    fn init(config: &str) -> Result<Self, ServiceError> {
        let config = if config.trim().is_empty() { "{}" } else { config };
        let config: Config = serde_json::from_str(config).map_err(|e| ServiceError::BadConfig(e.to_string()))?;
        Ok(Testbed { config, hoard: Vec::new() })
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        let mut rejected = None;
        for m in batch {
            // Everything after the first two levels: test/in/{tail} -> {out}/{tail}.
            let tail = m.topic.splitn(3, '/').nth(2).unwrap_or("x");
            let mut out = String::with_capacity(self.config.out.len() + 1 + tail.len());
            out.push_str(&self.config.out);
            out.push('/');
            out.push_str(tail);
            if self.config.echo_only {
                host::publish(&out, &m.payload).map_err(ServiceError::Internal)?;
                continue;
            }
            if let Some(rest) = m.payload.strip_prefix(b"spin:") {
                let text = String::from_utf8_lossy(rest);
                let (ms, echo) = text.split_once(':').unwrap_or((&text, ""));
                spin(ms.parse().unwrap_or(1));
                host::publish(&out, echo.as_bytes()).map_err(ServiceError::Internal)?;
                continue;
            }
            if let Some(rest) = m.payload.strip_prefix(b"kpi:") {
                // The declared health KPI `rate` (see service.toml).
                let value = std::str::from_utf8(rest).ok().and_then(|v| v.parse::<f64>().ok());
                match value {
                    Some(v) => host::kpi("rate", v),
                    None => {
                        rejected.get_or_insert(ServiceError::BadInput("kpi:VALUE needs a number".into()));
                    }
                }
                continue;
            }
            match m.payload.as_slice() {
                b"trap" => panic!("testbed asked to trap"),
                b"loop" => {
                    let mut x: u64 = 1;
                    loop {
                        x = std::hint::black_box(x.wrapping_mul(3));
                    }
                }
                b"alloc" => loop {
                    self.hoard.push(vec![1u8; 1 << 20]);
                },
                b"acl" => {
                    let denied = host::publish("forbidden/topic", b"x").is_err();
                    host::publish(&out, if denied { b"denied" } else { b"allowed" }).map_err(ServiceError::Internal)?;
                }
                b"count" => {
                    let n = host::state_get("count")
                        .and_then(|v| String::from_utf8(v).ok())
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                        + 1;
                    host::state_set("count", n.to_string().as_bytes());
                    host::publish(&out, n.to_string().as_bytes()).map_err(ServiceError::Internal)?;
                }
                b"bad" => {
                    rejected.get_or_insert(ServiceError::BadInput("asked for bad input".into()));
                    continue;
                }
                other => host::publish(&out, other).map_err(ServiceError::Internal)?,
            }
            host::counter("handled", 1);
        }
        // Report a bad message only after handling the rest of the batch.
        rejected.map_or(Ok(()), Err)
    }
}

export_service!(Testbed);

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_sdk::testing::Harness;

    #[test]
    fn echo_count_and_acl_natively() {
        let mut h = Harness::<Testbed>::with_acl("{\"out\": \"test/out\"}", &["test/out/#"]).expect("init");
        h.send("test/in/a", "hello").expect("echo");
        h.send("test/in/a", "count").expect("count");
        h.send("test/in/a", "count").expect("count");
        h.send("test/in/a", "acl").expect("acl");
        let out: Vec<(String, String)> =
            h.take_published().into_iter().map(|(t, p)| (t, String::from_utf8_lossy(&p).into_owned())).collect();
        assert_eq!(
            out,
            vec![
                ("test/out/a".into(), "hello".into()),
                ("test/out/a".into(), "1".into()),
                ("test/out/a".into(), "2".into()),
                ("test/out/a".into(), "denied".into()),
            ]
        );
        assert_eq!(h.host().denied, vec!["forbidden/topic".to_string()]);
        assert_eq!(h.send("test/in/a", "bad"), Err(ServiceError::BadInput("asked for bad input".into())));
    }
}
