//! Wasi-socket test service: a message `HOST:PORT` on `test/socket/{tail}`
//! makes it connect there over TCP (through `wasi:sockets`) and publish
//! `connected` or the error on `test/socket-out/{tail}`.

use outpost_sdk::{export_service, host, Message, Service, ServiceError};
use std::net::TcpStream;

pub struct WasiSocket;

impl Service for WasiSocket {
    fn init(_config: &str) -> Result<Self, ServiceError> {
        Ok(WasiSocket)
    }

    fn handle(&mut self, batch: Vec<Message>) -> Result<(), ServiceError> {
        for m in batch {
            let tail = m.topic.splitn(3, '/').nth(2).unwrap_or("x");
            let addr = String::from_utf8_lossy(&m.payload).into_owned();
            let result = match TcpStream::connect(addr.as_str()) {
                Ok(_) => "connected".to_owned(),
                Err(e) => format!("error: {e}"),
            };
            host::publish(&format!("test/socket-out/{tail}"), result.as_bytes()).map_err(ServiceError::Internal)?;
        }
        Ok(())
    }
}

export_service!(WasiSocket);

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_sdk::testing::Harness;

    #[test]
    fn connects_natively() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr").to_string();
        let mut h = Harness::<WasiSocket>::new("{}").expect("init");
        h.send("test/socket/a", addr).expect("handle");
        assert_eq!(h.take_published(), vec![("test/socket-out/a".to_string(), b"connected".to_vec())]);
    }
}
