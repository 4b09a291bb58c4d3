//! Property tests: whatever the bytes, reading a package never panics, and
//! anything but the untouched signed package is refused.

mod common;

use common::*;
use outpost_package::{verify, Opkg};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        prop_assert!(verify("r.opkg", &bytes, &acme_trust()).is_err());
        // The parser alone, too (unsigned archives are not refused by it, but
        // random bytes are never one).
        prop_assert!(Opkg::parse("r.opkg", &bytes).is_err());
    }

    #[test]
    fn random_blocks_after_a_valid_header_are_refused(tail in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut bytes = signed()[..512].to_vec();
        bytes.extend_from_slice(&tail);
        prop_assert!(verify("r.opkg", &bytes, &acme_trust()).is_err());
    }

    #[test]
    fn every_bit_flip_is_refused(bit in 0usize..(signed().len() * 8)) {
        let mut bytes = signed();
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(verify("f.opkg", &bytes, &acme_trust()).is_err(), "bit {} accepted", bit);
    }

    #[test]
    fn overwritten_ranges_are_refused(at in 0usize..6000, junk in proptest::collection::vec(any::<u8>(), 1..64)) {
        let mut bytes = signed();
        let at = at % bytes.len();
        let end = (at + junk.len()).min(bytes.len());
        prop_assume!(bytes[at..end] != junk[..end - at]);
        bytes[at..end].copy_from_slice(&junk[..end - at]);
        prop_assert!(verify("o.opkg", &bytes, &acme_trust()).is_err());
    }

    #[test]
    fn truncations_are_refused(cut in 0usize..6000) {
        let bytes = signed();
        let cut = cut % bytes.len();
        prop_assert!(verify("t.opkg", &bytes[..cut], &acme_trust()).is_err());
    }

    #[test]
    fn appended_bytes_are_refused(junk in proptest::collection::vec(any::<u8>(), 1..1100)) {
        let mut bytes = signed();
        bytes.extend_from_slice(&junk);
        prop_assert!(verify("a.opkg", &bytes, &acme_trust()).is_err());
    }

    #[test]
    fn any_manifest_and_component_round_trip(
        manifest in "[ -~\n]{0,300}",
        component in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let bytes = outpost_package::pack(manifest.as_bytes(), &component, Some(&acme_key())).expect("pack");
        let parsed = Opkg::parse("p.opkg", &bytes).expect("parse");
        prop_assert_eq!(parsed.manifest, manifest.as_bytes());
        prop_assert_eq!(parsed.component, component);
    }
}

#[test]
fn the_untouched_package_is_accepted() {
    verify("u.opkg", &signed(), &acme_trust()).expect("untouched");
}
