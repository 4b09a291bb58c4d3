//! State handover test service. Each message on `mig/in/{tail}` increments
//! the persistent counter `count` and publishes `{format}:{n}` to
//! `mig/out/{tail}`.
//!
//! v1 (`format = "text"`) stores the counter as text (`41`); v2
//! (`format = "json"`) as JSON (`{"count": 41}`) and refuses to read text,
//! so it counts on only if its `migrate` converted the old value. With
//! `fail_migrate = true`, `migrate` fails after writing, to prove the write
//! is discarded and the old version keeps serving.

use outpost_sdk::{export_service, host, Message, Service, ServiceError};

pub struct Migrating {
    config: Config,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_format")]
    format: String,
    #[serde(default)]
    fail_migrate: bool,
}

fn default_format() -> String {
    "text".into()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    count: u64,
}

const KEY: &str = "count";

impl Migrating {
    fn read(&self) -> Result<u64, ServiceError> {
        let Some(raw) = host::state_get(KEY) else { return Ok(0) };
        match self.config.format.as_str() {
            "json" => serde_json::from_slice::<Stored>(&raw)
                .map(|s| s.count)
                .map_err(|e| ServiceError::Internal(format!("count is not JSON (not migrated?): {e}"))),
            _ => String::from_utf8_lossy(&raw)
                .trim()
                .parse()
                .map_err(|e| ServiceError::Internal(format!("count is not text: {e}"))),
        }
    }

    fn write(&self, n: u64) {
        let bytes = match self.config.format.as_str() {
            "json" => serde_json::to_vec(&Stored { count: n }).expect("json"),
            _ => n.to_string().into_bytes(),
        };
        host::state_set(KEY, &bytes);
    }
}

impl Service for Migrating {
    fn init(config: &str) -> Result<Self, ServiceError> {
        let config = if config.trim().is_empty() { "{}" } else { config };
        let config: Config = serde_json::from_str(config).map_err(|e| ServiceError::BadConfig(e.to_string()))?;
        if !matches!(config.format.as_str(), "text" | "json") {
            return Err(ServiceError::BadConfig(format!("format '{}' is not text or json", config.format)));
        }
        Ok(Migrating { config })
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        for m in batch {
            let tail = m.topic.splitn(3, '/').nth(2).unwrap_or("x").to_owned();
            let n = self.read()? + 1;
            self.write(n);
            let body = format!("{}:{n}", self.config.format);
            host::publish(&format!("mig/out/{tail}"), body.as_bytes()).map_err(ServiceError::Internal)?;
        }
        Ok(())
    }

    fn migrate(&mut self, from_version: &str) -> Result<(), ServiceError> {
        let old = host::state_get(KEY);
        if self.config.fail_migrate {
            // Written, then failed: the agent must discard this write.
            host::state_set(KEY, b"{\"count\": 999999}");
            return Err(ServiceError::Internal(format!("cannot convert the state of {from_version}")));
        }
        host::log(host::Level::Info, &format!("migrating from {from_version}"));
        let Some(raw) = old else { return Ok(()) };
        if self.config.format == "json" && serde_json::from_slice::<Stored>(&raw).is_err() {
            let text = String::from_utf8_lossy(&raw);
            let n: u64 = text.trim().parse().map_err(|e| {
                ServiceError::Internal(format!("count from {from_version} is neither JSON nor text ({text}): {e}"))
            })?;
            self.write(n);
        }
        Ok(())
    }
}

export_service!(Migrating);

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_sdk::testing::Harness;

    #[test]
    fn v2_counts_on_after_migrating_v1_text() {
        let mut v1 = Harness::<Migrating>::new("{\"format\": \"text\"}").expect("v1");
        v1.send("mig/in/a", "x").expect("1");
        v1.send("mig/in/a", "x").expect("2");
        // The upgrade: a new version on the same state.
        v1.restart("{\"format\": \"json\"}").expect("v2");
        assert!(v1.send("mig/in/a", "x").is_err(), "v2 cannot read text before migrating");
        v1.migrate("1.0.0").expect("migrate");
        v1.send("mig/in/a", "x").expect("3");
        let out: Vec<String> =
            v1.take_published().into_iter().map(|(_, p)| String::from_utf8_lossy(&p).into_owned()).collect();
        assert_eq!(out.last().map(String::as_str), Some("json:3"), "{out:?}");
    }
}
