//! Hostile clients against the real binary: more slow connections than the
//! process has file descriptors must not keep signed deliveries from being
//! answered within Didit's 5 s, and slow or idle connections are closed by
//! the header, body and idle timeouts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use didit::canonical::Value;
use didit::signature::{sign, Secret};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::{tail, Server};

const SECRET: &str = "hostile-test-secret-kq1WnV2a8dLr0ZcYx3PbTu7E";
const TOKEN: &str = "hostile-test-api-token";

/// How long Didit waits for an answer before counting a delivery failed.
const DIDIT_WAIT: Duration = Duration::from_secs(5);

/// The server's file-descriptor limit in the slow-connection test, and how
/// many slow connections are held against it (well over the limit).
const DESCRIPTORS: u64 = 256;
const SLOW_CONNECTIONS: usize = 400;

/// Signed deliveries made under the attack, one after another.
const DELIVERIES: usize = 20;

/// The short timeouts the tests configure, so they run in seconds.
const TIMEOUT_SECS: u64 = 2;

fn envs() -> Vec<(&'static str, String)> {
    vec![
        ("KYCD_WEBHOOK_SECRETS", SECRET.to_owned()),
        ("KYCD_API_TOKEN", TOKEN.to_owned()),
        ("KYCD_HEADER_READ_TIMEOUT_SECS", TIMEOUT_SECS.to_string()),
        ("KYCD_BODY_READ_TIMEOUT_SECS", TIMEOUT_SECS.to_string()),
        ("KYCD_IDLE_TIMEOUT_SECS", TIMEOUT_SECS.to_string()),
    ]
}

fn addr(server: &Server) -> SocketAddr {
    server
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("server address")
}

/// A signed `status.updated` delivery for a fresh session.
fn delivery(n: usize) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let raw = format!(
        r#"{{"created_at":{now},"environment":"live","event_id":"hostile-evt-{n}-{now}","session_id":"hostile-session-{n}-{now}","status":"In Progress","timestamp":{now},"vendor_data":"hostile-user-{n}","webhook_type":"status.updated","workflow_id":"wf-1"}}"#
    );
    let payload = Value::parse(raw.as_bytes()).expect("payload parses");
    let signed = sign(&Secret::new(SECRET), &payload);
    (signed.body, signed.headers)
}

/// POST a delivery on a connection of its own, as Didit does; the status,
/// the event id and how long the answer took.
async fn deliver(base: &str, n: usize) -> (u16, String, Duration) {
    let (body, headers) = delivery(n);
    let client = reqwest::Client::builder()
        .timeout(DIDIT_WAIT)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut req = client.post(format!("{base}/webhooks/didit")).body(body);
    for (name, value) in headers {
        req = req.header(name, value);
    }
    let started = Instant::now();
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("delivery {n} got no answer within {DIDIT_WAIT:?}: {e}"));
    let status = resp.status().as_u16();
    let body: Json = resp.json().await.unwrap_or(Json::Null);
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    (status, id, started.elapsed())
}

/// Hold one slow connection open for as long as `stop` is unset: a request
/// whose headers never end, one byte every half second. When the server
/// closes it, open another.
async fn hold_slowly(addr: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicUsize>) {
    const HEAD: &[u8] = b"POST /webhooks/didit HTTP/1.1\r\nHost: kycd\r\nX-Slow: ";
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut sent = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let byte = HEAD.get(sent).copied().unwrap_or(b'a');
            if stream.write_all(&[byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_answered_in_time_with_more_slow_connections_than_descriptors() {
    let root = tempfile::TempDir::new().unwrap();
    let log = root.path().join("server.log");
    let server = Server::start_with(&root.path().join("data"), &log, &envs(), |command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the setrlimit system call, which is async-signal-safe; it
        // allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(|| {
                let limit = rustix::process::Rlimit {
                    current: Some(DESCRIPTORS),
                    maximum: Some(DESCRIPTORS),
                };
                rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
                    .map_err(std::io::Error::from)
            });
        }
    });
    let target = addr(&server);

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicUsize::new(0));
    let holders: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|_| tokio::spawn(hold_slowly(target, stop.clone(), opened.clone())))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while opened.load(Ordering::Relaxed) < SLOW_CONNECTIONS {
        assert!(
            Instant::now() < deadline,
            "only {} slow connections opened",
            opened.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The server cannot hold them all: once it has dropped as many as it
    // could hold and they have come back, the attack is at full strength
    // (every slow client connected or reconnecting) from here on.
    while opened.load(Ordering::Relaxed) < SLOW_CONNECTIONS + DESCRIPTORS as usize {
        assert!(
            Instant::now() < deadline,
            "the server dropped only {} slow connections",
            opened.load(Ordering::Relaxed) - SLOW_CONNECTIONS
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ids = Vec::new();
    let mut slowest = Duration::ZERO;
    for n in 0..DELIVERIES {
        let (status, id, took) = deliver(&server.base, n).await;
        assert_eq!(
            status,
            200,
            "delivery {n} under attack; server log:\n{}",
            tail(&log)
        );
        assert!(took < DIDIT_WAIT, "delivery {n} took {took:?}");
        slowest = slowest.max(took);
        ids.push(id);
    }
    let held = opened.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for h in holders {
        h.abort();
    }
    eprintln!(
        "{DELIVERIES} deliveries answered 200, the slowest in {slowest:?}, while {SLOW_CONNECTIONS} \
         slow clients made {held} connections against {DESCRIPTORS} descriptors"
    );

    // Every acknowledged delivery is in the log.
    let client = reqwest::Client::new();
    for id in ids {
        let r = client
            .get(format!("{}/api/v1/events/{id}", server.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{id} is not in the log");
    }
}

/// Read until the server closes the connection; how long that took, or
/// `None` if it was still open at `give_up`.
async fn closed_after(stream: &mut TcpStream, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = give_up.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn assert_closed_by_timeout(what: &str, took: Option<Duration>) {
    let limit = Duration::from_secs(TIMEOUT_SECS);
    let took = took.unwrap_or_else(|| panic!("{what}: still open after {:?}", limit * 3));
    assert!(
        took >= limit - Duration::from_millis(300) && took < limit * 3,
        "{what}: closed after {took:?}, expected about {limit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_by_their_timeouts() {
    let root = tempfile::TempDir::new().unwrap();
    let server = Server::start(
        &root.path().join("data"),
        &root.path().join("server.log"),
        &envs(),
    );
    let target = addr(&server);
    let give_up = Duration::from_secs(TIMEOUT_SECS * 3);

    // A connection that never sends anything.
    let mut silent = TcpStream::connect(target).await.unwrap();
    // A keep-alive connection idle after one answered request.
    let mut kept = TcpStream::connect(target).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: kycd\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let (silent_took, kept_took) = tokio::join!(
        closed_after(&mut silent, give_up),
        closed_after(&mut kept, give_up)
    );
    assert_closed_by_timeout("a silent connection", silent_took);
    assert_closed_by_timeout("an idle keep-alive connection", kept_took);

    // Headers that keep trickling in are never idle, and are still cut off
    // by the header timeout.
    let mut slow = TcpStream::connect(target).await.unwrap();
    let trickle = async {
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let started = Instant::now();
    trickle.await;
    let took = closed_after(&mut slow, give_up)
        .await
        .map(|_| started.elapsed());
    assert_closed_by_timeout("headers sent a byte at a time", took);

    // A body that stops halfway is answered 408 once the body timeout passes.
    let mut stalled = TcpStream::connect(target).await.unwrap();
    stalled
        .write_all(
            b"POST /webhooks/didit HTTP/1.1\r\nHost: kycd\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"half\":",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(give_up, stalled.read_to_end(&mut answer)).await;
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body got {answer:?} after {took:?}"
    );
    assert_closed_by_timeout("a stalled body", Some(took));
}

/// Whether the server has closed `stream`, looking for `wait` at most.
async fn is_closed(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_connections_replace_the_oldest_idle_ones() {
    const CAP: usize = 8;
    const IDLE: usize = 20;
    let root = tempfile::TempDir::new().unwrap();
    let log = root.path().join("server.log");
    let mut envs = envs();
    // Long timeouts, so only the cap can explain a connection closing.
    envs.retain(|(k, _)| !k.ends_with("_TIMEOUT_SECS"));
    envs.push(("KYCD_IDLE_TIMEOUT_SECS", "600".to_owned()));
    envs.push(("KYCD_HEADER_READ_TIMEOUT_SECS", "600".to_owned()));
    envs.push(("KYCD_MAX_CONNECTIONS", CAP.to_string()));
    let server = Server::start(&root.path().join("data"), &log, &envs);
    let target = addr(&server);

    let mut idle = Vec::new();
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(target).await.unwrap());
    }
    let (status, _, took) = deliver(&server.base, 0).await;
    assert_eq!(status, 200, "server log:\n{}", tail(&log));
    assert!(took < DIDIT_WAIT, "the delivery took {took:?}");

    // The delivery and the idle connections after the cap each took the
    // place of an older idle one: the oldest IDLE - CAP + 1 are closed,
    // long before any timeout, and the newest CAP - 1 are still open.
    let (old, new) = idle.split_at_mut(IDLE - CAP + 1);
    for (n, stream) in old.iter_mut().enumerate() {
        assert!(
            is_closed(stream, Duration::from_secs(5)).await,
            "idle connection {n} is still open at the cap"
        );
    }
    for (n, stream) in new.iter_mut().enumerate() {
        assert!(
            !is_closed(stream, Duration::from_millis(200)).await,
            "idle connection {} was closed below the cap",
            n + IDLE - CAP + 1
        );
    }
}
