//! The `.opkg` file: an uncompressed tar archive in one canonical encoding.
//!
//! It holds, in this order, `service.toml`, `service.wasm` and (once signed)
//! `signature.json`, each a regular file with mode 0644, owner 0, mtime 0.
//! A reader accepts only that exact encoding: the archive is parsed, encoded
//! again from what it held, and must come out byte for byte the same. Extra
//! entries, links, path tricks, duplicates, trailing bytes, truncation and
//! edited header fields are therefore all refused, and a package has one
//! byte string, so its file hash is stable too.

use crate::error::PackageError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;

pub const MANIFEST_FILE: &str = "service.toml";
pub const COMPONENT_FILE: &str = "service.wasm";
pub const SIGNATURE_FILE: &str = "signature.json";

/// The package format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The only signature algorithm.
pub const ALGORITHM: &str = "ed25519";

/// Largest `.opkg` file accepted.
pub const MAX_PACKAGE_BYTES: u64 = 64 << 20;
/// Largest `service.toml`.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Largest `signature.json`.
pub const MAX_SIGNATURE_BYTES: u64 = 4 << 10;

const BLOCK: usize = 512;

/// A parsed, not yet verified package: what the archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opkg {
    /// What the package is called in errors: its file, plus service and
    /// version when the manifest names them.
    pub label: String,
    pub manifest: Vec<u8>,
    pub component: Vec<u8>,
    /// `signature.json` as stored; `None` for an unsigned package.
    pub signature: Option<Vec<u8>>,
}

/// `signature.json`: who signed which digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    pub format: u32,
    pub algorithm: String,
    /// First 16 hex characters of the sha256 of the public key.
    pub key_id: String,
    pub manifest_sha256: String,
    pub component_sha256: String,
    /// Base64 ed25519 signature over [`statement`].
    pub signature: String,
}

/// The byte string a provider signs: the format version and both digests.
/// Its sha256 is the package's identity in the content store.
pub fn statement(manifest_sha256: &str, component_sha256: &str) -> Vec<u8> {
    format!(
        "outpost-package v{FORMAT_VERSION}\nalgorithm {ALGORITHM}\nmanifest sha256:{manifest_sha256}\ncomponent sha256:{component_sha256}\n"
    )
    .into_bytes()
}

/// Hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// True for 64 lowercase hex characters (a digest as this crate writes it).
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl SignatureFile {
    /// Canonical JSON, the only form a reader accepts.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Parses and checks every field's shape; `package` labels errors.
    pub fn parse(package: &str, bytes: &[u8]) -> Result<SignatureFile, PackageError> {
        let bad = |reason: String| PackageError::malformed(package, format!("{SIGNATURE_FILE}: {reason}"));
        let sig: SignatureFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if sig.format != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} (this reader understands version {FORMAT_VERSION})",
                sig.format
            )));
        }
        if sig.algorithm != ALGORITHM {
            return Err(bad(format!("algorithm '{}' (only {ALGORITHM} is accepted)", sig.algorithm)));
        }
        if sig.key_id.len() != 16 || !is_digest(&format!("{:0<64}", sig.key_id)) {
            return Err(bad(format!("key_id '{}' is not 16 lowercase hex characters", sig.key_id)));
        }
        for (field, value) in [("manifest_sha256", &sig.manifest_sha256), ("component_sha256", &sig.component_sha256)] {
            if !is_digest(value) {
                return Err(bad(format!("{field} '{value}' is not 64 lowercase hex characters")));
            }
        }
        if sig.to_bytes() != bytes {
            return Err(bad("not in canonical form (it must be written by `outpostctl sign`)".into()));
        }
        Ok(sig)
    }
}

/// Writes the canonical archive of the given parts.
pub(crate) fn encode(manifest: &[u8], component: &[u8], signature: Option<&[u8]>) -> Vec<u8> {
    let mut parts = vec![(MANIFEST_FILE, manifest), (COMPONENT_FILE, component)];
    if let Some(sig) = signature {
        parts.push((SIGNATURE_FILE, sig));
    }
    let mut out = Vec::with_capacity(parts.iter().map(|(_, d)| d.len() + 2 * BLOCK).sum::<usize>() + 2 * BLOCK);
    for (name, data) in parts {
        let mut header = tar::Header::new_ustar();
        // The names are short constants; `set_path` cannot fail on them, and
        // writing into a Vec cannot fail either.
        let _ = header.set_path(name);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

impl Opkg {
    /// Parses an `.opkg` held in memory; `name` (usually the file path) labels
    /// every error. Never panics, whatever the bytes.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Opkg, PackageError> {
        if bytes.len() as u64 > MAX_PACKAGE_BYTES {
            return Err(PackageError::malformed(
                name,
                format!("{} bytes, over the {} MiB limit", bytes.len(), MAX_PACKAGE_BYTES >> 20),
            ));
        }
        let mut manifest = None;
        let mut component = None;
        let mut signature = None;
        let mut archive = tar::Archive::new(bytes);
        let entries =
            archive.entries().map_err(|e| PackageError::malformed(name, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| PackageError::malformed(name, format!("not a valid or complete tar archive: {e}")))?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if path.split(['/', '\\']).any(|c| c == "..") || path.starts_with('/') {
                return Err(PackageError::malformed(name, format!("entry '{path}' reaches outside the package")));
            }
            if !kind.is_file() {
                return Err(PackageError::malformed(
                    name,
                    format!("entry '{path}' is a {kind:?}, not a regular file; a package holds only {MANIFEST_FILE}, {COMPONENT_FILE} and {SIGNATURE_FILE}"),
                ));
            }
            let (slot, cap) = match path.as_str() {
                MANIFEST_FILE => (&mut manifest, MAX_MANIFEST_BYTES),
                COMPONENT_FILE => (&mut component, MAX_PACKAGE_BYTES),
                SIGNATURE_FILE => (&mut signature, MAX_SIGNATURE_BYTES),
                other => {
                    return Err(PackageError::malformed(
                        name,
                        format!("it holds '{other}'; a package holds only {MANIFEST_FILE}, {COMPONENT_FILE} and {SIGNATURE_FILE}"),
                    ))
                }
            };
            if slot.is_some() {
                return Err(PackageError::malformed(name, format!("it holds {path} twice")));
            }
            let size = entry
                .header()
                .size()
                .map_err(|e| PackageError::malformed(name, format!("entry {path} has an unreadable size: {e}")))?;
            if size > cap {
                return Err(PackageError::malformed(
                    name,
                    format!("{path} is {size} bytes, over its limit of {cap} bytes"),
                ));
            }
            let mut data = Vec::new();
            (&mut entry)
                .take(cap)
                .read_to_end(&mut data)
                .map_err(|e| PackageError::malformed(name, format!("cannot read {path}: {e}")))?;
            if data.len() as u64 != size {
                return Err(PackageError::malformed(
                    name,
                    format!("truncated: {path} should be {size} bytes, the archive ends after {}", data.len()),
                ));
            }
            *slot = Some(data);
        }
        let manifest = manifest.ok_or_else(|| PackageError::malformed(name, format!("it has no {MANIFEST_FILE}")))?;
        let component =
            component.ok_or_else(|| PackageError::malformed(name, format!("it has no {COMPONENT_FILE}")))?;
        let canonical = encode(&manifest, &component, signature.as_deref());
        if canonical != bytes {
            let reason = if canonical.starts_with(bytes) {
                format!("truncated: {} of {} bytes", bytes.len(), canonical.len())
            } else {
                let at =
                    canonical.iter().zip(bytes).position(|(a, b)| a != b).unwrap_or(canonical.len().min(bytes.len()));
                format!(
                    "not in the canonical package encoding (first difference at byte {at}); \
                     build packages with `outpostctl package`"
                )
            };
            return Err(PackageError::malformed(name, reason));
        }
        let label = describe(name, &manifest);
        Ok(Opkg { label, manifest, component, signature })
    }

    /// Reads and parses an `.opkg` file, refusing an oversized one before
    /// reading it.
    pub fn read_file(path: &std::path::Path) -> Result<Opkg, PackageError> {
        let bytes = read_capped(path)?;
        Opkg::parse(&path.display().to_string(), &bytes)
    }

    /// The package's identity: sha256 of the statement a signer signs
    /// (format version and both digests), the same signed or not.
    pub fn digest(&self) -> String {
        sha256_hex(&statement(&sha256_hex(&self.manifest), &sha256_hex(&self.component)))
    }

    /// The canonical encoding of this package.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&self.manifest, &self.component, self.signature.as_deref())
    }
}

/// Reads a file of at most [`MAX_PACKAGE_BYTES`].
pub fn read_capped(path: &std::path::Path) -> Result<Vec<u8>, PackageError> {
    let read_err = |source| PackageError::Read { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PACKAGE_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_PACKAGE_BYTES {
        return Err(PackageError::malformed(
            &path.display().to_string(),
            format!("over the {} MiB limit", MAX_PACKAGE_BYTES >> 20),
        ));
    }
    Ok(bytes)
}

/// `file (service version)` when the manifest names them, else `file`.
pub(crate) fn describe(name: &str, manifest: &[u8]) -> String {
    match service_header(manifest) {
        Some(s) if !s.name.is_empty() => format!("{name} ({} {})", s.name, s.version),
        _ => name.to_owned(),
    }
}

/// The `[service]` fields this crate needs; the agent validates the rest.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ServiceHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub provider: String,
}

#[derive(Deserialize)]
struct ManifestHead {
    service: ServiceHeader,
}

pub(crate) fn service_header(manifest: &[u8]) -> Option<ServiceHeader> {
    let text = std::str::from_utf8(manifest).ok()?;
    toml::from_str::<ManifestHead>(text).ok().map(|m| m.service)
}
