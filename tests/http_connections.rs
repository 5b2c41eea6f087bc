//! The connection layer against hostile or slow clients, over real sockets on 127.0.0.1: headers
//! that trickle, idle keep-alive connections, oversized heads, the connection cap.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::TestServer;

/// A server with this header deadline and connection cap.
async fn server(header_ms: u64, max_connections: usize) -> TestServer {
    TestServer::start(|c| {
        c.server.header_read_timeout_ms = header_ms;
        c.server.max_connections = max_connections;
        c.server.max_header_bytes = 8192;
        c.limits.body_read_timeout_ms = 300;
    })
    .await
}

/// Reads until the peer closes or `limit` passes; what was read, and whether it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into(), true)
            }
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&got).into(), false)
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_sockets_are_closed_after_the_header_deadline() {
    if !common::minilm_available() {
        return;
    }
    let s = server(300, 64).await;
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        // Trickling headers: a line, then nothing more.
        let mut slow = connect(addr);
        slow.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        // Silent from the start.
        let mut silent = connect(addr);
        // Idle after one complete request (keep-alive).
        let mut idle = connect(addr);
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let start = Instant::now();
        for (name, sock) in [
            ("slow", &mut slow),
            ("silent", &mut silent),
            ("idle", &mut idle),
        ] {
            let (text, closed) = read_until_closed(sock, Duration::from_secs(5));
            assert!(closed, "{name} socket still open after 5 s: {text:?}");
            if name == "idle" {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "closed only after {:?}",
            start.elapsed()
        );
    })
    .await
    .unwrap();
    // The server still answers.
    let r = reqwest::get(s.url("/health")).await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    if !common::minilm_available() {
        return;
    }
    let s = server(300, 64).await;
    let big = "a".repeat(64 * 1024);
    let r = reqwest::Client::new()
        .get(s.url("/health"))
        .header("x-padding", big)
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        // hyper may close the connection right after writing the 431, before the client has
        // finished sending: then read the status off the wire.
        Err(_) => {
            let addr = s.addr;
            let text = tokio::task::spawn_blocking(move || {
                let mut sock = connect(addr);
                let head = format!(
                    "GET /health HTTP/1.1\r\nHost: x\r\nx-padding: {}\r\n\r\n",
                    "a".repeat(64 * 1024)
                );
                let _ = sock.write_all(head.as_bytes());
                read_until_closed(&mut sock, Duration::from_secs(5)).0
            })
            .await
            .unwrap();
            assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_get_503_at_once() {
    if !common::minilm_available() {
        return;
    }
    let s = server(5_000, 2).await;
    let addr = s.addr;
    tokio::task::spawn_blocking(move || {
        // The readiness poll's keep-alive connection must be gone (closed by its client) before
        // two connections fill the cap.
        std::thread::sleep(Duration::from_millis(500));
        let a = connect(addr);
        let b = connect(addr);
        std::thread::sleep(Duration::from_millis(100));
        // The third connection is answered at once with 503, not left waiting.
        let mut c = connect(addr);
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        let (text, closed) = read_until_closed(&mut c, Duration::from_secs(5));
        assert!(
            closed && started.elapsed() < Duration::from_secs(2),
            "{text:?}"
        );
        assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
        assert!(
            text.contains("retry-after: 1") && text.contains("too_many_connections"),
            "{text}"
        );
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "overloaded_error");
        // Once one closes, a new connection is served.
        drop(a);
        std::thread::sleep(Duration::from_millis(100));
        let mut d = connect(addr);
        d.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (text, _) = read_until_closed(&mut d, Duration::from_secs(5));
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        drop(b);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_shorter_than_its_length_gets_408() {
    if !common::minilm_available() {
        return;
    }
    let s = server(5_000, 64).await;
    let addr = s.addr;
    let text = tokio::task::spawn_blocking(move || {
        let mut sock = connect(addr);
        sock.write_all(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"model\"",
        )
        .unwrap();
        read_until_closed(&mut sock, Duration::from_secs(5)).0
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(text.contains("limits.body_read_timeout_ms"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_the_origins_the_operator_allows() {
    if !common::minilm_available() {
        return;
    }
    let preflight = |s: &TestServer, origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, s.url("/v1/embeddings"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    // Default: no CORS headers for anyone.
    let closed = server(5_000, 64).await;
    let r = preflight(&closed, "https://app.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    drop(closed);
    let open = TestServer::start(|c| {
        c.server.cors_allowed_origins = vec!["https://app.example".into()];
    })
    .await;
    let r = preflight(&open, "https://app.example").await.unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = preflight(&open, "https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    // A real call from the allowed origin sees the metering headers.
    let r = reqwest::Client::new()
        .post(open.url("/v1/embeddings"))
        .header("origin", "https://app.example")
        .json(&serde_json::json!({"model": "minilm", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("x-energy-joules"), "{exposed}");
}
