//! Building, signing and verifying packages.

use crate::error::{PackageError, Part};
use crate::format::{
    self, sha256_hex, Opkg, SignatureFile, ALGORITHM, COMPONENT_FILE, FORMAT_VERSION, MANIFEST_FILE,
    MAX_MANIFEST_BYTES, MAX_PACKAGE_BYTES,
};
use crate::keys::{key_id, TrustStore};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey};
use std::path::Path;

/// A package whose digests match its signature, signed by a trusted key of
/// the provider its manifest names. Only [`verify`] (and the store's `get`,
/// which runs it again) makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedPackage {
    /// What errors and logs call it: file (service version).
    pub label: String,
    /// `service.toml`, UTF-8; the agent still parses and validates it.
    pub manifest_toml: String,
    /// `service.wasm`.
    pub component: Vec<u8>,
    /// The package's identity: sha256 of the signed statement (format version
    /// and both digests). Re-signing with another key keeps it.
    pub digest: String,
    pub manifest_digest: String,
    /// sha256 of `service.wasm` (the agent's `LoadedComponent::digest`).
    pub component_digest: String,
    /// The provider whose key signed it (equals the manifest's provider).
    pub signer: String,
    pub key_id: String,
    /// `signature.json` as verified, kept by the store.
    pub signature_json: Vec<u8>,
}

/// Builds a package from a manifest and a component, signed with `key` or
/// unsigned (`None`) to be signed later with [`sign`]. The caller validates
/// the manifest (outpostctl uses the agent's own parser).
pub fn pack(manifest: &[u8], component: &[u8], key: Option<&SigningKey>) -> Result<Vec<u8>, PackageError> {
    let label = format::describe(MANIFEST_FILE, manifest);
    if manifest.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(PackageError::malformed(&label, format!("{MANIFEST_FILE} is over {MAX_MANIFEST_BYTES} bytes")));
    }
    if std::str::from_utf8(manifest).is_err() {
        return Err(PackageError::malformed(&label, format!("{MANIFEST_FILE} is not UTF-8")));
    }
    let signature = key.map(|k| signature_file(manifest, component, k).to_bytes());
    let bytes = format::encode(manifest, component, signature.as_deref());
    if bytes.len() as u64 > MAX_PACKAGE_BYTES {
        return Err(PackageError::malformed(
            &label,
            format!("the package would be {} bytes, over the {} MiB limit", bytes.len(), MAX_PACKAGE_BYTES >> 20),
        ));
    }
    Ok(bytes)
}

/// [`pack`] from a folder holding `service.toml` and `service.wasm` (a built
/// package such as `target/outpost/packages/positioning`).
pub fn pack_dir(dir: &Path, key: Option<&SigningKey>) -> Result<Vec<u8>, PackageError> {
    let read = |name: &str| {
        let path = dir.join(name);
        format::read_capped(&path)
    };
    pack(&read(MANIFEST_FILE)?, &read(COMPONENT_FILE)?, key)
}

/// Signs (or re-signs) a parsed package with `key`, keeping its manifest and
/// component byte for byte; the package digest does not change.
pub fn sign(pkg: &Opkg, key: &SigningKey) -> Vec<u8> {
    let sig = signature_file(&pkg.manifest, &pkg.component, key);
    format::encode(&pkg.manifest, &pkg.component, Some(&sig.to_bytes()))
}

fn signature_file(manifest: &[u8], component: &[u8], key: &SigningKey) -> SignatureFile {
    let manifest_sha256 = sha256_hex(manifest);
    let component_sha256 = sha256_hex(component);
    let signature: Signature = key.sign(&format::statement(&manifest_sha256, &component_sha256));
    SignatureFile {
        format: FORMAT_VERSION,
        algorithm: ALGORITHM.into(),
        key_id: key_id(&key.verifying_key()),
        manifest_sha256,
        component_sha256,
        signature: B64.encode(signature.to_bytes()),
    }
}

/// Parses and verifies an `.opkg` held in memory; `name` (the file, or the
/// name it was uploaded under) labels every error.
pub fn verify(name: &str, opkg: &[u8], trust: &TrustStore) -> Result<VerifiedPackage, PackageError> {
    verify_parsed(Opkg::parse(name, opkg)?, trust)
}

/// [`verify`] on a file.
pub fn verify_file(path: &Path, trust: &TrustStore) -> Result<VerifiedPackage, PackageError> {
    verify_parsed(Opkg::read_file(path)?, trust)
}

/// Verifies a parsed package: signed, untampered, by a trusted key of the
/// provider the manifest names.
pub fn verify_parsed(pkg: Opkg, trust: &TrustStore) -> Result<VerifiedPackage, PackageError> {
    let package = pkg.label.clone();
    let sig_bytes = pkg.signature.ok_or_else(|| PackageError::Unsigned { package: package.clone() })?;
    let sig = SignatureFile::parse(&package, &sig_bytes)?;
    let manifest_digest = sha256_hex(&pkg.manifest);
    let component_digest = sha256_hex(&pkg.component);
    for (part, signed, actual) in [
        (Part::Manifest, &sig.manifest_sha256, &manifest_digest),
        (Part::Component, &sig.component_sha256, &component_digest),
    ] {
        if signed != actual {
            return Err(PackageError::Tampered { package, part, signed: signed.clone(), actual: actual.clone() });
        }
    }
    let key = trust.get(&sig.key_id).ok_or_else(|| PackageError::UntrustedKey {
        package: package.clone(),
        key_id: sig.key_id.clone(),
        trust: trust.describe(),
    })?;
    let bad_signature = || PackageError::BadSignature {
        package: package.clone(),
        key_id: sig.key_id.clone(),
        signer: key.provider.clone(),
    };
    let raw: [u8; 64] = B64.decode(&sig.signature).ok().and_then(|b| b.try_into().ok()).ok_or_else(bad_signature)?;
    let statement = format::statement(&manifest_digest, &component_digest);
    key.key.verify_strict(&statement, &Signature::from_bytes(&raw)).map_err(|_| bad_signature())?;
    let manifest_toml = String::from_utf8(pkg.manifest)
        .map_err(|_| PackageError::malformed(&package, format!("{MANIFEST_FILE} is not UTF-8")))?;
    let header = format::service_header(manifest_toml.as_bytes()).ok_or_else(|| {
        PackageError::malformed(&package, format!("{MANIFEST_FILE} has no [service] table with a provider"))
    })?;
    if header.provider != key.provider {
        return Err(PackageError::WrongProvider {
            package,
            key_id: sig.key_id,
            key_provider: key.provider.clone(),
            manifest_provider: header.provider,
        });
    }
    Ok(VerifiedPackage {
        label: package,
        manifest_toml,
        component: pkg.component,
        digest: sha256_hex(&statement),
        manifest_digest,
        component_digest,
        signer: key.provider.clone(),
        key_id: sig.key_id,
        signature_json: sig_bytes,
    })
}

impl VerifiedPackage {
    /// The package's canonical `.opkg` bytes again.
    pub fn to_opkg(&self) -> Vec<u8> {
        format::encode(self.manifest_toml.as_bytes(), &self.component, Some(&self.signature_json))
    }
}
