//! Installed packages, stored by content: `<root>/sha256/<digest>/` holds
//! `service.toml`, `service.wasm` and `signature.json`, so an installed
//! package is also a package folder the agent can load directly.
//!
//! A package is written into `<root>/tmp/` and renamed into place, so a
//! folder under `sha256/` is always complete. The store is private to the
//! agent's user (0700), and `get` verifies a package again on every read:
//! a file edited on disk, or a key removed from the trust store since the
//! install, refuses it.

use crate::error::StoreError;
use crate::format::{is_digest, Opkg, COMPONENT_FILE, MANIFEST_FILE, SIGNATURE_FILE};
use crate::keys::TrustStore;
use crate::sign::{verify_parsed, VerifiedPackage};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The content-addressed package store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating, mode 0700) the store at `root`. An existing root
    /// that another user owns is refused; one with looser permissions is
    /// narrowed to 0700.
    pub fn open(root: &Path) -> Result<ContentStore, StoreError> {
        for dir in [root.to_owned(), root.join("sha256"), root.join("tmp")] {
            private_dir(&dir)?;
        }
        let store = ContentStore { root: root.to_owned() };
        store.clean_tmp();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of an installed package (whether or not it exists).
    pub fn path_of(&self, digest: &str) -> Result<PathBuf, StoreError> {
        if !is_digest(digest) {
            return Err(StoreError::BadDigest { digest: digest.to_owned() });
        }
        Ok(self.root.join("sha256").join(digest))
    }

    /// Installs a verified package; returns its digest. Installing the same
    /// content again is a no-op (the first signature is kept).
    pub fn put(&self, pkg: &VerifiedPackage) -> Result<String, StoreError> {
        let dest = self.path_of(&pkg.digest)?;
        if dest.is_dir() {
            return Ok(pkg.digest.clone());
        }
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("{}.{}.{seq}", pkg.digest, std::process::id()));
        let result = self.write_tmp(&tmp, pkg).and_then(|_| match std::fs::rename(&tmp, &dest) {
            Ok(()) => Ok(()),
            // Another writer installed the same content first.
            Err(_) if dest.is_dir() => Ok(()),
            Err(source) => Err(StoreError::Io { path: dest.clone(), source }),
        });
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        sync_dir(&self.root.join("sha256"));
        Ok(pkg.digest.clone())
    }

    fn write_tmp(&self, tmp: &Path, pkg: &VerifiedPackage) -> Result<(), StoreError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(tmp)
            .map_err(|source| StoreError::Io { path: tmp.to_owned(), source })?;
        for (name, data) in [
            (MANIFEST_FILE, pkg.manifest_toml.as_bytes()),
            (COMPONENT_FILE, &pkg.component[..]),
            (SIGNATURE_FILE, &pkg.signature_json[..]),
        ] {
            let path = tmp.join(name);
            let io = |source| StoreError::Io { path: path.clone(), source };
            let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(io)?;
            f.write_all(data).and_then(|_| f.sync_all()).map_err(io)?;
        }
        sync_dir(tmp);
        Ok(())
    }

    /// Reads an installed package and verifies it again against `trust`.
    pub fn get(&self, digest: &str, trust: &TrustStore) -> Result<VerifiedPackage, StoreError> {
        let dir = self.path_of(digest)?;
        if !dir.is_dir() {
            return Err(StoreError::NotFound { digest: digest.to_owned(), root: self.root.clone() });
        }
        let read = |name: &str| {
            let path = dir.join(name);
            crate::format::read_capped(&path).map_err(StoreError::from)
        };
        let manifest = read(MANIFEST_FILE)?;
        let component = read(COMPONENT_FILE)?;
        let signature = read(SIGNATURE_FILE)?;
        let label = crate::format::describe(&dir.display().to_string(), &manifest);
        let pkg = verify_parsed(Opkg { label, manifest, component, signature: Some(signature) }, trust)?;
        if pkg.digest != digest {
            return Err(StoreError::Corrupt {
                digest: digest.to_owned(),
                reason: format!("its content has digest {}", pkg.digest),
            });
        }
        Ok(pkg)
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path_of(digest).is_ok_and(|p| p.is_dir())
    }

    /// Removes an installed package; `false` if it was not there.
    pub fn remove(&self, digest: &str) -> Result<bool, StoreError> {
        let dir = self.path_of(digest)?;
        if !dir.is_dir() {
            return Ok(false);
        }
        // Out of `sha256/` in one step, so no reader sees half a package.
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self.root.join("tmp").join(format!("removing.{digest}.{}.{seq}", std::process::id()));
        std::fs::rename(&dir, &tmp).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        std::fs::remove_dir_all(&tmp).map_err(|source| StoreError::Io { path: tmp.clone(), source })?;
        Ok(true)
    }

    /// Digests of every installed package, sorted.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("sha256");
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        let mut out: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_digest(n))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Leftovers of writes that did not finish (a crash mid-install).
    fn clean_tmp(&self) {
        if let Ok(entries) = std::fs::read_dir(self.root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Creates `dir` with mode 0700, or narrows an existing one we own to 0700;
/// refuses one another user owns.
pub fn private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: dir.to_owned(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != current_uid(dir)? {
        return Err(StoreError::NotPrivate { path: dir.to_owned(), mode });
    }
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// The effective uid, read from a file this process creates (std has no
/// `geteuid`, and this crate stays free of `unsafe`).
fn current_uid(dir: &Path) -> Result<u32, StoreError> {
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let probe = dir.join(format!(".uid-probe.{}.{seq}", std::process::id()));
    let io = |source| StoreError::Io { path: probe.clone(), source };
    let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe).map_err(io)?;
    let uid = f.metadata().map_err(io)?.uid();
    drop(f);
    let _ = std::fs::remove_file(&probe);
    Ok(uid)
}

/// Writes `path` through a temporary file beside it (mode `mode`, synced,
/// then renamed), so a reader sees the old file or the whole new one.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.{seq}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
