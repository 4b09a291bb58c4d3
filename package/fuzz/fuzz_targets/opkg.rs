//! Any bytes as an `.opkg`: parsing and verifying never panic, and the only
//! archives the parser accepts are canonical (re-encoding gives the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_package::{verify, Opkg, ProviderKey, SigningKey, TrustStore};

fuzz_target!(|data: &[u8]| {
    if let Ok(opkg) = Opkg::parse("fuzz.opkg", data) {
        assert_eq!(opkg.to_bytes(), data, "accepted a non-canonical archive");
    }
    let key = SigningKey::from_bytes(&[7; 32]);
    let trust = TrustStore::from_keys(ProviderKey::new("acme", key.verifying_key()).ok());
    let _ = verify("fuzz.opkg", data, &trust);
});
