//! `jobstream_server::testing::TestServer`: it serves the whole API in process,
//! its tokens are the server's, and it leaves nothing behind once stopped or
//! dropped (no listener, no PostgreSQL database).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use jobstream_server::testing::TestServer;
use sea_orm::{ConnectionTrait as _, Statement};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends one request and answers (status, body).
async fn send(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Waits until nothing listens on `addr` any more.
async fn wait_until_closed(addr: SocketAddr) {
    for _ in 0..500 {
        if TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_server_serves_the_api_with_the_tokens_it_mints() {
    let server = TestServer::start().await.expect("start");
    let addr = server.addr();
    assert_eq!(server.url(), format!("http://{addr}"));
    assert_eq!(send(addr, "GET", "/readyz", None, "").await.0, 200);
    let job = r#"{"workspaceId":"acme","type":"build"}"#;
    let (status, body) = send(addr, "POST", "/api/v1/jobs", Some(&server.publish_token("acme")), job).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(send(addr, "POST", "/api/v1/jobs", Some(&server.subscribe_token("acme")), job).await.0, 403);
    let (status, body) =
        send(addr, "GET", "/api/v1/jobs?workspaceId=acme", Some(&server.subscribe_token("acme")), "").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""type":"build""#), "{body}");
    let mut expired = TestServer::claims(&["acme"], "subscribe");
    expired.exp = 1;
    assert_eq!(send(addr, "GET", "/api/v1/jobs", Some(&server.token(&expired)), "").await.0, 401);
    server.stop().await.expect("stop");
    wait_until_closed(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_test_server_stops_listening() {
    let server = TestServer::start().await.expect("start");
    let addr = server.addr();
    assert_eq!(send(addr, "GET", "/healthz", None, "").await.0, 200);
    drop(server);
    wait_until_closed(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_test_server_drops_its_database_when_it_stops() {
    let Ok(url) = std::env::var("JOBSTREAM_TEST_POSTGRES_URL") else {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "JOBSTREAM_TEST_POSTGRES_URL must be set in CI");
        eprintln!("skipped: JOBSTREAM_TEST_POSTGRES_URL is not set");
        return;
    };
    let server = TestServer::start_postgres(&url).await.expect("start");
    let name = server.database_name().expect("a database").to_owned();
    let job = r#"{"workspaceId":"acme","type":"build"}"#;
    assert_eq!(send(server.addr(), "POST", "/api/v1/jobs", Some(&server.publish_token("acme")), job).await.0, 201);
    let admin = sea_orm::Database::connect(&url).await.expect("connect");
    let exists = |name: String| {
        let admin = admin.clone();
        async move {
            let query = Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT 1 AS one FROM pg_database WHERE datname = $1",
                [name.into()],
            );
            admin.query_one(query).await.expect("query").is_some()
        }
    };
    assert!(exists(name.clone()).await);
    server.stop().await.expect("stop");
    assert!(!exists(name).await, "the test database is still there");
}
