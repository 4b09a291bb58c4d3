//! Wasi-clock test service: for each message on `test/clock/{tail}` it
//! publishes the wall clock it reads (ms since the Unix epoch, through
//! `wasi:clocks/wall-clock`) on `test/clock-out/{tail}`.

use outpost_sdk::{export_service, host, Message, Service, ServiceError};
use std::time::{SystemTime, UNIX_EPOCH};

pub struct WasiClock;

impl Service for WasiClock {
    fn init(_config: &str) -> Result<Self, ServiceError> {
        Ok(WasiClock)
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        for m in batch {
            let tail = m.topic.splitn(3, '/').nth(2).unwrap_or("x");
            let now =
                SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| ServiceError::Internal(e.to_string()))?;
            host::publish(&format!("test/clock-out/{tail}"), now.as_millis().to_string().as_bytes())
                .map_err(ServiceError::Internal)?;
        }
        Ok(())
    }
}

export_service!(WasiClock);

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_sdk::testing::Harness;

    #[test]
    fn publishes_the_clock_natively() {
        let mut h = Harness::<WasiClock>::new("{}").expect("init");
        h.send("test/clock/a", "now").expect("handle");
        let out = h.take_published();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "test/clock-out/a");
        let ms: u128 = String::from_utf8_lossy(&out[0].1).parse().expect("a number");
        let real = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
        assert!(real.abs_diff(ms) < 60_000, "{ms} vs {real}");
    }
}
