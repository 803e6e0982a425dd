//! Checks over what a server acknowledged, through its API: every
//! acknowledged event is in the log, and every acknowledged session is
//! projected with each of its events exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// The bearer token the servers under these checks are started with.
pub const API_TOKEN: &str = "test-api-token";

/// One acknowledgement: the session a delivery was for and the event id the
/// server answered with.
#[derive(Clone, Debug)]
pub struct Acked {
    pub session_id: String,
    pub evt_id: String,
}

pub async fn get(client: &reqwest::Client, url: String) -> (u16, Json) {
    let resp = client
        .get(&url)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    let body = resp.json::<Json>().await.unwrap_or(Json::Null);
    (status, body)
}

/// Run `f` over `items` with a few concurrent workers, keeping the order.
pub async fn parallel<T, R, F, Fut>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    let n = items.len();
    let queue = Arc::new(Mutex::new(items.into_iter().enumerate()));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (queue, f) = (queue.clone(), f.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some((i, item)) = queue.lock().unwrap().next() else {
                    break;
                };
                out.push((i, f(item).await));
            }
            out
        }));
    }
    let mut results: Vec<Option<R>> = (0..n).map(|_| None).collect();
    for w in workers {
        for (i, r) in w.await.expect("worker panicked") {
            results[i] = Some(r);
        }
    }
    results.into_iter().map(|r| r.unwrap()).collect()
}

/// Every acknowledged event is readable by its id, for its session.
pub async fn every_ack_is_in_the_log(client: &reqwest::Client, base: &Arc<String>, acks: &[Acked]) {
    let (client, base) = (client.clone(), base.clone());
    let results = parallel(acks.to_vec(), move |ack| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let got = get(&client, format!("{base}/api/v1/events/{}", ack.evt_id)).await;
            (ack, got)
        }
    })
    .await;
    for (ack, (status, body)) in results {
        assert_eq!(
            status, 200,
            "acknowledged {} is not in the log: {body}",
            ack.evt_id
        );
        assert_eq!(body["id"], ack.evt_id.as_str(), "{body}");
        assert_eq!(body["session_id"], ack.session_id.as_str(), "{body}");
    }
}

/// Poll until every acknowledged session is projected with each of its
/// acknowledged events in its history; an event listed twice fails at
/// once. Returns how many sessions had more than one acknowledged event.
pub async fn every_acked_session_holds_its_events_once(
    client: &reqwest::Client,
    base: &Arc<String>,
    acks: &[Acked],
    deadline: Duration,
) -> usize {
    let mut expected: HashMap<String, HashSet<String>> = HashMap::new();
    for ack in acks {
        expected
            .entry(ack.session_id.clone())
            .or_default()
            .insert(ack.evt_id.clone());
    }
    let several = expected.values().filter(|e| e.len() > 1).count();
    let deadline = Instant::now() + deadline;
    let mut pending: Vec<String> = expected.keys().cloned().collect();
    let mut last: HashMap<String, (u16, Json)> = HashMap::new();
    while !pending.is_empty() {
        let (c, b) = (client.clone(), base.clone());
        let results = parallel(pending, move |sid| {
            let (client, base) = (c.clone(), b.clone());
            async move {
                let got = get(&client, format!("{base}/api/v1/sessions/{sid}")).await;
                (sid, got)
            }
        })
        .await;
        pending = Vec::new();
        for (sid, (status, body)) in results {
            if status == 200 && history_complete(&sid, &body, &expected[&sid]) {
                continue;
            }
            assert!(
                status == 200 || status == 404,
                "GET session {sid}: {status} {body}"
            );
            last.insert(sid.clone(), (status, body));
            pending.push(sid);
        }
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged sessions not fully projected in time, e.g. {:?}",
            pending.len(),
            last.get(&pending[0])
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    several
}

/// Whether the session's history lists every expected event; panics if it
/// lists any event more than once.
fn history_complete(sid: &str, body: &Json, expected: &HashSet<String>) -> bool {
    assert_eq!(body["session_id"], sid, "{body}");
    let history = body["history"]
        .as_array()
        .unwrap_or_else(|| panic!("session {sid} has no history array: {body}"));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for entry in history {
        let evt = entry["event"]
            .as_str()
            .unwrap_or_else(|| panic!("history entry without event: {body}"));
        *seen.entry(evt).or_default() += 1;
    }
    if let Some((evt, n)) = seen.iter().find(|(_, n)| **n > 1) {
        panic!("session {sid} lists {evt} {n} times: {body}");
    }
    expected.iter().all(|e| seen.contains_key(e.as_str()))
}
