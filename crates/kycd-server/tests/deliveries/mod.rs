//! Deliveries as Didit sends them, for the tests that feed kycd directly
//! (without the simulator): the vectors' approval re-addressed, and posting
//! a payload signed as Didit signs it.

use didit::canonical::Value as Canon;
use didit::signature::{sign, Secret};
use serde_json::{json, Value};

/// A full v3 approved delivery (the vectors' first case) for another
/// session, subject and document.
pub fn approved(session: &str, subject: &str, document: &str) -> Value {
    let v: Value = didit::testdata::vectors();
    let mut p: Value = serde_json::from_str(v["cases"][0]["body"].as_str().unwrap()).unwrap();
    p["session_id"] = json!(session);
    p["event_id"] = json!(format!("ev-{session}"));
    p["vendor_data"] = json!(subject);
    p["decision"]["session_id"] = json!(session);
    p["decision"]["vendor_data"] = json!(subject);
    p["decision"]["id_verifications"][0]["document_number"] = json!(document);
    p
}

/// POST `payload` to kycd's webhook at `base`, signed with `secret`.
pub async fn deliver(
    http: &reqwest::Client,
    base: &str,
    secret: &str,
    payload: &Value,
) -> reqwest::Response {
    let text = payload.to_string();
    let signed = sign(
        &Secret::new(secret),
        &Canon::parse(text.as_bytes()).unwrap(),
    );
    let mut req = http
        .post(format!("{base}/webhooks/didit"))
        .body(signed.body.clone());
    for (k, v) in &signed.headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap()
}
