//! Putting a disk image into a storage's `import` content: `POST .../upload` (multipart, the file
//! streamed, never buffered) or `POST .../download-url` (PVE fetches a presigned URL itself), both
//! with the image's SHA-256 for PVE to verify, then the task waited for.

use std::path::Path;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use sha2::Digest as _;
use tokio_util::io::ReaderStream;

use super::api::{Client, LONG_TASK_TIMEOUT};
use crate::progress::Progress;
use crate::storage::PresignedObject;
use crate::{Error, Result};

/// The multipart parts around the file: the form fields first (pve-http-server reads them before
/// the file part), then the file part's header; and the closing boundary.
pub fn multipart_frame(boundary: &str, filename: &str, sha256: &str) -> (String, String) {
    let field = |name: &str, value: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
    };
    let head = format!(
        "{}{}{}--{boundary}\r\nContent-Disposition: form-data; name=\"filename\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n",
        field("content", "import"),
        field("checksum-algorithm", "sha256"),
        field("checksum", sha256),
    );
    (head, format!("\r\n--{boundary}--\r\n"))
}

/// A boundary no image contains in practice: 32 hex digits of a hash of the time, the process and
/// the file.
fn boundary(filename: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(format!(
        "{:?}{}{filename}",
        std::time::SystemTime::now(),
        std::process::id()
    ));
    format!("vrg-{}", &hex::encode(h.finalize())[..32])
}

/// Uploads `path` as `filename` into `storage`'s import content and waits for PVE's `imgcopy`
/// task, which verifies `sha256`.
pub async fn upload(
    client: &Client,
    node: &str,
    storage: &str,
    filename: &str,
    path: &Path,
    sha256: &str,
    progress: &Progress,
) -> Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
        .len();
    let boundary = boundary(filename);
    let (head, tail) = multipart_frame(&boundary, filename, sha256);
    let total = head.len() as u64 + len + tail.len() as u64;
    let counter = progress.clone();
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) })
        .chain(
            ReaderStream::with_capacity(file, 1 << 20)
                .inspect_ok(move |chunk| counter.add(chunk.len() as u64)),
        )
        .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }));
    let what = format!("POST /nodes/{node}/storage/{storage}/upload ({filename})");
    let rb = client
        .http
        .post(client.url(&["nodes", node, "storage", storage, "upload"]))
        .header(
            CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header(CONTENT_LENGTH, total)
        .body(reqwest::Body::wrap_stream(body));
    let upid = client.send(&what, rb).await?;
    let upid = upid.as_str().ok_or_else(|| {
        Error::Invalid(format!(
            "{}: {what} answered {upid}, not a task",
            client.system()
        ))
    })?;
    client.wait_task(upid, LONG_TASK_TIMEOUT, &[]).await
}

/// Has PVE download `object` as `filename` into `storage`'s import content and waits for the
/// `download` task, which verifies the SHA-256. The URL is never logged and is removed from any
/// error PVE reports (its task log quotes it).
pub async fn download_url(
    client: &Client,
    node: &str,
    storage: &str,
    filename: &str,
    object: &PresignedObject,
) -> Result<()> {
    let params = [
        ("url", object.url.clone()),
        ("content", "import".to_string()),
        ("filename", filename.to_string()),
        ("checksum", object.sha256.clone()),
        ("checksum-algorithm", "sha256".to_string()),
    ];
    let path = ["nodes", node, "storage", storage, "download-url"];
    let redact = [object.url.as_str()];
    let upid: String = client
        .post(&path, &params)
        .await
        .map_err(|e| scrub_error(e, &redact))?;
    client.wait_task(&upid, LONG_TASK_TIMEOUT, &redact).await
}

/// `e` with the strings of `redact` removed from its message.
fn scrub_error(e: Error, redact: &[&str]) -> Error {
    let text = e.to_string();
    if !redact.iter().any(|s| !s.is_empty() && text.contains(s)) {
        return e;
    }
    let clean = super::api::scrub(&text, redact);
    match e.is_retryable() {
        true => Error::transient("Proxmox VE", clean),
        false => Error::Invalid(clean),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_fields_come_before_the_file() {
        let (head, tail) = multipart_frame("B", "web-scsi0.qcow2", "ab12");
        let content = head.find("name=\"content\"").unwrap();
        let checksum = head.find("name=\"checksum\"\r\n").unwrap();
        let file = head.find("filename=\"web-scsi0.qcow2\"").unwrap();
        assert!(content < file && checksum < file);
        assert!(head.contains("\r\n\r\nimport\r\n"));
        assert!(head.contains("name=\"checksum-algorithm\"\r\n\r\nsha256\r\n"));
        assert!(head.ends_with("application/octet-stream\r\n\r\n"));
        assert_eq!(tail, "\r\n--B--\r\n");
        assert_ne!(boundary("a"), boundary("b"));
    }

    /// A one-route HTTP server: records the upload request, answers it with a UPID and every
    /// task status with `stopped`/`OK`.
    async fn fake_pve() -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    ) {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let mut conn = tokio::io::BufReader::new(conn);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                conn.read_exact(&mut body).await.unwrap();
                let answer = if head.contains("/upload") {
                    r#"{"data":"UPID:n:1:1:1:imgcopy::u:"}"#
                } else {
                    r#"{"data":{"status":"stopped","exitstatus":"OK"}}"#
                };
                let _ = tx.send((head, body));
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                conn.get_mut().write_all(response.as_bytes()).await.unwrap();
            }
        });
        (format!("http://{addr}"), rx)
    }

    #[tokio::test]
    async fn uploads_stream_the_file_with_a_content_length() {
        let (url, mut requests) = fake_pve().await;
        let client = Client::new(
            &url,
            "root@pam!t",
            "secret",
            &super::super::TlsOptions::default(),
            crate::endpoint::Guard::new(true),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.qcow2");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let progress = Progress::new(data.len() as u64);
        upload(
            &client,
            "pve1",
            "local",
            "web-scsi0.qcow2",
            &path,
            "ab12",
            &progress,
        )
        .await
        .unwrap();
        assert_eq!(progress.done(), data.len() as u64);
        let (head, body) = requests.recv().await.unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(
            head.starts_with("POST /api2/json/nodes/pve1/storage/local/upload "),
            "{head}"
        );
        assert!(
            lower.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(!lower.contains("transfer-encoding"), "{head}");
        assert!(
            lower.contains("authorization: pveapitoken=root@pam!t=secret"),
            "{head}"
        );
        let boundary = lower
            .split("boundary=")
            .nth(1)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string();
        let (frame, tail) = multipart_frame(&boundary, "web-scsi0.qcow2", "ab12");
        assert!(body.starts_with(frame.as_bytes()));
        assert!(body.ends_with(tail.as_bytes()));
        assert_eq!(&body[frame.len()..body.len() - tail.len()], data.as_slice());
        let (status, _) = requests.recv().await.unwrap();
        assert!(
            status.contains("/tasks/UPID:n:1:1:1:imgcopy::u:/status"),
            "{status}"
        );
    }

    #[test]
    fn urls_are_scrubbed_from_errors() {
        let url = "http://s3/b/k?X-Amz-Signature=abc";
        let e = Error::Invalid(format!(
            "task download failed: command 'wget -O x {url}' failed: exit code 8"
        ));
        let clean = scrub_error(e, &[url]);
        assert!(!clean.to_string().contains("X-Amz-Signature"), "{clean}");
        assert!(clean.to_string().contains("<redacted>"));
        let e = Error::transient("pve", format!("POST: {url}"));
        assert!(scrub_error(e, &[url]).is_retryable());
    }
}
