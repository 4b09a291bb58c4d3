//! Any bytes as `signature.json`: never panics; what parses is canonical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_package::SignatureFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(sig) = SignatureFile::parse("fuzz.opkg", data) {
        assert_eq!(sig.to_bytes(), data);
    }
});
