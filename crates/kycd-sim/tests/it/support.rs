//! A recording webhook receiver, a simulator factory and small HTTP helpers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use didit::signature::SignatureHeaders;
use kycd_sim::{Faults, RateLimits, Sim, SimConfig, WebhookVersion};
use serde_json::Value;
use tokio::sync::watch;

pub const API_KEY: &str = "test-api-key";
pub const SECRET: &str = "tno2NTeRC1ZK3sBOYlBJDyEzBVENl3pQ1AcZyAW0xnQ";
/// How long a test waits for the simulator to settle.
pub const SETTLE: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn signature_headers(&self) -> SignatureHeaders {
        SignatureHeaders::from_pairs(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("delivery body is json")
    }
}

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Vec<Received>>>,
    count: Arc<watch::Sender<usize>>,
    answer: Arc<AtomicU16>,
}

/// A webhook receiver that records every request and answers `answer`.
pub struct Receiver {
    addr: SocketAddr,
    shared: Shared,
}

impl Receiver {
    pub async fn start() -> Self {
        Self::answering(200).await
    }

    pub async fn answering(status: u16) -> Self {
        let shared = Shared {
            log: Arc::new(Mutex::new(Vec::new())),
            count: Arc::new(watch::Sender::new(0)),
            answer: Arc::new(AtomicU16::new(status)),
        };
        let app = Router::new()
            .route("/hook", post(record))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().unwrap().clone()
    }
}

async fn record(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    shared.log.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
    });
    shared.count.send_modify(|c| *c += 1);
    StatusCode::from_u16(shared.answer.load(Ordering::SeqCst)).unwrap()
}

pub fn config(seed: u64, time_scale: f64) -> SimConfig {
    SimConfig {
        api_key: API_KEY.to_owned(),
        webhook_secret: SECRET.to_owned(),
        seed,
        time_scale,
        faults: Faults::none(),
        today: Some(time::macros::date!(2026 - 03 - 31)),
        ..SimConfig::default()
    }
}

pub async fn sim(seed: u64, time_scale: f64) -> Sim {
    kycd_sim::start(config(seed, time_scale)).await.unwrap()
}

/// A simulator with these rate limits instead of the default ones.
pub async fn sim_with_limits(seed: u64, time_scale: f64, rate_limits: RateLimits) -> Sim {
    let mut config = config(seed, time_scale);
    config.rate_limits = rate_limits;
    kycd_sim::start(config).await.unwrap()
}

/// A simulator (time scale 1000) with these delivery faults and a v3
/// receiver, after `users` simulated customers have gone through.
pub async fn run_with_faults(seed: u64, faults: Faults, users: usize) -> (Sim, Receiver) {
    let mut config = config(seed, 1000.0);
    config.faults = faults;
    let sim = kycd_sim::start(config).await.unwrap();
    let receiver = v3_receiver(&sim).await;
    sim.run(users);
    sim.wait_settled(SETTLE).await.unwrap();
    (sim, receiver)
}

/// A fresh receiver, registered as the simulator's v3 destination.
pub async fn v3_receiver(sim: &Sim) -> Receiver {
    let receiver = Receiver::start().await;
    sim.add_destination(&receiver.url(), WebhookVersion::V3)
        .unwrap();
    receiver
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A thin API client with the test key.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub bytes: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|_| {
            panic!(
                "not json (status {}): {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
            )
        })
    }

    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .expect("error body has a detail")
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

impl Api {
    pub fn new(sim: &Sim) -> Self {
        Self {
            base: sim.base_url(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Answer {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap().to_vec();
        Answer {
            status,
            headers,
            bytes,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(reqwest::Method::GET, path, None, Some(API_KEY))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(reqwest::Method::POST, path, Some(body), Some(API_KEY))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Answer {
        self.call(reqwest::Method::PATCH, path, Some(body), Some(API_KEY))
            .await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.call(reqwest::Method::DELETE, path, None, Some(API_KEY))
            .await
    }

    /// Creates a session on `workflow_id`; `extra` is merged into the body.
    pub async fn create_session(&self, workflow_id: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({"workflow_id": workflow_id});
        if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
            b.extend(e);
        }
        let answer = self.post("/v3/session/", body).await;
        assert_eq!(
            answer.status,
            201,
            "{}",
            String::from_utf8_lossy(&answer.bytes)
        );
        answer.json()
    }

    /// Creates a session no simulated customer works on.
    pub async fn held_session(&self, workflow_id: &str) -> Value {
        self.create_session(
            workflow_id,
            serde_json::json!({"metadata": {"sim_auto": false}}),
        )
        .await
    }

    /// Creates a session for `vendor_data` whose customer follows `scenario`.
    pub async fn scenario_session(
        &self,
        workflow_id: &str,
        vendor_data: &str,
        scenario: &str,
    ) -> Value {
        self.create_session(
            workflow_id,
            serde_json::json!({"vendor_data": vendor_data, "metadata": {"sim_scenario": scenario}}),
        )
        .await
    }

    pub async fn decision(&self, session_id: &str) -> Value {
        let answer = self
            .get(&format!("/v3/session/{session_id}/decision/"))
            .await;
        assert_eq!(answer.status, 200);
        answer.json()
    }
}

/// Every risk code in a v3 decision, with its log type.
pub fn risks(decision: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Value::Object(map) = decision {
        for value in map.values() {
            for entry in value.as_array().into_iter().flatten() {
                for w in entry["warnings"].as_array().into_iter().flatten() {
                    out.push((
                        w["risk"].as_str().unwrap_or("").to_owned(),
                        w["log_type"].as_str().unwrap_or("").to_owned(),
                    ));
                }
            }
        }
    }
    out
}
