//! Redriving a dead write-back must never undo a later one: once a newer
//! status write-back exists for the session, the older one is superseded
//! and `POST /actions/{id}/retry` refuses it (409), leaving it dead.

use std::sync::Arc;

use didit::signature::Secret;
use kycd_core::SystemClock;
use kycd_log::outbox::Outbox;
use kycd_log::outbox::{ActionState, Finish, Holder, NewAction};
use kycd_log::store::{ProjectionBatch, SqliteStore, Store};
use kycd_server::{Running, Settings};
use serde_json::{json, Value};

const TOKEN: &str = "redrive-test-token";
/// A day ahead: the server's own workers, on the real clock, never find
/// these actions due; the test ran them on its own clock.
const LATER_MS: i64 = 86_400_000;

/// A server on `dir`, whose store already holds what [`run_to`] wrote.
async fn server(dir: &tempfile::TempDir) -> Running {
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        webhook_secrets: vec![Secret::new("redrive-secret")],
        api_token: Some(Secret::new(TOKEN)),
        ..Settings::default()
    };
    kycd_server::start(settings, Arc::new(SystemClock))
        .await
        .unwrap()
}

async fn retry(r: &Running, id: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/actions/{id}/retry", r.addr))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn write_back(session: &str, decision: &str, status: &str, at_ms: i64) -> NewAction {
    NewAction {
        idempotency_key: format!("update_status:{decision}"),
        kind: "didit.update_status".into(),
        session_id: Some(session.into()),
        decision_id: Some(decision.into()),
        payload: json!({"session_id": session, "new_status": status}),
        created_at_ms: at_ms,
    }
}

/// Enqueue `actions` (in order) in the store of `dir` and run each to
/// `finishes`, as a worker would: claimed at the head of the session's
/// lane, then finished. Done before the server starts, whose single
/// process hands back every running claim at its start.
async fn run_to(
    dir: &tempfile::TempDir,
    actions: Vec<NewAction>,
    finishes: Vec<Finish>,
) -> Vec<String> {
    let store = SqliteStore::open(&dir.path().join("store.db"), false).unwrap();
    let now = actions.iter().map(|a| a.created_at_ms).max().unwrap();
    let from = store.consumer_offset("redrive-test").await.unwrap();
    store
        .commit(
            "redrive-test",
            from,
            from + 1,
            ProjectionBatch {
                actions,
                ..ProjectionBatch::default()
            },
        )
        .await
        .unwrap();
    let holder = Holder::new("redrive-test", 1);
    let mut ids = Vec::new();
    for finish in finishes {
        let claimed = store
            .claim(&holder, now, 60_000, 1, Vec::new())
            .await
            .unwrap();
        let a = &claimed[0];
        assert!(store.finish(&a.id, a.attempts, finish, now).await.unwrap());
        ids.push(a.id.clone());
    }
    ids
}

#[tokio::test]
async fn a_dead_write_back_superseded_by_a_later_one_is_not_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let at = kycd_core::clock::Clock::now_millis(&SystemClock) + LATER_MS;
    let ids = run_to(
        &dir,
        vec![
            write_back("s-1", "dec-1", "Declined", at),
            write_back("s-1", "dec-2", "Approved", at + 1),
        ],
        vec![
            Finish::Dead("Didit refused".into()),
            Finish::Done(json!({})),
        ],
    )
    .await;
    let r = server(&dir).await;
    let (status, body) = retry(&r, &ids[0]).await;
    assert_eq!(status, 409, "{body}");
    let message = body.to_string();
    assert!(message.contains(&ids[1]), "names the later one: {message}");
    let a = r.app.outbox.get_action(&ids[0]).await.unwrap().unwrap();
    assert_eq!(a.state, ActionState::Dead, "left as it was");
    r.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_latest_dead_write_back_is_redriven() {
    let dir = tempfile::tempdir().unwrap();
    let at = kycd_core::clock::Clock::now_millis(&SystemClock) + LATER_MS;
    let ids = run_to(
        &dir,
        vec![
            write_back("s-2", "dec-1", "Declined", at),
            write_back("s-2", "dec-2", "Approved", at + 1),
        ],
        vec![
            Finish::Done(json!({})),
            Finish::Dead("Didit refused".into()),
        ],
    )
    .await;
    // Another session's write-backs do not supersede this one's (run
    // first: once redriven, an action is due for the server's worker).
    let other = run_to(
        &dir,
        vec![write_back("s-3", "dec-3", "Declined", at + 2)],
        vec![Finish::Dead("Didit refused".into())],
    )
    .await;
    let r = server(&dir).await;
    let (status, body) = retry(&r, &ids[1]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(retry(&r, &other[0]).await.0, 200);
    r.shutdown().await.unwrap();
}
