//! A service built straight from the frozen WIT `outpost:service@1.1.0`
//! (`sdk/wit-1.1.0`), without the SDK (which now builds against 1.2.0).
//! Each message on `old/in/{tail}` is published to `old/out/{tail}` as
//! `{position in its batch}/{batch size}:{payload}`, so a test sees that
//! batches of several messages reach its `handle`.

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({
        path: "../../../sdk/wit-1.1.0",
        world: "service",
    });

    struct Old;

    impl Guest for Old {
        fn init(_config: String) -> Result<(), ServiceError> {
            Ok(())
        }

        fn handle(batch: Vec<Message>) -> Result<(), ServiceError> {
            let size = batch.len();
            for (i, m) in batch.iter().enumerate() {
                let (topic, payload) = super::echo(&m.topic, &m.payload, i, size);
                outpost::service::bus::publish(&topic, &payload).map_err(ServiceError::Internal)?;
            }
            Ok(())
        }

        fn tick(_now_ms: u64) -> Result<(), ServiceError> {
            Ok(())
        }

        fn migrate(_from_version: String) -> Result<(), ServiceError> {
            Ok(())
        }
    }

    export!(Old);
}

/// `old/in/{tail}` -> `old/out/{tail}`, payload prefixed with `{i}/{size}:`.
pub fn echo(topic: &str, payload: &[u8], i: usize, size: usize) -> (String, Vec<u8>) {
    let tail = topic.splitn(3, '/').nth(2).unwrap_or("x");
    let mut out = format!("{i}/{size}:").into_bytes();
    out.extend_from_slice(payload);
    (format!("old/out/{tail}"), out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn echoes_with_its_place_in_the_batch() {
        assert_eq!(super::echo("old/in/a/b", b"hi", 2, 5), ("old/out/a/b".to_owned(), b"2/5:hi".to_vec()));
    }
}
