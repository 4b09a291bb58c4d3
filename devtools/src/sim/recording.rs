//! Recordings of live bus traffic: what `outpostctl record` writes and what
//! `outpostctl run --replay` and `outpost-sim --recording` read back, so a
//! provider tests a new version on a site's real traffic before shipping it.
//!
//! The format (JSON Lines, `.jsonl` by convention), one message per line, in
//! the order the broker delivered them:
//!
//! ```text
//! {"t_ms":0,"topic":"site/s1/truck7/gnss/nmea","payload":"$GPGGA,..."}
//! {"t_ms":412,"topic":"site/s1/truck7/gnss/ubx","payload_b64":"tWIBBxwA..."}
//! ```
//!
//! - `t_ms`: milliseconds since the first recorded message (0 on the first
//!   line), never decreasing;
//! - `topic`: the concrete topic the message arrived on;
//! - exactly one of `payload` (the payload when it is valid UTF-8, as a JSON
//!   string) or `payload_b64` (any other payload, standard base64 with
//!   padding).
//!
//! No other keys are accepted, so a mistyped key is an error naming its line
//! rather than a message silently replayed empty. Blank lines are skipped.

use super::{Clock, Scheduled, SimError, Track};
use base64::Engine as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Milliseconds since the first message of the recording.
    pub t_ms: u64,
    pub topic: String,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read recording {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
    #[error("{path} holds no messages")]
    Empty { path: PathBuf },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    t_ms: u64,
    topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_b64: Option<String>,
}

/// The line for one message (without the newline).
pub fn to_line(m: &Recorded) -> String {
    let (payload, payload_b64) = match std::str::from_utf8(&m.payload) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&m.payload))),
    };
    let line = Line { t_ms: m.t_ms, topic: m.topic.clone(), payload, payload_b64 };
    // A struct of strings and an integer always serializes.
    serde_json::to_string(&line).unwrap_or_default()
}

/// Parses one line; the error says what is wrong with it.
pub fn parse_line(text: &str) -> Result<Recorded, String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("not a recorded message: {e}"))?;
    outpost::topic::validate_topic(&line.topic)?;
    let payload = match (line.payload, line.payload_b64) {
        (Some(p), None) => p.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
            .map_err(|e| format!("payload_b64 is not base64: {e}"))?,
        (Some(_), Some(_)) => return Err("both payload and payload_b64; give one".into()),
        (None, None) => return Err("no payload or payload_b64".into()),
    };
    Ok(Recorded { t_ms: line.t_ms, topic: line.topic, payload })
}

/// Reads a whole recording, checking every line and that time never runs
/// backwards (the order of the lines is the order of delivery).
pub fn read(path: &Path) -> Result<Vec<Recorded>, RecordingError> {
    let file = std::fs::File::open(path).map_err(|source| RecordingError::Read { path: path.to_owned(), source })?;
    read_from(std::io::BufReader::new(file), path)
}

/// Like [`read`], from any reader; `path` names it in errors.
pub fn read_from(reader: impl BufRead, path: &Path) -> Result<Vec<Recorded>, RecordingError> {
    let mut out: Vec<Recorded> = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| RecordingError::Read { path: path.to_owned(), source })?;
        let at = |message: String| RecordingError::Line { path: path.to_owned(), line: i + 1, message };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let m = parse_line(text).map_err(at)?;
        if let Some(prev) = out.last() {
            if m.t_ms < prev.t_ms {
                return Err(at(format!(
                    "t_ms goes back from {} to {}; lines must be in time order",
                    prev.t_ms, m.t_ms
                )));
            }
        }
        out.push(m);
    }
    if out.is_empty() {
        return Err(RecordingError::Empty { path: path.to_owned() });
    }
    Ok(out)
}

/// Is this file a recording rather than a raw capture? (`.jsonl`)
pub fn is_recording(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

/// Writes messages as they arrive, timed from the first one.
pub struct Recorder<W: Write> {
    out: W,
    first: Option<Instant>,
    pub count: u64,
    pub bytes: u64,
}

impl<W: Write> Recorder<W> {
    pub fn new(out: W) -> Self {
        Recorder { out, first: None, count: 0, bytes: 0 }
    }

    /// Appends one message received at `now`; the line is flushed so a
    /// recording cut short (power, Ctrl-C) keeps what came before.
    pub fn record(&mut self, now: Instant, topic: &str, payload: &[u8]) -> std::io::Result<()> {
        let first = *self.first.get_or_insert(now);
        let t_ms = u64::try_from(now.saturating_duration_since(first).as_millis()).unwrap_or(u64::MAX);
        let line = to_line(&Recorded { t_ms, topic: topic.to_owned(), payload: payload.to_vec() });
        writeln!(self.out, "{line}")?;
        self.out.flush()?;
        self.count += 1;
        self.bytes += payload.len() as u64;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// A recording as one `outpost-sim` track on its own clock: every message
/// on its recorded topic at its recorded offset.
pub fn load(path: &Path) -> Result<Track, SimError> {
    let messages = read(path)?;
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recording".into());
    Ok(Track {
        name,
        path: path.to_owned(),
        clock: Clock::Recording,
        messages: messages
            .into_iter()
            .map(|m| Scheduled { at: m.t_ms as f64 / 1000.0, topic: m.topic, payload: m.payload })
            .collect(),
        skipped: Vec::new(),
        skipped_count: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(text: &str) -> Result<Vec<Recorded>, RecordingError> {
        read_from(text.as_bytes(), Path::new("r.jsonl"))
    }

    #[test]
    fn text_and_binary_payloads_round_trip() {
        let mut rec = Recorder::new(Vec::new());
        let t0 = Instant::now();
        rec.record(t0, "site/s/a/gnss/nmea", b"$GPGGA,1*00").unwrap();
        rec.record(t0 + Duration::from_millis(250), "site/s/a/gnss/ubx", &[0xb5, 0x62, 0xff, 0x00]).unwrap();
        rec.record(t0 + Duration::from_millis(1250), "t/x", b"").unwrap();
        let text = String::from_utf8(rec.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"t_ms":0,"topic":"site/s/a/gnss/nmea","payload":"$GPGGA,1*00"}"#);
        assert_eq!(lines[1], r#"{"t_ms":250,"topic":"site/s/a/gnss/ubx","payload_b64":"tWL/AA=="}"#);
        let back = parse(&text).unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[1].payload, vec![0xb5, 0x62, 0xff, 0x00]);
        assert_eq!((back[2].t_ms, back[2].payload.as_slice()), (1250, &b""[..]));
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let ok = r#"{"t_ms":0,"topic":"a/b","payload":"x"}"#;
        let cases = [
            (r#"{"t_ms":5,"topic":"a/b","payload":"x","paylod":"y"}"#, "unknown field"),
            (r#"{"t_ms":5,"topic":"a/b"}"#, "no payload"),
            (r#"{"t_ms":5,"topic":"a/b","payload":"x","payload_b64":"eA=="}"#, "both"),
            (r#"{"t_ms":5,"topic":"a/+","payload":"x"}"#, "wildcard"),
            (r#"{"t_ms":5,"topic":"a/b","payload_b64":"!!"}"#, "base64"),
            (r#"{"t_ms":-1,"topic":"a/b","payload":"x"}"#, "not a recorded message"),
            ("not json", "not a recorded message"),
        ];
        for (bad, want) in cases {
            let err = parse(&format!("{ok}\n\n{bad}\n")).unwrap_err().to_string();
            assert!(err.starts_with("r.jsonl:3: "), "{err}");
            assert!(err.contains(want), "{bad}: {err}");
        }
        let err = parse(&format!("{}\n{ok}\n", ok.replace("\"t_ms\":0", "\"t_ms\":9"))).unwrap_err().to_string();
        assert!(err.contains("r.jsonl:2: t_ms goes back from 9 to 0"), "{err}");
        assert!(matches!(parse("\n\n"), Err(RecordingError::Empty { .. })));
    }

    #[test]
    fn a_recording_is_a_track_at_its_offsets() {
        let dir = std::env::temp_dir().join(format!("outpost-rec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("site.jsonl");
        std::fs::write(
            &path,
            "{\"t_ms\":0,\"topic\":\"a/b\",\"payload\":\"1\"}\n{\"t_ms\":1500,\"topic\":\"c/d\",\"payload\":\"2\"}\n",
        )
        .unwrap();
        let track = load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(track.name, "site");
        assert_eq!(track.messages.len(), 2);
        assert_eq!((track.messages[1].at, track.messages[1].topic.as_str()), (1.5, "c/d"));
        assert!(is_recording(Path::new("x/site.JSONL")) && !is_recording(Path::new("capture.log")));
    }
}
