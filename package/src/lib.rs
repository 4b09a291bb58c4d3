//! Signed Outpost service packages.
//!
//! A provider builds an `.opkg` (manifest + component + an ed25519 signature
//! over their digests) with [`pack`]; an agent accepts it only through
//! [`verify`], against its [`TrustStore`] of provider keys, and installs it
//! in the [`ContentStore`] under its digest. No wasmtime here: the CLI, the
//! agent and an operations center all link this crate.
//!
//! - [`format`]: the `.opkg` archive and `signature.json`, read as hostile input.
//! - [`keys`]: key files, `keygen`, the trust store.
//! - [`sign`]: pack, sign, verify.
//! - [`store`]: installed packages by content digest.
//! - [`tool`]: what `outpostctl keygen/package/sign/verify` do.

pub mod error;
pub mod format;
pub mod keys;
pub mod sign;
pub mod store;
pub mod tool;

pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use error::{KeyError, PackageError, Part, StoreError};
pub use format::{Opkg, SignatureFile, MAX_PACKAGE_BYTES};
pub use keys::{keygen, GeneratedKey, ProviderKey, ProviderSigningKey, TrustStore};
pub use sign::{pack, pack_dir, sign, verify, verify_file, verify_parsed, VerifiedPackage};
pub use store::ContentStore;
