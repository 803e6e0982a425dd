//! The conformance suite every [`Audit`] backend runs.
//!
//! [`run_audit_suite`] takes a function that makes a fresh, empty backend
//! (keyed or not, as the backend is run); each check gets its own. The
//! backend is also a [`Store`], because a projection's commit carries the
//! audit records of its decisions in the same chain. The checks use the
//! traits only; they never sleep to wait for work, and each runs under a
//! deadline.

use std::future::Future;
use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;

use super::{Audit, AuditRecord, NewAudit, GENESIS};
use crate::store::{ProjectionBatch, Store, StoreError};
use crate::suite::run_checks;

/// Run every check, each against a fresh backend from `make`.
pub async fn run_audit_suite<S, F, Fut>(make: F)
where
    S: Store + Audit,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    run_checks!(
        "audit",
        make,
        [
            an_empty_chain_verifies,
            appended_records_chain_in_order_and_verify,
            list_audit_filters_by_time_and_pages_by_seq,
            a_commit_chains_its_records_and_a_refused_commit_appends_none,
            concurrent_appends_make_one_chain,
        ]
    );
}

/// A record numbered `n` by `actor`.
pub fn record(actor: &str, n: u64) -> NewAudit {
    NewAudit {
        at_ms: 1_000 + i64::try_from(n).unwrap_or(0),
        actor: actor.to_owned(),
        action: "decision".into(),
        target: if n.is_multiple_of(2) {
            Some(format!("sess-{n}"))
        } else {
            None
        },
        details: json!({ "n": n, "rules": ["aml_hit"], "s": "\u{0}\"q\" ✓" }),
    }
}

async fn all<S: Audit + ?Sized>(s: &S) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r.seq);
        let page = s
            .list_audit(i64::MIN, after, 100)
            .await
            .expect("list audit");
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The chain is one chain: sequence numbers 1, 2, 3, ... with no gap,
/// the first linked to [`GENESIS`] and each to the one before, and the
/// backend's own verification agrees, naming the newest record as head.
async fn assert_one_chain<S: Audit + ?Sized>(s: &S, expected: u64) -> Vec<AuditRecord> {
    let records = all(s).await;
    assert_eq!(
        records.len() as u64,
        expected,
        "every record is stored once"
    );
    let mut prev = GENESIS.to_owned();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(
            r.seq,
            i as u64 + 1,
            "sequence numbers are consecutive from 1"
        );
        assert_eq!(
            r.prev_hash, prev,
            "record {} links to the one before (no fork)",
            r.seq
        );
        assert_ne!(r.hash, r.prev_hash);
        prev = r.hash.clone();
    }
    let algs: std::collections::HashSet<&str> = records.iter().map(|r| r.alg.as_str()).collect();
    assert!(
        algs.len() <= 1,
        "one backend writes one algorithm: {algs:?}"
    );
    let v = s.verify_audit().await.expect("verify");
    assert_eq!(v.problem, None, "the chain verifies: {:?}", v.first_broken);
    assert_eq!(v.first_broken, None);
    assert_eq!(v.records, expected, "verification checks every record");
    assert_eq!(
        v.head.as_ref().map(|h| (h.seq, h.mac.clone())),
        records.last().map(|r| (r.seq, r.hash.clone())),
        "the head is the newest record"
    );
    assert!(
        !s.audit_chain_broken(),
        "a chain that verifies is not known broken"
    );
    records
}

async fn an_empty_chain_verifies<S: Store + Audit>(s: Arc<S>) {
    assert_one_chain(&*s, 0).await;
    let v = s.verify_audit().await.expect("verify");
    assert_eq!(v.head, None);
    assert_eq!(v.keyed_from, None);
    s.audit(vec![]).await.expect("append nothing");
    assert_one_chain(&*s, 0).await;
}

async fn appended_records_chain_in_order_and_verify<S: Store + Audit>(s: Arc<S>) {
    let first: Vec<NewAudit> = (1..=3).map(|n| record("api", n)).collect();
    s.audit(first.clone()).await.expect("audit");
    s.audit(vec![record("operator", 4)]).await.expect("audit");
    let records = assert_one_chain(&*s, 4).await;
    assert_eq!(
        records[0].prev_hash, GENESIS,
        "the first record links to GENESIS"
    );
    let sent: Vec<NewAudit> = first.into_iter().chain([record("operator", 4)]).collect();
    for (r, new) in records.iter().zip(&sent) {
        assert_eq!(
            (r.at_ms, &r.actor, &r.action, &r.target, &r.details),
            (
                new.at_ms,
                &new.actor,
                &new.action,
                &new.target,
                &new.details
            ),
            "record {} round-trips in append order",
            r.seq
        );
    }
    let v = s.verify_audit().await.expect("verify");
    if records[0].alg == super::ALG_HMAC {
        assert_eq!(
            v.keyed_from,
            Some(1),
            "a keyed chain is keyed from its first record"
        );
    }
}

async fn list_audit_filters_by_time_and_pages_by_seq<S: Store + Audit>(s: Arc<S>) {
    // Times out of order: the list is by sequence, the filter by time.
    let mut records: Vec<NewAudit> = (1..=6).map(|n| record("api", n)).collect();
    records[4].at_ms = 1_002;
    s.audit(records).await.expect("audit");
    let seqs = |page: Vec<AuditRecord>| page.iter().map(|r| r.seq).collect::<Vec<_>>();
    let list = |since, after, limit| {
        let s = Arc::clone(&s);
        async move { s.list_audit(since, after, limit).await.expect("list") }
    };
    assert_eq!(
        seqs(list(i64::MIN, 0, 100).await),
        [1, 2, 3, 4, 5, 6],
        "oldest first"
    );
    assert_eq!(seqs(list(i64::MIN, 0, 2).await), [1, 2], "at most limit");
    assert_eq!(
        seqs(list(i64::MIN, 2, 2).await),
        [3, 4],
        "after_seq is exclusive"
    );
    assert_eq!(seqs(list(i64::MIN, 6, 10).await), Vec::<u64>::new());
    assert_eq!(
        seqs(list(1_003, 0, 100).await),
        [3, 4, 6],
        "since_ms is inclusive and applies to each record's time"
    );
    assert_eq!(seqs(list(1_003, 3, 1).await), [4]);
    assert!(
        list(i64::MIN, 0, 0).await.is_empty(),
        "a limit of 0 lists nothing"
    );
    assert!(list(i64::MAX, 0, 10).await.is_empty());
}

async fn a_commit_chains_its_records_and_a_refused_commit_appends_none<S: Store + Audit>(
    s: Arc<S>,
) {
    s.audit(vec![record("api", 1)]).await.expect("audit");
    let batch = |n: u64| ProjectionBatch {
        audit: vec![record("kycd:policy", n), record("kycd:policy", n + 1)],
        ..ProjectionBatch::default()
    };
    s.commit("p", 0, 5, batch(2)).await.expect("commit");
    let refused = s.commit("p", 0, 6, batch(4)).await;
    assert!(
        matches!(refused, Err(StoreError::OffsetConflict { .. })),
        "a second commit from the same offset is refused: {refused:?}"
    );
    s.audit(vec![record("api", 6)]).await.expect("audit");
    let records = assert_one_chain(&*s, 4).await;
    let actors: Vec<&str> = records.iter().map(|r| r.actor.as_str()).collect();
    assert_eq!(
        actors,
        ["api", "kycd:policy", "kycd:policy", "api"],
        "a commit's records join the one chain; the refused commit's do not"
    );
}

/// K tasks append n records each, concurrently, alone and through
/// projection commits of their own consumers: one chain of K×n records.
async fn concurrent_appends_make_one_chain<S: Store + Audit>(s: Arc<S>) {
    const TASKS: u64 = 8;
    const EACH: u64 = 12;
    let mut tasks = JoinSet::new();
    for k in 0..TASKS {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            let actor = format!("task-{k}");
            let mut offset = 0;
            for n in 0..EACH {
                if k % 2 == 0 {
                    s.audit(vec![record(&actor, n)]).await.expect("audit");
                } else {
                    // Odd tasks append through their own projector's commits.
                    let batch = ProjectionBatch {
                        audit: vec![record(&actor, n)],
                        ..ProjectionBatch::default()
                    };
                    s.commit(&actor, offset, offset + 1, batch)
                        .await
                        .expect("commit");
                    offset += 1;
                }
                tokio::task::yield_now().await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("append task");
    }
    let records = assert_one_chain(&*s, TASKS * EACH).await;
    for k in 0..TASKS {
        let actor = format!("task-{k}");
        let mine: Vec<u64> = records
            .iter()
            .filter(|r| r.actor == actor)
            .map(|r| r.details["n"].as_u64().expect("n"))
            .collect();
        assert_eq!(
            mine,
            (0..EACH).collect::<Vec<_>>(),
            "{actor}'s records, each once, in its order"
        );
    }
}
