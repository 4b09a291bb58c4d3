//! Any text as a public key file: never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_package::ProviderKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ProviderKey::parse(text, std::path::Path::new("fuzz.pub"));
    }
});
