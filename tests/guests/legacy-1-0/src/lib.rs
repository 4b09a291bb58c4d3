//! A service built straight from the frozen WIT `outpost:service@1.0.0`
//! (`sdk/wit-1.0.0`), without the SDK (which now builds against 1.1.0).
//! Each message on `legacy/in/{tail}` increments the persistent counter
//! `count` (text) and publishes `legacy:{n}` to `legacy/out/{tail}`.

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({
        path: "../../../sdk/wit-1.0.0",
        world: "service",
    });

    use outpost::service::{bus, state};

    struct Legacy;

    impl Guest for Legacy {
        fn init(_config: String) -> Result<(), ServiceError> {
            Ok(())
        }

        fn handle(batch: Vec<Message>) -> Result<(), ServiceError> {
            for m in batch {
                let tail = m.topic.splitn(3, '/').nth(2).unwrap_or("x").to_owned();
                let n = super::next(state::get("count").as_deref());
                state::set("count", n.to_string().as_bytes());
                bus::publish(&format!("legacy/out/{tail}"), format!("legacy:{n}").as_bytes())
                    .map_err(ServiceError::Internal)?;
            }
            Ok(())
        }

        fn tick(_now_ms: u64) -> Result<(), ServiceError> {
            Ok(())
        }
    }

    export!(Legacy);
}

/// The counter after `stored` (text; absent or unreadable counts from 0).
pub fn next(stored: Option<&[u8]>) -> u64 {
    stored.and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0) + 1
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_from_text() {
        assert_eq!(super::next(None), 1);
        assert_eq!(super::next(Some(b"41")), 42);
    }
}
