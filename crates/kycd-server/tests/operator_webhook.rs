//! kycd's operator webhook signatures against an independent Standard
//! Webhooks verifier (the specification's own Rust library).

use kycd_server::operator_webhook::{headers, SigningSecret};

fn header_map(h: &[(&'static str, String); 3]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in h {
        map.insert(*name, value.parse().unwrap());
    }
    map
}

#[test]
fn signatures_verify_with_the_reference_library_during_a_rotation() {
    let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let new = "whsec_dGhpcy1pcy1hLXNlY29uZC1rZXktMzItYnl0ZXM=";
    let secrets = [
        SigningSecret::parse(new).unwrap(),
        SigningSecret::parse(old).unwrap(),
    ];
    let body = br#"{"type":"decision.created","timestamp":"2026-11-22T18:00:00Z","data":{"outcome":"approve"}}"#;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let h = headers(&secrets, "msg_01HZX", now, body);
    let map = header_map(&h);
    // A receiver holding either secret verifies.
    for secret in [old, new] {
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        wh.verify(body, &map).unwrap();
    }
    // A changed body, another id or a third secret does not.
    let other =
        standardwebhooks::Webhook::new("whsec_b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzISE=").unwrap();
    assert!(other.verify(body, &map).is_err());
    let wh = standardwebhooks::Webhook::new(old).unwrap();
    assert!(wh.verify(br#"{"type":"decision.changed"}"#, &map).is_err());
    let mut moved = map.clone();
    moved.insert("webhook-id", "msg_other".parse().unwrap());
    assert!(wh.verify(body, &moved).is_err());
}

// ---------------------------------------------------------------------------
// Delivery: a real axum receiver on 127.0.0.1, real reqwest connections.

use kycd_server::operator_webhook::{EndpointError, Message, SendError, Sender};
use std::time::Duration;

const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW: &str = "whsec_dGhpcy1pcy1hLXNlY29uZC1rZXktMzItYnl0ZXM=";

/// One request as the receiver saw it.
#[derive(Debug)]
struct Recorded {
    path: String,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

/// How the receiver answers `/hook`.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// 302 to `/landed` (which would record a second request if followed).
    Redirect,
    /// Never answers.
    Hang,
}

/// Starts a receiver on 127.0.0.1:0 recording every request, and returns
/// its `/hook` URL and the stream of recorded requests.
async fn receiver(answer: Answer) -> (String, tokio::sync::mpsc::UnboundedReceiver<Recorded>) {
    use axum::response::IntoResponse;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |req: axum::extract::Request| {
        let tx = tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let _ = tx.send(Recorded {
                path: path.clone(),
                headers: parts.headers,
                body,
            });
            if path != "/hook" {
                return http::StatusCode::OK.into_response();
            }
            match answer {
                Answer::Status(code) => http::StatusCode::from_u16(code).unwrap().into_response(),
                Answer::Redirect => (
                    http::StatusCode::FOUND,
                    [(http::header::LOCATION, "/landed")],
                )
                    .into_response(),
                Answer::Hang => std::future::pending().await,
            }
        }
    };
    let app = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

fn secrets() -> Vec<SigningSecret> {
    vec![
        SigningSecret::parse(NEW).unwrap(),
        SigningSecret::parse(OLD).unwrap(),
    ]
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn message(id: &str) -> Message {
    Message {
        id: id.to_owned(),
        timestamp: now(),
        body: br#"{"type":"decision.created","data":{"outcome":"approve"}}"#.to_vec(),
    }
}

/// The next recorded request, waiting at most a few seconds.
async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Recorded>) -> Recorded {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the receiver saw a request")
        .expect("the receiver is running")
}

#[tokio::test]
async fn a_delivery_arrives_signed_with_every_secret_and_a_fixed_length() {
    let (url, mut rx) = receiver(Answer::Status(204)).await;
    let sender = Sender::new(&url, secrets(), true, Duration::from_secs(10)).unwrap();
    assert_eq!(sender.url(), url);
    let msg = message("msg_delivery");
    let delivered = sender.send(&msg).await.unwrap();
    assert_eq!(delivered.status, 204);

    let seen = next(&mut rx).await;
    assert_eq!(seen.path, "/hook");
    assert_eq!(&seen.body[..], &msg.body[..]);
    let h = &seen.headers;
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        msg.body.len().to_string()
    );
    assert!(h.get("transfer-encoding").is_none(), "{h:?}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        h["user-agent"].to_str().unwrap(),
        concat!("kycd/", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(h["webhook-id"], "msg_delivery");
    assert_eq!(
        h["webhook-timestamp"].to_str().unwrap(),
        msg.timestamp.to_string()
    );
    // A receiver holding either secret of the rotation verifies, with the
    // specification's own library; another secret does not.
    for secret in [OLD, NEW] {
        let wh = standardwebhooks::Webhook::new(secret).unwrap();
        wh.verify(&seen.body, h).unwrap();
    }
    let other =
        standardwebhooks::Webhook::new("whsec_b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzISE=").unwrap();
    assert!(other.verify(&seen.body, h).is_err());
}

#[tokio::test]
async fn a_retry_of_one_message_carries_the_same_id() {
    let (url, mut rx) = receiver(Answer::Status(200)).await;
    let sender = Sender::new(&url, secrets(), true, Duration::from_secs(10)).unwrap();
    let msg = message("msg_retried");
    sender.send(&msg).await.unwrap();
    sender.send(&msg).await.unwrap();
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    assert_eq!(first.headers["webhook-id"], "msg_retried");
    assert_eq!(second.headers["webhook-id"], "msg_retried");
    assert_eq!(first.body, second.body);
}

#[tokio::test]
async fn a_server_error_is_a_status_failure() {
    let (url, mut rx) = receiver(Answer::Status(500)).await;
    let sender = Sender::new(&url, secrets(), true, Duration::from_secs(10)).unwrap();
    let err = sender.send(&message("msg_500")).await.unwrap_err();
    assert!(matches!(err, SendError::Status(500)), "{err:?}");
    assert_eq!(err.code(), "status");
    next(&mut rx).await;
}

#[tokio::test]
async fn a_redirect_is_a_failure_and_is_not_followed() {
    let (url, mut rx) = receiver(Answer::Redirect).await;
    let sender = Sender::new(&url, secrets(), true, Duration::from_secs(10)).unwrap();
    let err = sender.send(&message("msg_302")).await.unwrap_err();
    assert!(matches!(err, SendError::Status(302)), "{err:?}");
    assert_eq!(next(&mut rx).await.path, "/hook");
    // Had the redirect been followed, `/landed` would have been recorded
    // before `send` returned.
    assert!(rx.try_recv().is_err(), "the Location was followed");
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_within_the_timeout() {
    let (url, mut rx) = receiver(Answer::Hang).await;
    let timeout = Duration::from_millis(300);
    let sender = Sender::new(&url, secrets(), true, timeout).unwrap();
    let started = std::time::Instant::now();
    let err = sender.send(&message("msg_hang")).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, SendError::Timeout), "{err:?}");
    assert_eq!(err.code(), "timeout");
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // It did reach the receiver: the timeout is the answer's, not the
    // connection's.
    next(&mut rx).await;
}

#[tokio::test]
async fn a_closed_port_is_a_connect_failure_without_the_body() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sender = Sender::new(
        &format!("http://127.0.0.1:{port}/"),
        secrets(),
        true,
        Duration::from_secs(10),
    )
    .unwrap();
    let msg = message("msg_closed");
    let err = sender.send(&msg).await.unwrap_err();
    let SendError::Connect(text) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(err.code(), "connect");
    assert!(!text.contains("decision.created"), "{text}");
    assert!(!text.contains(&port.to_string()), "the URL leaked: {text}");
}

#[test]
fn private_ip_literals_are_refused_when_building() {
    for url in [
        "http://127.0.0.1:8080/",
        "http://[::1]:8080/",
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://0x7f.1/", // 127.0.0.1, spelled otherwise
        "http://0.0.0.0/",
    ] {
        let err = Sender::new(url, secrets(), false, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(err, EndpointError::PrivateAddress(_)),
            "{url}: {err:?}"
        );
    }
    // The same URLs are fine when private delivery is allowed.
    Sender::new(
        "http://127.0.0.1:8080/",
        secrets(),
        true,
        Duration::from_secs(1),
    )
    .unwrap();
    // Public literals and names are accepted when building.
    Sender::new(
        "https://93.184.216.34/",
        secrets(),
        false,
        Duration::from_secs(1),
    )
    .unwrap();
    Sender::new(
        "https://[2606:2800::1]/",
        secrets(),
        false,
        Duration::from_secs(1),
    )
    .unwrap();
    Sender::new(
        "https://hooks.example.com/kyc",
        secrets(),
        false,
        Duration::from_secs(1),
    )
    .unwrap();
}

#[test]
fn bad_urls_are_refused() {
    let build = |url: &str| Sender::new(url, secrets(), true, Duration::from_secs(1));
    assert!(matches!(
        build("not a url"),
        Err(EndpointError::InvalidUrl(_))
    ));
    assert!(matches!(build("ftp://example.com/"), Err(EndpointError::Scheme(s)) if s == "ftp"));
    assert!(matches!(
        build("file:///etc/passwd"),
        Err(EndpointError::Scheme(_))
    ));
    assert!(matches!(
        build("unix:/run/sock"),
        Err(EndpointError::Scheme(_))
    ));
    assert_eq!(
        build("https://example.com").unwrap().url(),
        "https://example.com/"
    );
}

#[tokio::test]
async fn a_name_resolving_only_to_private_addresses_is_blocked_at_send() {
    // A bare listener: any connection at all would be waiting in its
    // backlog by the time `send` returns.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sender = Sender::new(
        &format!("http://localhost:{port}/hook"),
        secrets(),
        false,
        Duration::from_secs(10),
    )
    .expect("names are checked when connecting, not when building");
    let err = sender.send(&message("msg_blocked")).await.unwrap_err();
    let SendError::Blocked(text) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(err.code(), "blocked");
    assert!(text.contains("localhost"), "{text}");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the receiver saw a connection: {other:?}"),
    }
}
