//! Outbound HTTPS to endpoints behind a private CA (`KYCD_CA_BUNDLE`),
//! over real TLS: a CA and a server certificate made here with rcgen, a
//! rustls server on 127.0.0.1 playing the operator's webhook endpoint,
//! Didit's API and a media link. Without the bundle every client fails
//! with rustls' `UnknownIssuer`; with it the same calls succeed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use didit::signature::Secret;
use http_body_util::{BodyExt, Full};
use kycd_core::SystemClock;
use kycd_server::ca_bundle::CaBundle;
use kycd_server::Settings;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_rustls::rustls;

mod deliveries;

const SECRET: &str = "outbound-tls-test-secret";
const TOKEN: &str = "outbound-tls-test-token";
const OPERATOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DECISION: &str = r#"{"session_id":"s-tls","status":"Approved"}"#;
const PORTRAIT: &[u8] = b"\xff\xd8\xff\xe0 not really a jpeg";

/// A private CA, the PEM of its certificate in a file, and a server
/// certificate for 127.0.0.1 and localhost that it issued.
struct Pki {
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kycd test private CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "operator.internal");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf.signed_by(&key, &ca).unwrap();

    // The ring provider named outright: reqwest uses ring too, and no
    // process-wide default has to be installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), ca.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    Pki {
        ca_file,
        server: Arc::new(server),
        _dir: dir,
    }
}

/// What the HTTPS server saw.
#[derive(Debug)]
enum Seen {
    Request {
        path: String,
        headers: http::HeaderMap,
        body: Bytes,
    },
    /// The TLS handshake failed (the client refused our certificate).
    Handshake(String),
}

/// A real HTTPS server on 127.0.0.1: `POST /hook` answers 204, Didit's
/// decision path a JSON decision, `/portrait.jpg` an image.
async fn https_server(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Seen::Handshake(e.to_string()));
                        return;
                    }
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let _ = tx.send(Seen::Request {
                                path: path.clone(),
                                headers: parts.headers,
                                body,
                            });
                            let response = match path.as_str() {
                                "/hook" => http::Response::builder()
                                    .status(204)
                                    .body(Full::new(Bytes::new())),
                                "/v3/session/s-tls/decision/" => http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(DECISION.as_bytes()))),
                                "/portrait.jpg" => http::Response::builder()
                                    .header("content-type", "image/jpeg")
                                    .body(Full::new(Bytes::from_static(PORTRAIT))),
                                _ => http::Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new())),
                            };
                            Ok::<_, std::convert::Infallible>(response.unwrap())
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// The next thing the server saw, within a deadline.
async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("the HTTPS server saw a connection in time")
        .expect("the HTTPS server is running")
}

/// An error and all its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The vectors' approval for `session`, signed now (kycd runs on the
/// system clock here, so that the decision webhook's timestamp is fresh
/// for the verifier).
fn approval(session: &str, subject: &str) -> Value {
    let mut payload = deliveries::approved(session, subject, &format!("D-{session}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    payload["timestamp"] = now.into();
    payload
}

/// kycd sending decision webhooks to `hook`, trusting `ca_bundle`.
fn operator_settings(dir: &tempfile::TempDir, hook: &str, ca_bundle: Option<PathBuf>) -> Settings {
    Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().join("data"),
        webhook_secrets: vec![Secret::new(SECRET)],
        api_token: Some(Secret::new(TOKEN)),
        act_on_sandbox: true,
        operator_webhook_url: Some(hook.to_owned()),
        operator_webhook_secrets: vec![Secret::new(OPERATOR_SECRET)],
        // The endpoint is on loopback.
        operator_webhook_allow_private: true,
        ca_bundle,
        ..Settings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_webhook_behind_a_private_ca_is_delivered_only_with_the_ca_bundle() {
    let pki = pki();
    let (addr, mut seen) = https_server(pki.server.clone()).await;
    let hook = format!("https://127.0.0.1:{}/hook", addr.port());
    let http = reqwest::Client::new();

    // Without the bundle: the handshake fails on kycd's side with
    // UnknownIssuer, and the endpoint's state says so.
    let dir = tempfile::tempdir().unwrap();
    let running = kycd_server::start(operator_settings(&dir, &hook, None), Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let payload = approval("s-untrusted", "u-1");
    assert_eq!(
        deliveries::deliver(&http, &base, SECRET, &payload)
            .await
            .status(),
        200
    );
    match next(&mut seen).await {
        Seen::Handshake(e) => assert!(e.contains("UnknownCA"), "{e}"),
        other => panic!("no request gets through an untrusted handshake: {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let last_error = loop {
        let state: Value = http
            .get(format!("{base}/api/v1/operator-webhook"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(e) = state["last_error"].as_str() {
            break e.to_owned();
        }
        assert!(Instant::now() < deadline, "no failure recorded: {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(last_error.contains("UnknownIssuer"), "{last_error}");
    running.shutdown().await.unwrap();

    // With the bundle: the same endpoint receives the decision, signed.
    let dir = tempfile::tempdir().unwrap();
    let settings = operator_settings(&dir, &hook, Some(pki.ca_file.clone()));
    let running = kycd_server::start(settings, Arc::new(SystemClock))
        .await
        .unwrap();
    let base = format!("http://{}", running.addr);
    let payload = approval("s-trusted", "u-2");
    assert_eq!(
        deliveries::deliver(&http, &base, SECRET, &payload)
            .await
            .status(),
        200
    );
    let (headers, body) = loop {
        match next(&mut seen).await {
            Seen::Request {
                path,
                headers,
                body,
            } if path == "/hook" => break (headers, body),
            // A handshake left over from the first server's retries.
            Seen::Handshake(_) => continue,
            other => panic!("unexpected: {other:?}"),
        }
    };
    standardwebhooks::Webhook::new(OPERATOR_SECRET)
        .unwrap()
        .verify(&body, &headers)
        .expect("the delivery verifies");
    let message: Value = serde_json::from_slice(&body).unwrap();
    // The session's first message (session.updated, then its decision).
    assert!(message["type"].is_string(), "{message}");
    assert_eq!(message["data"]["session_id"], "s-trusted", "{message}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn didit_api_and_media_links_behind_a_private_ca_need_the_ca_bundle() {
    let pki = pki();
    let (addr, mut seen) = https_server(pki.server.clone()).await;
    let settings = Settings {
        didit_api_key: Some(Secret::new("key")),
        didit_base_url: format!("https://127.0.0.1:{}", addr.port()),
        ca_bundle: Some(pki.ca_file.clone()),
        ..Settings::default()
    };
    let bundle = CaBundle::from_settings(&settings).unwrap();
    assert_eq!(bundle.len(), 1);

    // Didit's API.
    let untrusted = kycd_server::didit_client(&settings, &CaBundle::default())
        .unwrap()
        .unwrap();
    let e = untrusted.get_decision("s-tls").await.unwrap_err();
    assert_eq!(e.kind(), "transport", "{e}");
    assert!(chain(&e).contains("UnknownIssuer"), "{}", chain(&e));
    let trusted = kycd_server::didit_client(&settings, &bundle)
        .unwrap()
        .unwrap();
    let decision = trusted.get_decision("s-tls").await.unwrap();
    assert_eq!(decision, serde_json::from_str::<Value>(DECISION).unwrap());
    let saw_request = loop {
        match next(&mut seen).await {
            Seen::Request { path, headers, .. } => break (path, headers),
            Seen::Handshake(_) => continue,
        }
    };
    assert_eq!(saw_request.0, "/v3/session/s-tls/decision/");
    assert_eq!(saw_request.1["x-api-key"], "key");

    // Didit's media links (a step-up's portrait).
    let portrait = format!("https://127.0.0.1:{}/portrait.jpg", addr.port());
    let untrusted = kycd_server::worker::media_client(&CaBundle::default()).unwrap();
    let e = untrusted.get(&portrait).send().await.unwrap_err();
    assert!(chain(&e).contains("UnknownIssuer"), "{}", chain(&e));
    let trusted = kycd_server::worker::media_client(&bundle).unwrap();
    let got = trusted.get(&portrait).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap(), PORTRAIT);
}

#[tokio::test]
async fn a_ca_bundle_that_cannot_be_used_stops_the_start_with_its_path_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "# nothing here\n").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (path, reason) in [
        (dir.path().join("missing.pem"), "cannot read it"),
        (dir.path().to_owned(), "cannot read it"),
        (empty, "holds no PEM certificate"),
        (broken, "certificate 1 is not a valid X.509 certificate"),
    ] {
        let data_dir = dir.path().join("data");
        let settings = Settings {
            listen: "127.0.0.1:0".into(),
            data_dir: data_dir.clone(),
            ca_bundle: Some(path.clone()),
            ..Settings::default()
        };
        let e = match kycd_server::start(settings, Arc::new(SystemClock)).await {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            e.contains("KYCD_CA_BUNDLE")
                && e.contains(&*path.to_string_lossy())
                && e.contains(reason),
            "{e}"
        );
        assert!(!data_dir.exists(), "refused before anything was opened");
    }
}
