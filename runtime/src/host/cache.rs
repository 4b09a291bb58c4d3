//! The precompiled-code cache, which must not become a way in.
//!
//! wasmtime loads a `.cwasm` as native code without checking it, so an entry
//! is used only when (1) the cache folder is private to the agent's user
//! (mode 0700, our uid) and (2) the entry's sidecar `<entry>.meta`, written
//! when the agent compiled it, records the BLAKE3 hash of exactly these bytes,
//! the digest of the verified component it came from, and this engine's
//! compatibility hash. Anything else is compiled again from the component
//! and the entry rewritten.
//!
//! The entry is hashed through a read-only mapping of the file and then
//! mapped by wasmtime itself (`deserialize_file`), so its code is never
//! copied: the same page-cache pages are checked and then run. Between the
//! check and the mapping the file is the same inode ([`Verified::is_still`]);
//! the agent replaces entries only by rename, never in place, so changing
//! it in place would take the agent's own user.

use outpost_package::store::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// What the agent recorded when it compiled an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CacheMeta {
    /// BLAKE3 of the `.cwasm` bytes.
    pub cwasm_blake3: String,
    /// sha256 of the component it was compiled from.
    pub component_sha256: String,
    /// [`engine_hash`] of the engine that compiled it.
    pub engine: String,
}

/// Feeds a `Hash` impl into sha256: stable across runs and Rust releases,
/// unlike `DefaultHasher`.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        let d = self.0.clone().finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        u64::from_le_bytes(first)
    }
}

/// Hex sha256 of the engine's `precompile_compatibility_hash` (wasmtime
/// version, compiler settings, enabled features).
pub(crate) fn engine_hash(engine: &wasmtime::Engine) -> String {
    let mut h = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex::encode(h.0.finalize())
}

/// `<dir>/<component digest>-<engine hash, 16 hex>.cwasm`.
pub(crate) fn entry_path(dir: &Path, component_sha256: &str, engine: &str) -> PathBuf {
    dir.join(format!("{component_sha256}-{}.cwasm", &engine[..16.min(engine.len())]))
}

pub(crate) fn meta_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".meta");
    PathBuf::from(name)
}

/// Why an entry was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refused {
    #[error("no record of compiling it ({0})")]
    NoRecord(String),
    #[error("its record is unreadable: {0}")]
    BadRecord(String),
    #[error("it has BLAKE3 {actual}, but the agent recorded {recorded} (altered or replaced)")]
    Altered { actual: String, recorded: String },
    #[error("it was recorded for component {recorded}, not {wanted}")]
    OtherComponent { recorded: String, wanted: String },
    #[error("it was compiled by another engine configuration ({recorded}, this one is {wanted})")]
    OtherEngine { recorded: String, wanted: String },
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
}

/// An entry that matched its record: which file it was, to check that the
/// file wasmtime then maps is the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    pub len: u64,
    dev: u64,
    ino: u64,
}

impl Verified {
    fn of(meta: &std::fs::Metadata) -> Verified {
        use std::os::unix::fs::MetadataExt;
        Verified { len: meta.len(), dev: meta.dev(), ino: meta.ino() }
    }

    /// `entry` is still the file that was verified (not replaced since).
    pub(crate) fn is_still(&self, entry: &Path) -> bool {
        std::fs::metadata(entry).is_ok_and(|m| Verified::of(&m) == *self)
    }
}

/// The entry, if it is there and matches its record; `Ok(None)` when there
/// is no entry at all.
pub(crate) fn verify(entry: &Path, component_sha256: &str, engine: &str) -> Result<Option<Verified>, Refused> {
    let file = match std::fs::File::open(entry) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Refused::Read(e)),
    };
    let verified = Verified::of(&file.metadata().map_err(Refused::Read)?);
    let meta_file = meta_path(entry);
    let text = std::fs::read(&meta_file).map_err(|e| Refused::NoRecord(format!("{}: {e}", meta_file.display())))?;
    let meta: CacheMeta = serde_json::from_slice(&text).map_err(|e| Refused::BadRecord(e.to_string()))?;
    let actual = blake3_of(&file, verified.len).map_err(Refused::Read)?.to_hex().to_string();
    if actual != meta.cwasm_blake3 {
        return Err(Refused::Altered { actual, recorded: meta.cwasm_blake3 });
    }
    if meta.component_sha256 != component_sha256 {
        return Err(Refused::OtherComponent { recorded: meta.component_sha256, wanted: component_sha256.into() });
    }
    if meta.engine != engine {
        return Err(Refused::OtherEngine { recorded: meta.engine, wanted: engine.into() });
    }
    Ok(Some(verified))
}

/// BLAKE3 of an open file's first `len` bytes, read through a mapping of
/// the page cache (no copy into fresh memory).
fn blake3_of(file: &std::fs::File, len: u64) -> std::io::Result<blake3::Hash> {
    use std::os::fd::AsRawFd;
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    if len == 0 {
        return Ok(blake3::hash(&[]));
    }
    // SAFETY: a new read-only private mapping of `len` bytes of an open
    // file, read below and unmapped before returning; nothing else holds it.
    // The file is in the agent's private cache folder, where entries are
    // replaced by rename and never truncated, so its pages stay backed.
    let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `ptr` maps `len` readable bytes (checked above) until the munmap.
    let hash = blake3::hash(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) });
    // SAFETY: unmaps exactly the mapping made above, no longer borrowed.
    unsafe { libc::munmap(ptr, len) };
    Ok(hash)
}

/// Removes the entries (and their records) compiled by another engine
/// configuration, which this agent can never load (an agent or wasmtime
/// upgrade, changed settings); returns how many entries went. Entries of
/// this engine stay, including those of versions kept for a rollback.
pub(crate) fn remove_other_engines(dir: &Path, engine: &str) -> std::io::Result<usize> {
    let ours = format!("-{}.cwasm", &engine[..16.min(engine.len())]);
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Nothing compiled yet (no service, or none loaded): nothing to prune.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let base = name.strip_suffix(".meta").unwrap_or(name);
        if !base.ends_with(".cwasm") || base.ends_with(&ours) {
            continue;
        }
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => removed += usize::from(!name.ends_with(".meta")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// Writes an entry and then its record, each to a private temporary file
/// renamed into place: a record exists only for a complete entry.
pub(crate) fn write(entry: &Path, code: &[u8], component_sha256: &str, engine: &str) -> std::io::Result<()> {
    let meta = CacheMeta {
        cwasm_blake3: blake3::hash(code).to_hex().to_string(),
        component_sha256: component_sha256.into(),
        engine: engine.into(),
    };
    let meta_file = meta_path(entry);
    // An old record must not vouch for the new bytes while they are written.
    match std::fs::remove_file(&meta_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_atomic(entry, code, 0o600)?;
    let json = serde_json::to_vec(&meta).map_err(std::io::Error::other)?;
    write_atomic(&meta_file, &json, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{EngineOptions, HostEngine};
    use std::os::unix::fs::PermissionsExt;

    fn host() -> HostEngine {
        HostEngine::new(&EngineOptions { pooling: false, max_instances: 1 }).expect("engine")
    }

    fn component(text: &str) -> (Vec<u8>, String) {
        let bytes = wat::parse_str(text).expect("wat");
        let digest = hex::encode(Sha256::digest(&bytes));
        (bytes, digest)
    }

    const GOOD: &str = "(component (core module (func (export \"f\") (result i32) i32.const 1)))";
    const EVIL: &str = "(component (core module (func (export \"f\") (result i32) i32.const 666)))";

    /// Compiles through the cache and returns what the cache folder holds
    /// afterwards for that component.
    fn compile(host: &HostEngine, dir: &Path, text: &str) -> (PathBuf, Vec<u8>) {
        let (bytes, digest) = component(text);
        let c = host.compile_cached(Path::new("t/service.wasm"), &bytes, &digest, dir).expect("compile");
        let entry = entry_path(dir, &digest, &engine_hash(host.engine()));
        let on_disk = std::fs::read(&entry).expect("entry written");
        assert_eq!(c.serialize().expect("serialize"), on_disk, "the entry is what was compiled");
        (entry, on_disk)
    }

    #[test]
    fn entries_of_other_engines_are_removed_and_ours_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let host = host();
        let (ours, _) = compile(&host, dir, GOOD);
        let other = dir.join(format!("{}-0123456789abcdef.cwasm", "ab".repeat(32)));
        std::fs::write(&other, b"old code").expect("write");
        std::fs::write(meta_path(&other), b"{}").expect("write");
        std::fs::write(dir.join("notes.txt"), b"not an entry").expect("write");
        let removed = remove_other_engines(dir, &engine_hash(host.engine())).expect("prune");
        assert_eq!(removed, 1);
        assert!(!other.exists() && !meta_path(&other).exists());
        assert!(ours.exists() && meta_path(&ours).exists(), "this engine's entry stays");
        assert!(dir.join("notes.txt").exists(), "only cache entries are touched");
        assert_eq!(remove_other_engines(&dir.join("absent"), &engine_hash(host.engine())).expect("no folder"), 0);
    }

    #[test]
    fn engine_hash_is_stable_and_hex() {
        let h = host();
        let a = engine_hash(h.engine());
        assert_eq!(a, engine_hash(h.engine()));
        assert_eq!(a, engine_hash(host().engine()), "same configuration, same hash");
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_recorded_entry_is_loaded_and_the_folder_is_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cache");
        let host = host();
        let (entry, code) = compile(&host, &dir, GOOD);
        assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&entry).expect("entry").permissions().mode() & 0o777, 0o600);
        let (_, digest) = component(GOOD);
        let engine = engine_hash(host.engine());
        let verified = verify(&entry, &digest, &engine).expect("ok").expect("entry");
        assert_eq!(verified.len, code.len() as u64);
        assert!(verified.is_still(&entry));
        // Loaded, not compiled and rewritten: the entry is the same file.
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&entry).expect("entry").ino();
        compile(&host, &dir, GOOD);
        assert_eq!(std::fs::metadata(&entry).expect("entry").ino(), inode);
    }

    #[test]
    fn a_flipped_entry_is_recompiled_not_loaded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = host();
        let (entry, code) = compile(&host, tmp.path(), GOOD);
        let mut bad = code.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x01;
        std::fs::write(&entry, &bad).expect("tamper");
        let (_, digest) = component(GOOD);
        let engine = engine_hash(host.engine());
        assert!(matches!(verify(&entry, &digest, &engine), Err(Refused::Altered { .. })));
        let (_, after) = compile(&host, tmp.path(), GOOD);
        assert_eq!(after, code, "recompiled from the component and rewritten");
    }

    #[test]
    fn native_code_dropped_in_without_a_record_is_not_loaded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = host();
        // Valid native code for this very engine, but of another component,
        // placed where the good component's entry would be.
        let (evil_bytes, _) = component(EVIL);
        let evil = host.compile(Path::new("evil"), &evil_bytes).expect("compile").serialize().expect("ser");
        let (good_bytes, digest) = component(GOOD);
        let engine = engine_hash(host.engine());
        let entry = entry_path(tmp.path(), &digest, &engine);
        std::fs::write(&entry, &evil).expect("drop in");
        assert!(matches!(verify(&entry, &digest, &engine), Err(Refused::NoRecord(_))));
        let (_, after) = compile(&host, tmp.path(), GOOD);
        let genuine = host.compile(Path::new("good"), &good_bytes).expect("compile").serialize().expect("ser");
        assert_eq!(after, genuine);
        assert_ne!(after, evil);
    }

    #[test]
    fn a_forged_or_foreign_record_is_not_trusted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let host = host();
        let (entry, code) = compile(&host, tmp.path(), GOOD);
        let (_, digest) = component(GOOD);
        let engine = engine_hash(host.engine());
        let meta = meta_path(&entry);
        let recorded: CacheMeta = serde_json::from_slice(&std::fs::read(&meta).expect("meta")).expect("json");
        for (forged, want) in [
            (CacheMeta { cwasm_blake3: "00".repeat(32), ..recorded.clone() }, "Altered"),
            (CacheMeta { component_sha256: "11".repeat(32), ..recorded.clone() }, "OtherComponent"),
            (CacheMeta { engine: "22".repeat(32), ..recorded.clone() }, "OtherEngine"),
        ] {
            std::fs::write(&meta, serde_json::to_vec(&forged).expect("json")).expect("forge");
            let got = verify(&entry, &digest, &engine).expect_err("refused");
            assert!(format!("{got:?}").starts_with(want), "{got:?}");
        }
        std::fs::write(&meta, b"{not json").expect("forge");
        assert!(matches!(verify(&entry, &digest, &engine), Err(Refused::BadRecord(_))));
        let (_, after) = compile(&host, tmp.path(), GOOD);
        assert_eq!(after, code);
        let verified = verify(&entry, &digest, &engine).expect("rewritten").expect("entry");
        assert_eq!(verified.len, code.len() as u64, "record rewritten");
        // A replaced entry is not the file that was verified.
        write_atomic(&entry, &code, 0o600).expect("replace");
        assert!(!verified.is_still(&entry));
    }

    #[test]
    fn a_cache_folder_others_can_write_is_made_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("cache");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        compile(&host(), &dir, GOOD);
        assert_eq!(std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777, 0o700);
    }
}
