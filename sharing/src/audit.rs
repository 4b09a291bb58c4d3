//! The export audit: an append-only, hash-chained JSON Lines file of every batch that left.
//!
//! Line `n` (1-based) holds one [`AuditEntry`] with `seq = n`. Its `hash` is
//!
//! ```text
//! hash = hex(sha256( prev || canonical_json(entry without "hash") ))
//! ```
//!
//! where `prev` is the 64 ASCII hex characters of the previous line's `hash`
//! ([`ZERO_HASH`] for line 1). Canonical JSON is the entry as a JSON value with the `hash`
//! member removed, written with no whitespace, object members sorted by key (byte order of
//! the UTF-8), strings and numbers as `serde_json` writes them. Sorting makes the hash
//! independent of the member order in the file. Changing any byte of an entry breaks its
//! hash; removing or reordering lines breaks `seq` and `prev`. Removing the *last* lines
//! keeps a valid chain, which is why the head hash can be kept elsewhere and checked with
//! [`verify_with_head`].
//!
//! One process appends at a time (the agent); `verify` and `query` may run beside it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::exporter::Export;

/// `prev` of the first entry.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Longest line read back; a longer one is reported as corrupt instead of filling memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// One batch sent to a provider, as recorded before it was sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Line number, from 1.
    pub seq: u64,
    /// When the batch was recorded (ms since the Unix epoch, from the caller).
    pub at_ms: u64,
    /// Provider the batch went to.
    pub provider: String,
    /// Where it went, e.g. the broker URL or operations center name.
    pub destination: String,
    /// Hex sha256 of the policy text in force ([`crate::Policy::sha256`]).
    pub policy_sha256: String,
    /// The messages of the batch.
    pub messages: Vec<AuditMessage>,
    /// `hash` of the previous entry, [`ZERO_HASH`] for the first.
    pub prev: String,
    /// Hash of this entry (see the module docs).
    pub hash: String,
}

/// One message of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditMessage {
    /// Topic it was sent on.
    pub topic: String,
    /// Purpose of the rule that allowed it.
    pub purpose: String,
    /// How `payload` is stored.
    pub encoding: PayloadEncoding,
    /// The payload: the JSON value itself, or a base64 string of bytes that are not JSON.
    pub payload: Value,
    /// Hex sha256 of the exact bytes sent.
    pub sha256: String,
    /// Number of bytes sent.
    pub bytes: u64,
}

/// How [`AuditMessage::payload`] holds the bytes sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// The payload was JSON and is stored as a JSON value (readable; `sha256` is of the bytes sent).
    Json,
    /// The payload was not JSON and is stored as standard base64.
    Base64,
}

impl AuditMessage {
    /// Records `payload` as sent on `topic` under a rule with `purpose`.
    pub fn new(topic: &str, purpose: &str, payload: &[u8]) -> AuditMessage {
        let (encoding, value) = match serde_json::from_slice::<Value>(payload) {
            Ok(v) => (PayloadEncoding::Json, v),
            Err(_) => {
                (PayloadEncoding::Base64, Value::String(base64::engine::general_purpose::STANDARD.encode(payload)))
            }
        };
        AuditMessage {
            topic: topic.to_owned(),
            purpose: purpose.to_owned(),
            encoding,
            payload: value,
            sha256: hex::encode(Sha256::digest(payload)),
            bytes: payload.len() as u64,
        }
    }
}

impl From<&Export> for AuditMessage {
    fn from(e: &Export) -> Self {
        AuditMessage::new(&e.topic, &e.purpose, &e.payload)
    }
}

/// What `verify` found in a valid log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    /// Number of entries.
    pub entries: u64,
    /// `at_ms` of the first entry.
    pub first_at_ms: Option<u64>,
    /// `at_ms` of the last entry.
    pub last_at_ms: Option<u64>,
    /// `hash` of the last entry ([`ZERO_HASH`] for an empty log); keep it elsewhere as an anchor.
    pub head: String,
}

/// What is wrong with one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// Not an audit entry (not JSON, unknown or missing fields, wrong types).
    #[error("not an audit entry: {0}")]
    NotAnEntry(String),
    /// The file ends in the middle of a line.
    #[error("truncated: the line has no end (an interrupted write, or the file was cut)")]
    Truncated,
    /// An empty line.
    #[error("empty line")]
    Empty,
    /// Longer than [`MAX_LINE_BYTES`].
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    /// A hash field is not 64 lowercase hex characters.
    #[error("`{0}` is not a 64-character lowercase hex sha256")]
    BadHex(&'static str),
    /// The entry's content does not match its hash: it was modified.
    #[error("entry was modified: its content hashes to {computed}, the line says {recorded}")]
    HashMismatch {
        /// Hash of the content as found.
        computed: String,
        /// `hash` written on the line.
        recorded: String,
    },
    /// `seq` is not the line number: an entry before it was removed, or lines were reordered.
    #[error("seq is {found}, expected {expected}: an entry was removed or lines were reordered")]
    SeqMismatch {
        /// The line number.
        expected: u64,
        /// `seq` written on the line.
        found: u64,
    },
    /// `prev` is not the previous line's hash: the chain was broken.
    #[error("prev is {found}, expected the previous entry's hash {expected}: the chain is broken")]
    PrevMismatch {
        /// Previous line's hash.
        expected: String,
        /// `prev` written on the line.
        found: String,
    },
    /// A base64 message does not match its `sha256` or `bytes`.
    #[error("message {0}: payload does not match its sha256/bytes")]
    PayloadMismatch(usize),
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading, writing or syncing the file failed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A line is not a valid link of the chain.
    #[error("audit log {path} line {line}: {problem}")]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        problem: Corruption,
    },
    /// `open` found the last line unreadable and will not extend the chain from it.
    #[error(
        "audit log {path}: the last line is not a valid entry ({problem}); refusing to append. \
         Run `outpostctl audit verify {path}` to see what happened"
    )]
    LastLineCorrupt {
        /// The log file.
        path: PathBuf,
        /// What is wrong with the last line.
        problem: Corruption,
    },
    /// An earlier write failed and the partial line could not be removed.
    #[error(
        "audit log {path}: an earlier write failed and could not be undone; no more appends. \
         Run `outpostctl audit verify {path}`"
    )]
    Poisoned {
        /// The log file.
        path: PathBuf,
    },
    /// [`verify_with_head`]: no entry has the expected hash (the log was cut or rewritten).
    #[error("audit log {path}: no entry has the expected head hash {head}; the log was truncated or rewritten")]
    HeadNotFound {
        /// The log file.
        path: PathBuf,
        /// The anchor that was looked for.
        head: String,
    },
    /// A caller-supplied value cannot be recorded.
    #[error("audit log {path}: {message}")]
    InvalidInput {
        /// The log file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// An open audit log, positioned to append the next entry of the chain.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    len: u64,
    next_seq: u64,
    head: String,
    poisoned: bool,
}

impl AuditLog {
    /// Opens `path` for appending, creating it (mode 0600) if needed.
    ///
    /// Only the last line is read (not the whole file); it must be a complete entry whose hash
    /// is right, else [`AuditError::LastLineCorrupt`]. Run [`verify`] for the whole chain.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io_err = |source| AuditError::Io { path: path.to_owned(), source };
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let existed = path.try_exists().unwrap_or(true);
        let mut file = options.open(path).map_err(io_err)?;
        if !existed {
            sync_parent(path).map_err(io_err)?;
        }
        let len = file.metadata().map_err(io_err)?.len();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = file.metadata().map_err(io_err)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "audit log is readable by others");
            }
        }
        let (next_seq, head) = match read_last_line(&mut file, len).map_err(io_err)? {
            None => (1, ZERO_HASH.to_owned()),
            Some(Err(problem)) => return Err(AuditError::LastLineCorrupt { path: path.to_owned(), problem }),
            Some(Ok(line)) => {
                let entry = parse_entry(&line)
                    .map_err(|problem| AuditError::LastLineCorrupt { path: path.to_owned(), problem })?;
                let next = entry.seq.checked_add(1).ok_or_else(|| AuditError::LastLineCorrupt {
                    path: path.to_owned(),
                    problem: Corruption::NotAnEntry("seq is at its maximum".into()),
                })?;
                (next, entry.hash)
            }
        };
        Ok(AuditLog { path: path.to_owned(), file, len, next_seq, head, poisoned: false })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hash of the last entry ([`ZERO_HASH`] when empty).
    pub fn head(&self) -> &str {
        &self.head
    }

    /// `seq` the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records one batch and makes it durable (write + fsync) before returning.
    ///
    /// An error means the batch is not recorded and must not be sent. If the failed write
    /// left a partial line that cannot be cut off again, every later append fails too.
    pub fn append(
        &mut self,
        at_ms: u64,
        provider: &str,
        destination: &str,
        policy_sha256: &str,
        messages: Vec<AuditMessage>,
    ) -> Result<AuditEntry, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned { path: self.path.clone() });
        }
        if !is_hex64(policy_sha256) {
            return Err(AuditError::InvalidInput {
                path: self.path.clone(),
                message: format!("policy_sha256 `{policy_sha256}` is not a 64-character lowercase hex sha256"),
            });
        }
        let mut entry = AuditEntry {
            seq: self.next_seq,
            at_ms,
            provider: provider.to_owned(),
            destination: destination.to_owned(),
            policy_sha256: policy_sha256.to_owned(),
            messages,
            prev: self.head.clone(),
            hash: String::new(),
        };
        entry.hash = entry_hash(&entry);
        let mut line = serde_json::to_vec(&entry).map_err(|e| AuditError::InvalidInput {
            path: self.path.clone(),
            message: format!("entry cannot be written as JSON: {e}"),
        })?;
        line.push(b'\n');
        let written = self.file.write_all(&line).and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Cut off whatever part of the line reached the file, so the chain stays valid.
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                self.poisoned = true;
            }
            return Err(AuditError::Io { path: self.path.clone(), source });
        }
        self.len += line.len() as u64;
        self.next_seq += 1;
        self.head = entry.hash.clone();
        Ok(entry)
    }
}

/// Checks the whole chain of the log at `path`.
///
/// The error names the first bad line and what is wrong with it.
pub fn verify(path: &Path) -> Result<VerifySummary, AuditError> {
    scan(path, |_| {})
}

/// Like [`verify`], and also requires that some entry has hash `head` — an anchor kept
/// outside the gateway earlier. This detects lines cut from the end of the log back past
/// the anchor, which a chain alone cannot show. Entries appended after the anchor are fine.
pub fn verify_with_head(path: &Path, head: &str) -> Result<VerifySummary, AuditError> {
    let wanted = head.trim().to_ascii_lowercase();
    let mut found = wanted == ZERO_HASH;
    let summary = scan(path, |e| found |= e.hash == wanted)?;
    if found {
        Ok(summary)
    } else {
        Err(AuditError::HeadNotFound { path: path.to_owned(), head: head.to_owned() })
    }
}

/// The entries for `provider` (all when `None`) recorded at or after `since_ms`, in order.
///
/// The whole file is verified while reading: any corruption is an error, never a shorter list.
pub fn query(path: &Path, provider: Option<&str>, since_ms: Option<u64>) -> Result<Vec<AuditEntry>, AuditError> {
    let mut out = Vec::new();
    scan(path, |e| {
        if provider.is_none_or(|p| e.provider == p) && since_ms.is_none_or(|s| e.at_ms >= s) {
            out.push(e.clone());
        }
    })?;
    Ok(out)
}

fn scan(path: &Path, mut visit: impl FnMut(&AuditEntry)) -> Result<VerifySummary, AuditError> {
    let io_err = |source| AuditError::Io { path: path.to_owned(), source };
    let file = File::open(path).map_err(io_err)?;
    let mut reader = BufReader::new(file);
    let mut summary = VerifySummary { entries: 0, first_at_ms: None, last_at_ms: None, head: ZERO_HASH.to_owned() };
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        let n = reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', &mut buf).map_err(io_err)?;
        if n == 0 {
            return Ok(summary);
        }
        line_no += 1;
        let corrupt = |problem| AuditError::Corrupt { path: path.to_owned(), line: line_no, problem };
        let line = match buf.strip_suffix(b"\n") {
            Some(line) => line,
            None if buf.len() > MAX_LINE_BYTES => return Err(corrupt(Corruption::TooLong)),
            None => return Err(corrupt(Corruption::Truncated)),
        };
        let entry = parse_entry(line).map_err(corrupt)?;
        if entry.seq != line_no {
            return Err(corrupt(Corruption::SeqMismatch { expected: line_no, found: entry.seq }));
        }
        if entry.prev != summary.head {
            return Err(corrupt(Corruption::PrevMismatch { expected: summary.head, found: entry.prev }));
        }
        summary.entries += 1;
        summary.first_at_ms.get_or_insert(entry.at_ms);
        summary.last_at_ms = Some(entry.at_ms);
        visit(&entry);
        summary.head = entry.hash;
    }
}

/// Parses one line (without its newline) and checks everything it can alone: fields,
/// hex formats, base64 payloads, and its own hash.
fn parse_entry(line: &[u8]) -> Result<AuditEntry, Corruption> {
    if line.is_empty() {
        return Err(Corruption::Empty);
    }
    let entry: AuditEntry = serde_json::from_slice(line).map_err(|e| Corruption::NotAnEntry(e.to_string()))?;
    for (name, value) in [("prev", &entry.prev), ("hash", &entry.hash), ("policy_sha256", &entry.policy_sha256)] {
        if !is_hex64(value) {
            return Err(Corruption::BadHex(name));
        }
    }
    let computed = entry_hash(&entry);
    if computed != entry.hash {
        return Err(Corruption::HashMismatch { computed, recorded: entry.hash });
    }
    for (i, m) in entry.messages.iter().enumerate() {
        if !is_hex64(&m.sha256) {
            return Err(Corruption::BadHex("messages[].sha256"));
        }
        if m.encoding == PayloadEncoding::Base64 {
            let bytes = m.payload.as_str().and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
            let ok = bytes.is_some_and(|b| b.len() as u64 == m.bytes && hex::encode(Sha256::digest(&b)) == m.sha256);
            if !ok {
                return Err(Corruption::PayloadMismatch(i));
            }
        }
    }
    Ok(entry)
}

/// The entry minus its `hash`, in the field order of [`AuditEntry`].
#[derive(Serialize)]
struct EntryBody<'a> {
    seq: u64,
    at_ms: u64,
    provider: &'a str,
    destination: &'a str,
    policy_sha256: &'a str,
    messages: &'a [AuditMessage],
    prev: &'a str,
}

/// `hex(sha256(prev || canonical_json(entry without hash)))`.
pub fn entry_hash(entry: &AuditEntry) -> String {
    let body = EntryBody {
        seq: entry.seq,
        at_ms: entry.at_ms,
        provider: &entry.provider,
        destination: &entry.destination,
        policy_sha256: &entry.policy_sha256,
        messages: &entry.messages,
        prev: &entry.prev,
    };
    let mut canonical = Vec::new();
    // A struct of strings, numbers and JSON values always converts.
    if let Ok(value) = serde_json::to_value(&body) {
        write_canonical(&value, &mut canonical);
    }
    let mut hasher = Sha256::new();
    hasher.update(entry.prev.as_bytes());
    hasher.update(&canonical);
    hex::encode(hasher.finalize())
}

/// Compact JSON with object members sorted by key.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Writing into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, key);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// Makes a newly created file's directory entry durable, so a power cut cannot lose the
/// log itself after its first entry was synced.
fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The last line of the file (without its newline), or what is wrong with the file's end.
fn read_last_line(file: &mut File, len: u64) -> io::Result<Option<Result<Vec<u8>, Corruption>>> {
    if len == 0 {
        return Ok(None);
    }
    const CHUNK: u64 = 64 * 1024;
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    loop {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0; (pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        pos = start;
        if tail.last() != Some(&b'\n') {
            return Ok(Some(Err(Corruption::Truncated)));
        }
        let body = &tail[..tail.len() - 1];
        if let Some(i) = body.iter().rposition(|b| *b == b'\n') {
            return Ok(Some(Ok(body[i + 1..].to_vec())));
        }
        if pos == 0 {
            return Ok(Some(Ok(body.to_vec())));
        }
        if tail.len() > MAX_LINE_BYTES + 1 {
            return Ok(Some(Err(Corruption::TooLong)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        let mut out = Vec::new();
        write_canonical(&json!({"b": [ {"z": 1, "a": "x\n"} ], "a": null}), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":null,"b":[{"a":"x\n","z":1}]}"#);
    }

    #[test]
    fn hash_is_the_documented_formula() {
        let entry = AuditEntry {
            seq: 1,
            at_ms: 5,
            provider: "acme".into(),
            destination: "mqtts://ops".into(),
            policy_sha256: "ab".repeat(32),
            messages: vec![AuditMessage::new("t", "p", b"{\"x\":1}")],
            prev: ZERO_HASH.into(),
            hash: String::new(),
        };
        let canonical = format!(
            r#"{{"at_ms":5,"destination":"mqtts://ops","messages":[{{"bytes":7,"encoding":"json","payload":{{"x":1}},"purpose":"p","sha256":"{}","topic":"t"}}],"policy_sha256":"{}","prev":"{}","provider":"acme","seq":1}}"#,
            hex::encode(Sha256::digest(b"{\"x\":1}")),
            "ab".repeat(32),
            ZERO_HASH
        );
        let want = hex::encode(Sha256::digest(format!("{ZERO_HASH}{canonical}").as_bytes()));
        assert_eq!(entry_hash(&entry), want);
    }

    #[test]
    fn non_json_payload_is_base64() {
        let m = AuditMessage::new("t", "p", &[0xff, 0x00, 0x41]);
        assert_eq!(m.encoding, PayloadEncoding::Base64);
        assert_eq!(m.payload, json!("/wBB"));
        assert_eq!(m.bytes, 3);
    }
}
