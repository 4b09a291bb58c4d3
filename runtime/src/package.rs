//! A service package on disk: a folder with `service.toml` and `service.wasm`.

use crate::manifest::{Manifest, ManifestError};
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "service.toml";
pub const COMPONENT_FILE: &str = "service.wasm";
/// The component's sha256 (hex), written beside it when the package enters
/// the agent's store, so that a start with its code cached need not read
/// and hash the component again.
pub const DIGEST_FILE: &str = "service.wasm.sha256";

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("package {dir}: no {MANIFEST_FILE} (a package folder holds {MANIFEST_FILE} and {COMPONENT_FILE})")]
    NoManifest { dir: PathBuf },
    #[error("package {dir}: no {COMPONENT_FILE}; build the service first (cargo xtask build)")]
    NoComponent { dir: PathBuf },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
}

/// A package read from disk, not yet compiled.
#[derive(Debug, Clone)]
pub struct Package {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub wasm_path: PathBuf,
    pub wasm: Vec<u8>,
}

impl Package {
    pub fn load(dir: &Path) -> Result<Package, PackageError> {
        let (manifest, wasm_path) = Self::load_manifest(dir)?;
        let wasm =
            std::fs::read(&wasm_path).map_err(|source| PackageError::Read { path: wasm_path.clone(), source })?;
        Ok(Package { dir: dir.to_owned(), manifest, wasm_path, wasm })
    }

    /// The manifest and the component's path, with the same checks as
    /// [`Package::load`] but without reading the component.
    pub fn load_manifest(dir: &Path) -> Result<(Manifest, PathBuf), PackageError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            return Err(PackageError::NoManifest { dir: dir.to_owned() });
        }
        let manifest = Manifest::load(&manifest_path)?;
        let wasm_path = dir.join(COMPONENT_FILE);
        if !wasm_path.is_file() {
            return Err(PackageError::NoComponent { dir: dir.to_owned() });
        }
        Ok((manifest, wasm_path))
    }

    /// The component's sha256 recorded in a stored package ([`DIGEST_FILE`]);
    /// None when there is no such record or it is not a sha256.
    pub fn recorded_digest(dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(dir.join(DIGEST_FILE)).ok()?;
        let digest = text.trim();
        outpost_package::format::is_digest(digest).then(|| digest.to_owned())
    }

    /// Every package folder under `root` (sorted, so start-up order is stable).
    pub fn discover(root: &Path) -> Result<Vec<PathBuf>, PackageError> {
        let entries = std::fs::read_dir(root).map_err(|source| PackageError::Read { path: root.to_owned(), source })?;
        let mut dirs: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.join(MANIFEST_FILE).is_file()).collect();
        dirs.sort();
        Ok(dirs)
    }
}

/// Merges the site's overrides over the manifest's defaults and renders JSON
/// for the service's `init`.
pub fn effective_config(defaults: &toml::Table, site: Option<&toml::Table>) -> String {
    let mut merged = defaults.clone();
    if let Some(site) = site {
        for (k, v) in site {
            merged.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_string(&merged).unwrap_or_else(|_| "{}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_overrides_defaults() {
        let defaults: toml::Table = toml::from_str("a = 1\nb = \"x\"").expect("toml");
        let site: toml::Table = toml::from_str("b = \"y\"\nc = [1, 2]").expect("toml");
        let json: serde_json::Value = serde_json::from_str(&effective_config(&defaults, Some(&site))).expect("json");
        assert_eq!(json, serde_json::json!({"a": 1, "b": "y", "c": [1, 2]}));
    }
}
