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
