//! What `outpostctl keygen / package / sign / verify` do, as functions, so
//! the command line stays a thin shell and an operations center can do the
//! same. Manifest validation is passed in: it belongs to the agent.

use crate::error::{KeyError, PackageError};
use crate::format::{self, Opkg, COMPONENT_FILE, MANIFEST_FILE};
use crate::keys::{ProviderSigningKey, TrustStore};
use crate::sign::{self, VerifiedPackage};
use crate::store::write_atomic;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The agent's own check refused the manifest or the component.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "key {key_id} belongs to provider '{key_provider}', but {package} says provider '{manifest_provider}'; \
         agents would refuse it (sign with a key of '{manifest_provider}')"
    )]
    WrongProvider { package: String, key_id: String, key_provider: String, manifest_provider: String },
    #[error("{package}: the manifest has no [service] name, version and provider")]
    NoServiceHeader { package: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// What a package holds, for the agent's own checks (`validate`): the
/// manifest parser and the component's format and contract live in the
/// agent, not here.
#[derive(Debug, Clone, Copy)]
pub struct Contents<'a> {
    pub manifest: &'a str,
    pub manifest_path: &'a Path,
    pub component: &'a [u8],
    pub component_path: &'a Path,
}

/// The agent's checks on a package's contents; the error is shown as is.
pub type Validate<'v> = &'v dyn Fn(&Contents<'_>) -> Result<(), String>;

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: usize,
    /// Service and version from the manifest.
    pub service: String,
    pub version: String,
    /// The package digest (same signed or not, whoever signs).
    pub digest: String,
    /// `provider (key id)`, or `None` when unsigned.
    pub signed_by: Option<String>,
}

/// Builds `<out>` (default `<name>-<version>.opkg` in the current folder)
/// from `source`, a folder with `service.toml` and (unless `wasm` names it)
/// `service.wasm`. `validate` is the agent's own check of manifest and
/// component, run before anything is signed; signing is skipped when `key`
/// is `None`.
pub fn package(
    source: &Path,
    wasm: Option<&Path>,
    key: Option<&ProviderSigningKey>,
    out: Option<&Path>,
    validate: Validate<'_>,
) -> Result<Written, ToolError> {
    let manifest_path = source.join(MANIFEST_FILE);
    let manifest = format::read_capped(&manifest_path)?;
    let label = manifest_path.display().to_string();
    let text = std::str::from_utf8(&manifest)
        .map_err(|_| PackageError::malformed(&label, format!("{MANIFEST_FILE} is not UTF-8")))?;
    let wasm_path = wasm.map(Path::to_owned).unwrap_or_else(|| source.join(COMPONENT_FILE));
    let component = format::read_capped(&wasm_path)?;
    validate(&Contents {
        manifest: text,
        manifest_path: &manifest_path,
        component: &component,
        component_path: &wasm_path,
    })
    .map_err(ToolError::Invalid)?;
    let header = header(&label, &manifest)?;
    if let Some(k) = key {
        check_provider(&label, k, &header.provider)?;
    }
    let bytes = sign::pack(&manifest, &component, key.map(|k| &k.key))?;
    let out =
        out.map(Path::to_owned).unwrap_or_else(|| PathBuf::from(format!("{}-{}.opkg", header.name, header.version)));
    let digest = Opkg::parse(&out.display().to_string(), &bytes)?.digest();
    write_out(out, &bytes, header, digest, key)
}

/// Signs (or re-signs) an existing `.opkg` with `key`, writing `out`
/// (default: in place). Manifest and component are kept byte for byte.
pub fn sign_file(path: &Path, key: &ProviderSigningKey, out: Option<&Path>) -> Result<Written, ToolError> {
    let opkg = Opkg::read_file(path)?;
    let header = header(&opkg.label, &opkg.manifest)?;
    check_provider(&opkg.label, key, &header.provider)?;
    let bytes = sign::sign(&opkg, &key.key);
    write_out(out.unwrap_or(path).to_owned(), &bytes, header, opkg.digest(), Some(key))
}

fn write_out(
    path: PathBuf,
    bytes: &[u8],
    header: format::ServiceHeader,
    digest: String,
    key: Option<&ProviderSigningKey>,
) -> Result<Written, ToolError> {
    write_atomic(&path, bytes, 0o644).map_err(|source| ToolError::Write { path: path.clone(), source })?;
    Ok(Written {
        path,
        bytes: bytes.len(),
        service: header.name,
        version: header.version,
        digest,
        signed_by: key.map(|k| format!("{} ({})", k.provider, k.public().key_id)),
    })
}

/// Verifies an `.opkg` file against the keys in `trust_dir`, then runs the
/// agent's checks on what it holds.
pub fn verify_file(path: &Path, trust_dir: &Path, validate: Validate<'_>) -> Result<VerifiedPackage, ToolError> {
    let trust = TrustStore::load(trust_dir)?;
    let pkg = sign::verify_file(path, &trust)?;
    validate(&Contents {
        manifest: &pkg.manifest_toml,
        manifest_path: &path.join(MANIFEST_FILE),
        component: &pkg.component,
        component_path: &path.join(COMPONENT_FILE),
    })
    .map_err(ToolError::Invalid)?;
    Ok(pkg)
}

fn header(label: &str, manifest: &[u8]) -> Result<format::ServiceHeader, ToolError> {
    match format::service_header(manifest) {
        Some(h) if !h.name.is_empty() && !h.version.is_empty() && !h.provider.is_empty() => Ok(h),
        _ => Err(ToolError::NoServiceHeader { package: label.to_owned() }),
    }
}

fn check_provider(label: &str, key: &ProviderSigningKey, provider: &str) -> Result<(), ToolError> {
    if key.provider == provider {
        return Ok(());
    }
    Err(ToolError::WrongProvider {
        package: label.to_owned(),
        key_id: key.public().key_id,
        key_provider: key.provider.clone(),
        manifest_provider: provider.to_owned(),
    })
}
