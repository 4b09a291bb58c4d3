//! Testbed service. For each message on `test/in/{tail}` it acts on the
//! payload and publishes to `{out}/{tail}`:
//! - `trap` panics (a trap under panic=abort), `loop` spins forever,
//!   `alloc` grows memory without bound, `acl` publishes outside its ACL;
//! - `count` increments a persistent counter and publishes its value;
//! - `bad` returns a bad-input error; anything else is echoed back.

use outpost_sdk::{export_service, host, Message, Service, ServiceError};

pub struct Testbed {
    out: String,
    hoard: Vec<Vec<u8>>,
}

fn config_out(config: &str) -> Result<String, ServiceError> {
    // Tiny hand parse of {"out": "..."}: keeps the guest dependency-free.
    let key = "\"out\"";
    let Some(at) = config.find(key) else { return Ok("test/out".into()) };
    let rest = &config[at + key.len()..];
    let start = rest.find('"').ok_or_else(|| ServiceError::BadConfig("out must be a string".into()))? + 1;
    let len = rest[start..].find('"').ok_or_else(|| ServiceError::BadConfig("unterminated string".into()))?;
    Ok(rest[start..start + len].to_owned())
}

impl Service for Testbed {
    fn init(config: &str) -> Result<Self, ServiceError> {
        Ok(Testbed { out: config_out(config)?, hoard: Vec::new() })
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        let mut rejected = None;
        for m in batch {
            let tail = m.topic.strip_prefix("test/in/").unwrap_or("x").to_owned();
            let out = format!("{}/{}", self.out, tail);
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
