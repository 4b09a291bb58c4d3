//! A provider, its key and a package, the same in every test.

#![allow(dead_code)]

use outpost_package::{pack, ProviderKey, SigningKey, TrustStore};

pub const MANIFEST: &str = r#"[service]
name = "positioning"
version = "1.2.0"
provider = "acme"
world = "outpost:service@1.0.0"
[bus]
subscribe = ["site/+/+/gnss/nmea"]
publish = ["svc/positioning/+/fix"]
"#;

/// Not a real component: this crate never compiles it.
pub fn component() -> Vec<u8> {
    let mut c = b"\0asm\x0d\0\x01\0".to_vec();
    c.extend((0..3000u32).map(|i| (i * 7 % 251) as u8));
    c
}

pub fn acme_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

pub fn trust(provider: &str, key: &SigningKey) -> TrustStore {
    TrustStore::from_keys([ProviderKey::new(provider, key.verifying_key()).expect("name")])
}

pub fn acme_trust() -> TrustStore {
    trust("acme", &acme_key())
}

pub fn signed() -> Vec<u8> {
    pack(MANIFEST.as_bytes(), &component(), Some(&acme_key())).expect("pack")
}
