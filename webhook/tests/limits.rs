//! The real webhook server (router, TLS listener) holding clients to its limits: slow headers, a
//! silent or idle connection, a slow body, an oversized body, more connections than it takes.
//! Raw clients speak TLS (tokio-rustls, trusting the test CA) and write HTTP by hand, so they can be
//! as slow as a hostile client is.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use webhook::server::Limits;

/// Limits short enough for tests.
fn quick() -> Limits {
    Limits {
        header_read: Duration::from_secs(1),
        request: Duration::from_secs(1),
        ..Limits::default()
    }
}

async fn start(limits: Limits) -> TestServer {
    TestServer::start_limited(state(world(), Options::default()), limits).await
}

/// A TLS connection to `server` trusting its CA, offering `alpn`.
async fn connect(server: &TestServer, alpn: &[u8]) -> TlsStream<TcpStream> {
    connect_to(server.addr, &server.ca.pem, alpn).await
}

/// A TLS connection to `addr` trusting `ca_pem`, offering `alpn`.
async fn connect_to(addr: std::net::SocketAddr, ca_pem: &str, alpn: &[u8]) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or 10 s pass); returns what it sent and when it
/// closed, counted from `since`.
async fn until_closed(stream: &mut TlsStream<TcpStream>, since: Instant) -> (Vec<u8>, Duration) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, since.elapsed()),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open for 10 s"),
        }
    }
}

/// `elapsed` is the 1 s limit, give or take scheduling.
fn about_the_limit(elapsed: Duration) {
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "closed after {elapsed:?}"
    );
}

/// The server still answers a valid review after whatever the test did.
async fn still_serves(server: &TestServer) {
    let m = migration();
    let response = server
        .review(&review("CREATE", ALICE, Some(&m), None))
        .await;
    assert_eq!(response["allowed"], true, "{response}");
}

#[tokio::test]
async fn a_client_that_sends_headers_too_slowly_is_disconnected_after_the_timeout() {
    let server = start(quick()).await;
    let mut stream = connect(&server, b"http/1.1").await;
    let started = Instant::now();
    stream
        .write_all(b"POST /validate HTTP/1.1\r\nHost: webhook.test\r\n")
        .await
        .unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);
    // One header line every 200 ms, forever: the head never ends.
    let trickle = tokio::spawn(async move {
        for i in 0.. {
            let line = format!("X-Slow-{i}: 1\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut received))
        .await
        .expect("the server kept a slow client for 10 s");
    let elapsed = started.elapsed();
    trickle.abort();
    about_the_limit(elapsed);
    assert!(
        closed.is_err() || !String::from_utf8_lossy(&received).contains(" 200 "),
        "{closed:?} {}",
        String::from_utf8_lossy(&received)
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn a_client_silent_after_the_handshake_is_disconnected_after_the_timeout() {
    let server = start(quick()).await;
    let mut stream = connect(&server, b"http/1.1").await;
    let (received, elapsed) = until_closed(&mut stream, Instant::now()).await;
    about_the_limit(elapsed);
    assert!(received.is_empty(), "{received:?}");
}

#[tokio::test]
async fn an_http2_connection_without_requests_gets_goaway_after_the_timeout() {
    let server = start(quick()).await;
    let mut stream = connect(&server, b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let started = Instant::now();
    // The client preface and an empty SETTINGS frame, then nothing.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (received, elapsed) = until_closed(&mut stream, started).await;
    about_the_limit(elapsed);
    assert!(frame_types(&received).contains(&7), "no GOAWAY frame");
}

/// The types of the HTTP/2 frames in `bytes`.
fn frame_types(mut bytes: &[u8]) -> Vec<u8> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push(bytes[3]);
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

#[tokio::test]
async fn a_body_sent_too_slowly_gets_408_after_the_request_timeout() {
    let server = start(quick()).await;
    let mut stream = connect(&server, b"http/1.1").await;
    let started = Instant::now();
    stream
        .write_all(
            b"POST /validate HTTP/1.1\r\nHost: webhook.test\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
    let (received, elapsed) = until_closed(&mut stream, started).await;
    about_the_limit(elapsed);
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("request not completed within 1 s"), "{text}");
}

#[tokio::test]
async fn an_oversized_body_gets_413_with_a_clear_message() {
    let server = start(Limits::default()).await;
    let mut m = migration();
    let padding = "x".repeat(webhook::MAX_BODY_BYTES);
    set(&mut m, "/metadata/annotations/padding", json!(padding));
    let answer = server
        .client()
        .post(server.url("/validate"))
        .json(&review("CREATE", ALICE, Some(&m), None))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let text = answer.text().await.unwrap();
    assert!(
        text.contains(&format!(
            "request body larger than {} bytes",
            webhook::MAX_BODY_BYTES
        )) && text.contains("AdmissionReview"),
        "{text}"
    );
    still_serves(&server).await;
}

#[tokio::test]
async fn an_update_with_object_and_old_object_near_etcds_limit_is_reviewed() {
    let server = start(Limits::default()).await;
    // Two objects of 1.4 MiB each: more than any one object etcd stores, less than two.
    let mut old = migration();
    set(&mut old, "/metadata/uid", json!("uid-1"));
    set(
        &mut old,
        "/metadata/annotations/notes",
        json!("n".repeat(1400 * 1024)),
    );
    let mut new = old.clone();
    set(&mut new, "/metadata/labels/team", json!("a"));
    let body = review("UPDATE", ALICE, Some(&new), Some(&old));
    let size = serde_json::to_vec(&body).unwrap().len();
    assert!(size > 2 << 20 && size < webhook::MAX_BODY_BYTES, "{size}");
    let response = server.review(&body).await;
    assert_eq!(response["allowed"], true, "{response}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let server = start(Limits {
        max_connections: 1,
        ..Limits::default()
    })
    .await;
    let first = connect(&server, b"http/1.1").await;
    let second = {
        let (addr, ca) = (server.addr, server.ca.pem.clone());
        tokio::spawn(async move {
            let mut stream = connect_to(addr, &ca, b"http/1.1").await;
            stream
                .write_all(
                    b"GET /healthz HTTP/1.1\r\nHost: webhook.test\r\nConnection: close\r\n\r\n",
                )
                .await
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).await.unwrap();
            text
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served while the only slot was taken"
    );
    drop(first);
    let text = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the freed slot was not given to the waiting client")
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.ends_with("ok"), "{text}");
}
