//! Provider keys: ed25519 key files and the agent's trust store.
//!
//! A public key file is one line, `ed25519 <base64 key>  <provider>`; the
//! private key file beside it is `ed25519-private <base64 seed>  <provider>`
//! with mode 0600. The provider name says whose services the key may sign.

use crate::error::KeyError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const PUBLIC_TAG: &str = "ed25519";
const PRIVATE_TAG: &str = "ed25519-private";

/// Hex sha256 of the public key, first 16 characters.
pub fn key_id(key: &VerifyingKey) -> String {
    let mut id = crate::format::sha256_hex(key.as_bytes());
    id.truncate(16);
    id
}

/// Checks a provider or key name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), KeyError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::BadName { name: name.to_owned() })
    }
}

/// A trusted public key and the provider it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKey {
    pub provider: String,
    pub key: VerifyingKey,
    pub key_id: String,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
}

impl ProviderKey {
    pub fn new(provider: &str, key: VerifyingKey) -> Result<ProviderKey, KeyError> {
        check_name(provider)?;
        Ok(ProviderKey { provider: provider.to_owned(), key_id: key_id(&key), key, path: None })
    }

    /// The public key file's one line (with its newline).
    pub fn to_line(&self) -> String {
        format!("{PUBLIC_TAG} {}  {}\n", B64.encode(self.key.as_bytes()), self.provider)
    }

    /// Parses a public key file's text; `path` labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<ProviderKey, KeyError> {
        let (b64, provider) = parse_line(text, PUBLIC_TAG, path)?;
        let bytes: [u8; 32] = decode_32(&b64, path)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|e| KeyError::Invalid {
            path: path.to_owned(),
            reason: format!("not an ed25519 public key: {e}"),
        })?;
        if key.is_weak() {
            return Err(KeyError::Invalid { path: path.to_owned(), reason: "a weak (small-order) ed25519 key".into() });
        }
        let mut k = ProviderKey::new(&provider, key)
            .map_err(|e| KeyError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
        k.path = Some(path.to_owned());
        Ok(k)
    }

    pub fn load(path: &Path) -> Result<ProviderKey, KeyError> {
        let text = read_small(path)?;
        ProviderKey::parse(&text, path)
    }
}

/// A private signing key and its provider name.
pub struct ProviderSigningKey {
    pub provider: String,
    pub key: SigningKey,
}

impl std::fmt::Debug for ProviderSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProviderSigningKey {{ provider: {}, key_id: {} }}", self.provider, key_id(&self.key.verifying_key()))
    }
}

impl ProviderSigningKey {
    pub fn public(&self) -> ProviderKey {
        ProviderKey {
            provider: self.provider.clone(),
            key: self.key.verifying_key(),
            key_id: key_id(&self.key.verifying_key()),
            path: None,
        }
    }

    /// Loads a private key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<ProviderSigningKey, KeyError> {
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
                wanted: 0o600,
                why: "a private key must be readable by its owner only",
            });
        }
        let text = read_small(path)?;
        let (b64, provider) = parse_line(&text, PRIVATE_TAG, path)?;
        let seed = decode_32(&b64, path)?;
        Ok(ProviderSigningKey { provider, key: SigningKey::from_bytes(&seed) })
    }
}

/// What `keygen` wrote.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    pub public: ProviderKey,
}

/// Generates a key pair for `provider` into `dir` as `<provider>.key`
/// (mode 0600) and `<provider>.pub`; never overwrites an existing key.
pub fn keygen(dir: &Path, provider: &str) -> Result<GeneratedKey, KeyError> {
    check_name(provider)?;
    std::fs::create_dir_all(dir).map_err(|source| KeyError::Write { path: dir.to_owned(), source })?;
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let signing = ProviderSigningKey { provider: provider.to_owned(), key };
    let private_path = dir.join(format!("{provider}.key"));
    let public_path = dir.join(format!("{provider}.pub"));
    for p in [&private_path, &public_path] {
        if p.exists() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let private_line = format!("{PRIVATE_TAG} {}  {provider}\n", B64.encode(signing.key.to_bytes()));
    write_new(&private_path, private_line.as_bytes(), 0o600)?;
    let public = signing.public();
    write_new(&public_path, public.to_line().as_bytes(), 0o644)?;
    let public = ProviderKey { path: Some(public_path.clone()), ..public };
    Ok(GeneratedKey { private_path, public_path, public })
}

/// The provider keys an agent trusts: every `*.pub` file in one folder.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    dir: Option<PathBuf>,
    keys: BTreeMap<String, ProviderKey>,
}

impl TrustStore {
    /// A store trusting nothing (every signed package is refused).
    pub fn empty() -> TrustStore {
        TrustStore::default()
    }

    /// A store trusting exactly these keys (tests, tools).
    pub fn from_keys(keys: impl IntoIterator<Item = ProviderKey>) -> TrustStore {
        let mut store = TrustStore::default();
        for k in keys {
            store.keys.insert(k.key_id.clone(), k);
        }
        store
    }

    /// Reads every `*.pub` file in `dir`. A malformed key file is an error
    /// (an operator wants to know), and so is a folder or key file that
    /// anyone may write to: whoever can add a key here decides what runs.
    pub fn load(dir: &Path) -> Result<TrustStore, KeyError> {
        check_not_world_writable(dir)?;
        let entries = std::fs::read_dir(dir).map_err(|source| KeyError::Read { path: dir.to_owned(), source })?;
        let mut paths = Vec::new();
        for e in entries {
            let e = e.map_err(|source| KeyError::Read { path: dir.to_owned(), source })?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pub") && p.is_file() {
                paths.push(p);
            }
        }
        paths.sort();
        let mut store = TrustStore { dir: Some(dir.to_owned()), keys: BTreeMap::new() };
        for p in paths {
            check_not_world_writable(&p)?;
            let k = ProviderKey::load(&p)?;
            if let Some(prev) = store.keys.get(&k.key_id) {
                if prev.provider != k.provider {
                    return Err(KeyError::Conflict {
                        dir: dir.to_owned(),
                        key_id: k.key_id.clone(),
                        first: prev.provider.clone(),
                        second: k.provider.clone(),
                        path: p,
                    });
                }
            }
            store.keys.insert(k.key_id.clone(), k);
        }
        Ok(store)
    }

    pub fn get(&self, key_id: &str) -> Option<&ProviderKey> {
        self.keys.get(key_id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &ProviderKey> {
        self.keys.values()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// For error messages: the folder and how many keys it holds.
    pub fn describe(&self) -> String {
        let n = self.keys.len();
        match &self.dir {
            Some(d) => format!("{} with {n} key(s)", d.display()),
            None => format!("{n} key(s)"),
        }
    }
}

fn check_not_world_writable(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
            wanted: mode & !0o022,
            why: "anyone may write it, so anyone could make their packages trusted",
        });
    }
    Ok(())
}

fn read_small(path: &Path) -> Result<String, KeyError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).map_err(|source| KeyError::Read { path: path.to_owned(), source })?;
    Ok(text)
}

/// `TAG <base64>  <name>` on one line (trailing newline allowed).
fn parse_line(text: &str, tag: &str, path: &Path) -> Result<(String, String), KeyError> {
    let invalid = |reason: String| KeyError::Invalid { path: path.to_owned(), reason };
    let line = text.strip_suffix('\n').unwrap_or(text);
    if line.contains('\n') {
        return Err(invalid("more than one line".into()));
    }
    let mut fields = line.split_whitespace();
    let (Some(t), Some(b64), Some(name), None) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
        return Err(invalid(format!("expected one line '{tag} <base64 key>  <provider>'")));
    };
    if t != tag {
        return Err(invalid(format!("starts with '{t}', expected '{tag}'")));
    }
    check_name(name).map_err(|e| invalid(e.to_string()))?;
    Ok((b64.to_owned(), name.to_owned()))
}

fn decode_32(b64: &str, path: &Path) -> Result<[u8; 32], KeyError> {
    let bytes = B64
        .decode(b64)
        .map_err(|e| KeyError::Invalid { path: path.to_owned(), reason: format!("key is not base64: {e}") })?;
    bytes.try_into().map_err(|b: Vec<u8>| KeyError::Invalid {
        path: path.to_owned(),
        reason: format!("key is {} bytes, an ed25519 key is 32", b.len()),
    })
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write { path: path.to_owned(), source };
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists { path: path.to_owned() }
        } else {
            write_err(e)
        }
    })?;
    file.write_all(data).and_then(|_| file.sync_all()).map_err(write_err)?;
    // The umask may have narrowed the public key's mode; the private key's
    // 0600 is only ever narrowed, which is fine.
    if mode != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(write_err)?;
    }
    Ok(())
}
