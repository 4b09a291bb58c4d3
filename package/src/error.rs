//! Every way a package, a key or the store can be refused, each naming what
//! and why, so an operator reads the reason without a debugger.

use std::fmt;
use std::path::PathBuf;

/// Which signed part of a package a digest belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Manifest,
    Component,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Manifest => "manifest (service.toml)",
            Part::Component => "component (service.wasm)",
        })
    }
}

/// A package that cannot be read, built or trusted. `package` names the file
/// (and, once its manifest could be read, the service and version).
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("package {package} is not signed (it has no signature.json); sign it with `outpostctl sign`")]
    Unsigned { package: String },
    #[error("package {package} was tampered with: its {part} has sha256 {actual}, but the signature covers {signed}")]
    Tampered { package: String, part: Part, signed: String, actual: String },
    #[error("package {package} is signed by key {key_id}, which is not in the trust store ({trust})")]
    UntrustedKey { package: String, key_id: String, trust: String },
    #[error("package {package}: the signature by key {key_id} ({signer}) does not verify; the package or its signature was altered")]
    BadSignature { package: String, key_id: String, signer: String },
    #[error(
        "package {package} is signed by key {key_id} of provider '{key_provider}', but its manifest says provider \
         '{manifest_provider}'; a provider's key signs only that provider's services"
    )]
    WrongProvider { package: String, key_id: String, key_provider: String, manifest_provider: String },
    #[error("package {package} is malformed: {reason}")]
    Malformed { package: String, reason: String },
    #[error("cannot read package {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

impl PackageError {
    pub(crate) fn malformed(package: &str, reason: impl Into<String>) -> PackageError {
        PackageError::Malformed { package: package.to_owned(), reason: reason.into() }
    }
}

/// A key file or trust store that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("key file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path} has permissions {mode:04o}; {why} (chmod {wanted:04o} {path})")]
    Permissions { path: PathBuf, mode: u32, wanted: u32, why: &'static str },
    #[error("key name '{name}' must be 1 to 64 ASCII letters, digits, '.', '-' or '_'")]
    BadName { name: String },
    #[error("trust store {dir}: key {key_id} appears as provider '{first}' and as provider '{second}' ({path})")]
    Conflict { dir: PathBuf, key_id: String, first: String, second: String, path: PathBuf },
}

/// The content-addressed store of installed packages.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("'{digest}' is not a package digest (64 lowercase hex characters)")]
    BadDigest { digest: String },
    #[error("no installed package with digest {digest} in {root}")]
    NotFound { digest: String, root: PathBuf },
    #[error("installed package {digest} is corrupt: {reason}")]
    Corrupt { digest: String, reason: String },
    #[error("package store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "package store {path} has permissions {mode:04o} or another owner; it must be private to the agent's user"
    )]
    NotPrivate { path: PathBuf, mode: u32 },
    #[error(transparent)]
    Package(#[from] PackageError),
}
