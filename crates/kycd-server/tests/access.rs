//! API tokens: created by an admin, scoped, revocable, stored as digests;
//! every denial is a plain 401 or 403.

use std::sync::Arc;

use didit::signature::Secret;
use kycd_core::SystemClock;
use kycd_server::{Running, Settings};
use serde_json::{json, Value};

const BOOTSTRAP: &str = "bootstrap-token-for-access-tests";

async fn server() -> (Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        webhook_secrets: vec![Secret::new("access-secret")],
        api_token: Some(Secret::new(BOOTSTRAP)),
        ..Settings::default()
    };
    let running = kycd_server::start(settings, Arc::new(SystemClock))
        .await
        .unwrap();
    (running, dir)
}

async fn call(
    r: &Running,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(
        method.parse().unwrap(),
        format!("http://{}/api/v1{path}", r.addr),
    );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn mint(r: &Running, scope: &str) -> (String, String) {
    let (status, t) = call(
        r,
        "POST",
        "/tokens",
        Some(BOOTSTRAP),
        Some(json!({"name": format!("{scope} test"), "scope": scope})),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    (
        t["id"].as_str().unwrap().to_owned(),
        t["token"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn scopes_allow_what_they_name_and_nothing_more() {
    let (r, _dir) = server().await;
    let (_, read) = mint(&r, "read").await;
    let (_, review) = mint(&r, "review").await;
    let (_, admin) = mint(&r, "admin").await;

    // read: every GET, no write.
    assert_eq!(call(&r, "GET", "/sessions", Some(&read), None).await.0, 200);
    assert_eq!(call(&r, "GET", "/audit", Some(&read), None).await.0, 200);
    let (status, e) = call(
        &r,
        "PUT",
        "/subjects/u1",
        Some(&read),
        Some(json!({"plan": "pro"})),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(
        call(&r, "POST", "/actions/act_x/retry", Some(&read), None)
            .await
            .0,
        403
    );

    // review: subject writes, not tokens or actions.
    assert_eq!(
        call(
            &r,
            "PUT",
            "/subjects/u1",
            Some(&review),
            Some(json!({"plan": "pro"}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &r,
            "POST",
            "/tokens",
            Some(&review),
            Some(json!({"name": "x", "scope": "read"}))
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(&r, "POST", "/actions/act_x/retry", Some(&review), None)
            .await
            .0,
        403
    );

    // admin: everything.
    assert_eq!(
        call(&r, "POST", "/actions/act_x/retry", Some(&admin), None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(
            &r,
            "POST",
            "/tokens",
            Some(&admin),
            Some(json!({"name": "x", "scope": "read"}))
        )
        .await
        .0,
        201
    );

    // Unknown and missing tokens are 401, and say nothing more.
    let (status, e) = call(&r, "GET", "/sessions", Some("kycd_not_a_token"), None).await;
    assert_eq!(
        (status, e["error"]["message"].as_str()),
        (401, Some("missing or invalid bearer token"))
    );
    assert_eq!(call(&r, "GET", "/sessions", None, None).await.0, 401);
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_revoked_token_stops_working_and_secrets_are_never_listed() {
    let (r, _dir) = server().await;
    let (id, read) = mint(&r, "read").await;
    assert_eq!(call(&r, "GET", "/sessions", Some(&read), None).await.0, 200);

    let (status, listed) = call(&r, "GET", "/tokens", Some(BOOTSTRAP), None).await;
    assert_eq!(status, 200);
    let text = listed.to_string();
    assert!(text.contains(&id) && !text.contains(&read), "{text}");
    assert!(listed["items"][0].get("token").is_none());

    let (status, t) = call(
        &r,
        "DELETE",
        &format!("/tokens/{id}"),
        Some(BOOTSTRAP),
        None,
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert!(t["revoked_at"].is_string());
    assert_eq!(call(&r, "GET", "/sessions", Some(&read), None).await.0, 401);
    assert_eq!(
        call(&r, "DELETE", "/tokens/tok_nope", Some(BOOTSTRAP), None)
            .await
            .0,
        404
    );

    // Bad requests to create one.
    assert_eq!(
        call(
            &r,
            "POST",
            "/tokens",
            Some(BOOTSTRAP),
            Some(json!({"name": "x", "scope": "root"}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        call(
            &r,
            "POST",
            "/tokens",
            Some(BOOTSTRAP),
            Some(json!({"scope": "read"}))
        )
        .await
        .0,
        400
    );

    // Both changes are in the audit trail, by who made them, without the secret.
    let (_, audit) = call(&r, "GET", "/audit", Some(BOOTSTRAP), None).await;
    let records = audit["items"].as_array().unwrap();
    for action in ["token.created", "token.revoked"] {
        let rec = records
            .iter()
            .find(|x| x["action"] == action && x["target"] == id.as_str())
            .unwrap();
        assert_eq!(rec["actor"], "bootstrap");
    }
    assert!(!audit.to_string().contains(&read));
    r.shutdown().await.unwrap();
}

/// The scope comes from the route a request matched, not from the text of
/// its path: `DELETE /tokens/{id}` is an admin route whatever the id, even
/// one that ends like the review route (`/sessions/{id}/review`).
#[tokio::test]
async fn the_scope_is_the_routes_not_the_paths() {
    let (r, _dir) = server().await;
    let (_, review) = mint(&r, "review").await;
    let (_, admin) = mint(&r, "admin").await;
    for path in ["/tokens/review", "/tokens/x%2Fsubjects%2Fy"] {
        let (status, e) = call(&r, "DELETE", path, Some(&review), None).await;
        assert_eq!(status, 403, "{path}: {e}");
        assert_eq!(e["error"]["code"], "forbidden", "{path}");
        // The route exists: an admin gets as far as the handler.
        assert_eq!(call(&r, "DELETE", path, Some(&admin), None).await.0, 404);
    }
    r.shutdown().await.unwrap();
}
