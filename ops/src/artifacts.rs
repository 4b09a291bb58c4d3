//! Package intake and the content-addressed artifact folder gateways
//! download from: `<dir>/sha256/<hex of the .opkg bytes>`. A package is
//! verified (provider signature against a trust folder) before it is stored,
//! and a stored file is never rewritten, so a resumed download reads the
//! same bytes it started on.

use std::io::Write;
use std::path::{Path, PathBuf};

use outpost_package::TrustStore;

use crate::model::PackageRecord;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifacts folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Package(#[from] outpost_package::PackageError),
    #[error("package {label}: service.toml has no [service] name and version: {why}")]
    Manifest { label: String, why: String },
}

/// The artifacts folder.
#[derive(Debug, Clone)]
pub struct Artifacts {
    dir: PathBuf,
}

#[derive(serde::Deserialize)]
struct Head {
    service: HeadService,
}

#[derive(serde::Deserialize)]
struct HeadService {
    name: String,
    version: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io { path: path.to_owned(), source }
}

impl Artifacts {
    pub fn open(dir: &Path) -> Result<Artifacts, ArtifactError> {
        let sub = dir.join("sha256");
        std::fs::create_dir_all(&sub).map_err(io(&sub))?;
        Ok(Artifacts { dir: dir.to_owned() })
    }

    /// The file of an artifact, if `hex` is a digest and the file exists.
    pub fn path_of(&self, hex: &str) -> Option<PathBuf> {
        if !outpost_package::format::is_digest(hex) {
            return None;
        }
        let p = self.dir.join("sha256").join(hex);
        p.is_file().then_some(p)
    }

    /// Verifies a package against `trust` and stores it; returns its
    /// catalogue record (the digest is of the bytes as given and served).
    pub fn add(
        &self,
        name: &str,
        bytes: &[u8],
        trust: &TrustStore,
        now_ms: u64,
    ) -> Result<PackageRecord, ArtifactError> {
        let verified = outpost_package::verify(name, bytes, trust)?;
        let head: Head = toml::from_str(&verified.manifest_toml)
            .map_err(|e| ArtifactError::Manifest { label: verified.label.clone(), why: e.to_string() })?;
        let digest = outpost_package::format::sha256_hex(bytes);
        let path = self.dir.join("sha256").join(&digest);
        if !path.is_file() {
            // Written beside and renamed: a reader never sees half a file.
            let tmp = self.dir.join("sha256").join(format!(".{digest}.{}", std::process::id()));
            let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok(PackageRecord {
            service: head.service.name,
            version: head.service.version,
            digest,
            size: bytes.len() as u64,
            signer: verified.signer,
            added_ms: now_ms,
        })
    }
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No (usable) range: the whole file, 200.
    Full,
    /// `start..=end`, 206.
    Part { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Reads `bytes=a-b`, `bytes=a-` and `bytes=-n` (one range; a multi-range
/// request gets the whole file, which RFC 9110 allows).
pub fn parse_range(header: Option<&str>, len: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return ByteRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return ByteRange::Full,
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return ByteRange::Unsatisfiable,
            Ok(n) => Some((len.saturating_sub(n), len.saturating_sub(1))),
            Err(_) => None,
        },
        (false, _) => match (a.parse::<u64>(), if b.is_empty() { Ok(u64::MAX) } else { b.parse::<u64>() }) {
            (Ok(s), Ok(e)) if s <= e => Some((s, e.min(len.saturating_sub(1)))),
            _ => None,
        },
    };
    match parsed {
        None => ByteRange::Full,
        Some((s, _)) if s >= len => ByteRange::Unsatisfiable,
        Some((start, end)) => ByteRange::Part { start, end },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=2-4"), 10), ByteRange::Part { start: 2, end: 4 });
        assert_eq!(parse_range(Some("bytes=4-"), 10), ByteRange::Part { start: 4, end: 9 });
        assert_eq!(parse_range(Some("bytes=-3"), 10), ByteRange::Part { start: 7, end: 9 });
        assert_eq!(parse_range(Some("bytes=5-100"), 10), ByteRange::Part { start: 5, end: 9 });
        assert_eq!(parse_range(Some("bytes=10-"), 10), ByteRange::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=4-2"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("items=1-2"), 10), ByteRange::Full);
        assert_eq!(parse_range(Some("bytes=x-2"), 10), ByteRange::Full);
    }

    #[test]
    fn a_package_is_verified_before_it_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let k = outpost_package::keygen(&keys, "acme").unwrap();
        let sk = outpost_package::ProviderSigningKey::load(&k.private_path).unwrap();
        let manifest = b"[service]\nname = \"svc\"\nversion = \"1.2.0\"\nprovider = \"acme\"\n";
        let bytes = outpost_package::pack(manifest, b"\0asm fake", Some(&sk.key)).unwrap();
        let arts = Artifacts::open(&dir.path().join("art")).unwrap();
        let trust = TrustStore::load(&keys).unwrap();
        let rec = arts.add("svc.opkg", &bytes, &trust, 5).unwrap();
        assert_eq!((rec.service.as_str(), rec.version.as_str(), rec.size), ("svc", "1.2.0", bytes.len() as u64));
        assert_eq!(rec.digest, outpost_package::format::sha256_hex(&bytes));
        assert_eq!(std::fs::read(arts.path_of(&rec.digest).unwrap()).unwrap(), bytes);
        assert_eq!(arts.path_of("../x"), None);
        // An unsigned package is refused and nothing is stored.
        let unsigned =
            outpost_package::pack(b"[service]\nname = \"svc\"\nversion = \"9\"\nprovider = \"acme\"\n", b"x", None)
                .unwrap();
        assert!(arts.add("u.opkg", &unsigned, &trust, 5).is_err());
        assert_eq!(arts.path_of(&outpost_package::format::sha256_hex(&unsigned)), None);
    }
}
