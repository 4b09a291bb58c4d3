//! Key files, the trust store and the content-addressed store, on disk.

mod common;

use common::*;
use outpost_package::{
    keygen, pack_dir, verify, ContentStore, KeyError, PackageError, ProviderKey, ProviderSigningKey, StoreError,
    TrustStore,
};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_private_and_a_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    let g = keygen(&keys, "acme").expect("keygen");
    assert_eq!(mode(&g.private_path), 0o600);
    let line = std::fs::read_to_string(&g.public_path).expect("pub");
    assert!(line.starts_with("ed25519 ") && line.ends_with("  acme\n"), "{line:?}");
    assert_eq!(line.lines().count(), 1);
    let private = ProviderSigningKey::load(&g.private_path).expect("load private");
    assert_eq!(private.provider, "acme");
    assert_eq!(private.public().key, g.public.key);
    assert_eq!(ProviderKey::load(&g.public_path).expect("load public").key_id, g.public.key_id);
    assert_eq!(g.public.key_id.len(), 16);

    let again = keygen(&keys, "acme").expect_err("overwrite");
    assert!(matches!(again, KeyError::Exists { .. }) && again.to_string().contains("acme.key"), "{again}");
    assert!(matches!(keygen(&keys, "../evil"), Err(KeyError::BadName { .. })));
}

#[test]
fn a_private_key_others_can_read_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = keygen(dir.path(), "acme").expect("keygen");
    std::fs::set_permissions(&g.private_path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = ProviderSigningKey::load(&g.private_path).expect_err("readable");
    assert!(e.to_string().contains("0644") && e.to_string().contains("chmod 0600"), "{e}");
}

#[test]
fn trust_store_reads_every_pub_file_and_names_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trust_dir = dir.path().join("trust");
    std::fs::create_dir(&trust_dir).expect("mkdir");
    let a = keygen(&dir.path().join("a"), "acme").expect("a");
    let b = keygen(&dir.path().join("b"), "globex").expect("b");
    std::fs::copy(&a.public_path, trust_dir.join("acme.pub")).expect("copy");
    std::fs::copy(&b.public_path, trust_dir.join("globex.pub")).expect("copy");
    std::fs::write(trust_dir.join("README"), "not a key").expect("write");
    let store = TrustStore::load(&trust_dir).expect("load");
    assert_eq!(store.len(), 2);
    assert_eq!(store.get(&a.public.key_id).map(|k| k.provider.as_str()), Some("acme"));
    assert!(store.describe().contains("2 key(s)"));

    std::fs::write(trust_dir.join("broken.pub"), "ed25519 notbase64!  x\n").expect("write");
    let e = TrustStore::load(&trust_dir).expect_err("broken");
    assert!(e.to_string().contains("broken.pub") && e.to_string().contains("base64"), "{e}");
    std::fs::remove_file(trust_dir.join("broken.pub")).expect("rm");

    // The same key under two provider names is ambiguous.
    let line = std::fs::read_to_string(&a.public_path).expect("read").replace("acme", "globex2");
    std::fs::write(trust_dir.join("zz.pub"), line).expect("write");
    assert!(matches!(TrustStore::load(&trust_dir), Err(KeyError::Conflict { .. })));
    std::fs::remove_file(trust_dir.join("zz.pub")).expect("rm");

    std::fs::set_permissions(&trust_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let e = TrustStore::load(&trust_dir).expect_err("world-writable");
    assert!(e.to_string().contains("anyone may write"), "{e}");
}

#[test]
fn pack_dir_reads_a_built_package_folder() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("service.toml"), MANIFEST).expect("write");
    std::fs::write(dir.path().join("service.wasm"), component()).expect("write");
    assert_eq!(pack_dir(dir.path(), Some(&acme_key())).expect("pack"), signed());
    std::fs::remove_file(dir.path().join("service.wasm")).expect("rm");
    let e = pack_dir(dir.path(), Some(&acme_key())).expect_err("no wasm");
    assert!(matches!(e, PackageError::Read { .. }) && e.to_string().contains("service.wasm"), "{e}");
}

#[test]
fn store_puts_gets_lists_and_removes_by_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("packages");
    let store = ContentStore::open(&root).expect("open");
    assert_eq!(mode(&root), 0o700);
    let pkg = verify("p.opkg", &signed(), &acme_trust()).expect("verify");
    let digest = store.put(&pkg).expect("put");
    assert_eq!(digest, pkg.digest);
    assert_eq!(store.put(&pkg).expect("again"), digest, "installing twice is a no-op");
    assert!(store.contains(&digest));
    assert_eq!(store.list().expect("list"), vec![digest.clone()]);
    let folder = store.path_of(&digest).expect("path");
    for f in ["service.toml", "service.wasm", "signature.json"] {
        assert!(folder.join(f).is_file(), "{f}");
    }
    assert_eq!(std::fs::read_dir(root.join("tmp")).expect("tmp").count(), 0, "no leftovers");
    let back = store.get(&digest, &acme_trust()).expect("get");
    assert_eq!(back, ContentStore::open(&root).expect("reopen").get(&digest, &acme_trust()).expect("get"));
    assert_eq!(back.component, pkg.component);
    assert_eq!(back.digest, digest);

    // A key removed from the trust store refuses what it signed.
    assert!(matches!(
        store.get(&digest, &TrustStore::empty()),
        Err(StoreError::Package(PackageError::UntrustedKey { .. }))
    ));
    // A component edited on disk is refused.
    let wasm = folder.join("service.wasm");
    let mut bytes = std::fs::read(&wasm).expect("read");
    bytes[10] ^= 0x40;
    std::fs::write(&wasm, bytes).expect("write");
    let e = store.get(&digest, &acme_trust()).expect_err("tampered");
    assert!(e.to_string().contains("tampered") && e.to_string().contains(&digest), "{e}");

    assert!(store.remove(&digest).expect("remove"));
    assert!(!store.contains(&digest));
    assert!(!store.remove(&digest).expect("remove again"));
    assert!(matches!(store.get(&digest, &acme_trust()), Err(StoreError::NotFound { .. })));
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn store_refuses_digests_that_are_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = ContentStore::open(dir.path()).expect("open");
    for bad in ["../../etc", "", "ABC", &"g".repeat(64), &format!("{}/x", "a".repeat(62))] {
        assert!(matches!(store.remove(bad), Err(StoreError::BadDigest { .. })), "{bad}");
        assert!(!store.contains(bad));
    }
}

#[test]
fn store_narrows_a_loose_root_to_the_agent_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    ContentStore::open(dir.path()).expect("open");
    assert_eq!(mode(dir.path()), 0o700);
}
