//! Downloading a package the operations center names: resumable (an HTTP
//! `Range` request continues a partial file after a cut), bounded by the
//! size the signed desired state declares, and checked against its sha256
//! before anything else reads it. The package's provider signature is
//! checked afterwards by the lifecycle's intake, as for any upload.

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// No byte for this long ends the attempt (the next one resumes).
const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("artifact URL '{0}' is not http://host[:port]/path (set [fleet] artifacts_url)")]
    BadUrl(String),
    #[error("downloading {url}: {message}")]
    Http { url: String, message: String },
    #[error("downloading {url}: the server sent more than the {size} bytes the desired state declares")]
    TooLarge { url: String, size: u64 },
    #[error("downloaded {url} has sha256 {got}, the desired state says {want}; the partial file was deleted")]
    Digest { url: String, got: String, want: String },
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
}

/// The full URL of an artifact: absolute, or a path under `base`.
pub fn artifact_url(base: Option<&str>, artifact: &str) -> Result<String, FetchError> {
    if artifact.starts_with("http://") {
        return Ok(artifact.to_owned());
    }
    match base {
        Some(b) if artifact.starts_with('/') => Ok(format!("{}{artifact}", b.trim_end_matches('/'))),
        _ => Err(FetchError::BadUrl(artifact.to_owned())),
    }
}

/// Downloads `url` into `dir/<digest>.part` (resuming what is there) and
/// returns its bytes once their sha256 is `digest`.
pub async fn fetch(url: &str, digest: &str, size: u64, dir: &Path) -> Result<Vec<u8>, FetchError> {
    let uri: hyper::Uri = url.parse().map_err(|_| FetchError::BadUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(FetchError::BadUrl(url.to_owned()));
    }
    let file_err = |path: &Path| {
        let path = path.to_owned();
        move |source| FetchError::File { path: path.clone(), source }
    };
    tokio::fs::create_dir_all(dir).await.map_err(file_err(dir))?;
    let part = dir.join(format!("{digest}.part"));
    let mut have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
    if have > size {
        have = 0;
    }
    if have < size {
        download(url, uri, &part, have, size).await?;
    }
    let bytes = tokio::fs::read(&part).await.map_err(file_err(&part))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != digest {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(FetchError::Digest { url: url.to_owned(), got, want: digest.to_owned() });
    }
    Ok(bytes)
}

async fn download(url: &str, uri: hyper::Uri, part: &Path, have: u64, size: u64) -> Result<(), FetchError> {
    let http = |message: String| FetchError::Http { url: url.to_owned(), message };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let mut req = hyper::Request::get(uri);
    if have > 0 {
        req = req.header(hyper::header::RANGE, format!("bytes={have}-"));
    }
    let req = req.body(Empty::new()).map_err(|e| http(e.to_string()))?;
    let resp = tokio::time::timeout(IDLE, client.request(req))
        .await
        .map_err(|_| http("no answer within 30 s".into()))?
        .map_err(|e| http(e.to_string()))?;
    let status = resp.status();
    let (mut offset, truncate) = match status.as_u16() {
        206 => (have, false),
        200 => (0, true),
        // The partial file is not a prefix the server knows: start over.
        416 => {
            let _ = tokio::fs::remove_file(part).await;
            return Err(http("the server refused to resume; the next attempt starts from the beginning".into()));
        }
        _ => return Err(http(format!("HTTP {status}"))),
    };
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(!truncate)
        .write(true)
        .truncate(truncate)
        .open(part)
        .await
        .map_err(|source| FetchError::File { path: part.to_owned(), source })?;
    let mut body = resp.into_body();
    while let Some(frame) = tokio::time::timeout(IDLE, body.frame())
        .await
        .map_err(|_| http(format!("stalled at {offset} of {size} bytes; the next attempt resumes there")))?
    {
        let frame = frame.map_err(|e| http(format!("cut at {offset} of {size} bytes ({e}); the next attempt resumes there")))?;
        let Ok(data) = frame.into_data() else { continue };
        offset += data.len() as u64;
        if offset > size {
            drop(f);
            let _ = tokio::fs::remove_file(part).await;
            return Err(FetchError::TooLarge { url: url.to_owned(), size });
        }
        f.write_all(&data).await.map_err(|source| FetchError::File { path: part.to_owned(), source })?;
    }
    f.sync_all().await.map_err(|source| FetchError::File { path: part.to_owned(), source })?;
    if offset < size {
        return Err(http(format!("ended at {offset} of {size} bytes; the next attempt resumes there")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_urls_resolve_against_the_base() {
        assert_eq!(artifact_url(Some("http://ops:8080/"), "/artifacts/sha256/ab").expect("ok"), "http://ops:8080/artifacts/sha256/ab");
        assert_eq!(artifact_url(None, "http://x/a").expect("ok"), "http://x/a");
        assert!(artifact_url(None, "/artifacts/x").is_err());
        assert!(artifact_url(Some("http://ops"), "file:///etc/passwd").is_err());
    }

    /// A server that sends the first `cut` bytes and hangs up, then honours
    /// a Range request: the second attempt completes the file.
    #[tokio::test]
    async fn a_cut_download_resumes_and_a_wrong_digest_is_refused() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let digest = hex::encode(Sha256::digest(&data));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = data.clone();
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = ranges.clone();
        tokio::spawn(async move {
            for attempt in 0.. {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                let from = req
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim().trim_end_matches('-').parse::<usize>().ok())
                    .unwrap_or(0);
                seen.lock().expect("lock").push(from);
                let body = &served[from..];
                let status = if from > 0 { "206 Partial Content" } else { "200 OK" };
                let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = s.write_all(head.as_bytes()).await;
                let send = if attempt == 0 { &body[..20_000] } else { body };
                let _ = s.write_all(send).await;
                let _ = s.shutdown().await;
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("http://{addr}/artifacts/sha256/{digest}");
        let first = fetch(&url, &digest, data.len() as u64, dir.path()).await;
        assert!(matches!(first, Err(FetchError::Http { .. })), "{first:?}");
        let bytes = fetch(&url, &digest, data.len() as u64, dir.path()).await.expect("resumed");
        assert_eq!(bytes, data);
        assert_eq!(*ranges.lock().expect("lock"), vec![0, 20_000], "the second request resumes at the cut");
        // A file whose bytes do not hash to the digest is refused and deleted.
        let wrong = "0".repeat(64);
        std::fs::write(dir.path().join(format!("{wrong}.part")), &data).expect("write");
        let err = fetch(&url, &wrong, data.len() as u64, dir.path()).await;
        assert!(matches!(err, Err(FetchError::Digest { .. })), "{err:?}");
        assert!(!dir.path().join(format!("{wrong}.part")).exists());
    }
}
