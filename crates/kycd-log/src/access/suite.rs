//! The conformance suite every [`Access`] backend runs.
//!
//! [`run_access_suite`] takes a function that makes a fresh, empty backend;
//! each check gets its own. The checks use the trait only; they never
//! sleep to wait for work, and each runs under a deadline.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{Access, ConsoleSession, LoginAttempt, Scope, TokenInfo, UserInfo};
use crate::suite::run_checks;

/// Run every check, each against a fresh backend from `make`.
pub async fn run_access_suite<S, F, Fut>(make: F)
where
    S: Access,
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<S>>,
{
    run_checks!(
        "access",
        make,
        [
            tokens_are_found_by_digest_listed_and_revoked_once,
            a_token_digest_is_refused_twice,
            users_are_added_once_and_listed_by_name,
            sign_in_attempts_lock_at_the_threshold_and_a_lock_runs_out,
            a_console_sign_in_lives_until_it_expires_or_is_deleted,
            concurrent_failed_sign_ins_all_count,
        ]
    );
}

fn token(id: &str, scope: Scope, at: i64) -> TokenInfo {
    TokenInfo {
        id: id.to_owned(),
        name: format!("{id} for CI"),
        scope,
        created_at_ms: at,
        revoked_at_ms: None,
    }
}

fn user(name: &str, role: &str, at: i64) -> UserInfo {
    UserInfo {
        username: name.to_owned(),
        role: role.to_owned(),
        created_at_ms: at,
    }
}

async fn tokens_are_found_by_digest_listed_and_revoked_once<S: Access>(s: Arc<S>) {
    assert!(s.list_tokens().await.expect("list").is_empty());
    s.create_token(token("tok_b", Scope::Admin, 20), "digest-b".into())
        .await
        .expect("create");
    s.create_token(token("tok_a", Scope::Read, 10), "digest-a".into())
        .await
        .expect("create");
    s.create_token(token("tok_c", Scope::Review, 20), "digest-c".into())
        .await
        .expect("create");
    assert_eq!(
        s.token_by_digest("digest-b").await.expect("by digest"),
        Some(token("tok_b", Scope::Admin, 20)),
        "found by digest, with its scope"
    );
    assert_eq!(
        s.token_by_digest("tok_b").await.expect("by digest"),
        None,
        "not by id"
    );
    assert_eq!(
        s.token_by_digest("digest-x").await.expect("by digest"),
        None
    );
    let ids: Vec<String> = s
        .list_tokens()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["tok_a", "tok_b", "tok_c"], "oldest first, then by id");

    let revoked = s.revoke_token("tok_b", 50).await.expect("revoke");
    assert_eq!(revoked.as_ref().and_then(|t| t.revoked_at_ms), Some(50));
    let again = s.revoke_token("tok_b", 60).await.expect("revoke");
    assert_eq!(
        again.and_then(|t| t.revoked_at_ms),
        Some(50),
        "revoking twice keeps the first time"
    );
    assert_eq!(
        s.token_by_digest("digest-b").await.expect("by digest"),
        revoked,
        "a revoked token is still found, marked revoked"
    );
    assert_eq!(s.revoke_token("tok_x", 50).await.expect("revoke"), None);
    let untouched = s.token_by_digest("digest-a").await.expect("by digest");
    assert_eq!(
        untouched.and_then(|t| t.revoked_at_ms),
        None,
        "only that token"
    );
}

async fn a_token_digest_is_refused_twice<S: Access>(s: Arc<S>) {
    s.create_token(token("tok_a", Scope::Read, 10), "same".into())
        .await
        .expect("create");
    assert!(
        s.create_token(token("tok_b", Scope::Admin, 11), "same".into())
            .await
            .is_err(),
        "a second token with the same digest is refused"
    );
    assert_eq!(
        s.token_by_digest("same")
            .await
            .expect("by digest")
            .map(|t| t.scope),
        Some(Scope::Read),
        "the refused token changed nothing"
    );
    assert_eq!(s.list_tokens().await.expect("list").len(), 1);
}

async fn users_are_added_once_and_listed_by_name<S: Access>(s: Arc<S>) {
    assert!(s.list_users().await.expect("list").is_empty());
    assert!(s
        .add_user(user("rita", "reviewer", 1), "hash-r".into())
        .await
        .expect("add"));
    assert!(s
        .add_user(user("adam", "admin", 2), "hash-a".into())
        .await
        .expect("add"));
    assert!(
        !s.add_user(user("rita", "admin", 3), "hash-other".into())
            .await
            .expect("add"),
        "a taken username is refused"
    );
    assert_eq!(
        s.list_users().await.expect("list"),
        [user("adam", "admin", 2), user("rita", "reviewer", 1)],
        "by username; the refused add changed nothing"
    );
    assert_eq!(
        s.user_credentials("rita").await.expect("credentials"),
        Some((user("rita", "reviewer", 1), "hash-r".to_owned()))
    );
    assert_eq!(
        s.user_credentials("Rita").await.expect("credentials"),
        None,
        "exact names"
    );
    assert_eq!(
        s.user_credentials("nobody").await.expect("credentials"),
        None
    );
}

async fn sign_in_attempts_lock_at_the_threshold_and_a_lock_runs_out<S: Access>(s: Arc<S>) {
    let allowed = |locks| LoginAttempt::Allowed { locks };
    for (now, expected) in [
        (100, allowed(false)),
        (101, allowed(false)),
        (102, allowed(true)),
    ] {
        assert_eq!(
            s.begin_login("rita", now, 3, 1_000).await.expect("begin"),
            expected,
            "attempt at {now}"
        );
    }
    assert_eq!(
        s.begin_login("rita", 103, 3, 1_000).await.expect("begin"),
        LoginAttempt::Locked { until_ms: 1_102 },
        "paused from the third attempt for lock_ms"
    );
    assert_eq!(
        s.begin_login("rita", 1_101, 3, 1_000).await.expect("begin"),
        LoginAttempt::Locked { until_ms: 1_102 },
        "an attempt while paused does not extend the pause"
    );
    assert_eq!(
        s.begin_login("someone-else", 103, 3, 1_000)
            .await
            .expect("begin"),
        allowed(false),
        "per username, existing or not"
    );
    assert_eq!(
        s.begin_login("rita", 1_102, 3, 1_000).await.expect("begin"),
        allowed(false),
        "a lock that ran out starts the count again"
    );
    assert_eq!(
        s.begin_login("rita", 1_103, 3, 1_000).await.expect("begin"),
        allowed(false)
    );
    assert_eq!(
        s.begin_login("rita", 1_104, 3, 1_000).await.expect("begin"),
        allowed(true)
    );
    assert!(matches!(
        s.begin_login("rita", 1_105, 3, 1_000).await.expect("begin"),
        LoginAttempt::Locked { .. }
    ));
    assert!(
        s.clear_login("rita").await.expect("clear"),
        "an unlock lifts the pause"
    );
    assert!(
        !s.clear_login("rita").await.expect("clear"),
        "nothing left to lift"
    );
    assert!(!s.clear_login("never-tried").await.expect("clear"));
    assert_eq!(
        s.begin_login("rita", 1_106, 3, 1_000).await.expect("begin"),
        allowed(false),
        "counted from zero after an unlock"
    );

    // A successful sign-in clears the attempts before it.
    assert!(s
        .add_user(user("adam", "admin", 1), "hash".into())
        .await
        .expect("add"));
    for now in [2_000, 2_001] {
        assert_eq!(
            s.begin_login("adam", now, 3, 1_000).await.expect("begin"),
            allowed(false)
        );
    }
    s.create_console_session("cookie-digest".into(), console("adam", 2_002, 10_000))
        .await
        .expect("sign in");
    assert_eq!(
        s.begin_login("adam", 2_003, 3, 1_000).await.expect("begin"),
        allowed(false),
        "a success forgets the failures before it"
    );
    assert_eq!(
        s.begin_login("adam", 2_004, 3, 1_000).await.expect("begin"),
        allowed(false)
    );
}

fn console(username: &str, at: i64, expires: i64) -> ConsoleSession {
    ConsoleSession {
        username: username.to_owned(),
        role: "ignored: the user's current role is read".into(),
        csrf: format!("csrf-{at}"),
        created_at_ms: at,
        expires_at_ms: expires,
    }
}

async fn a_console_sign_in_lives_until_it_expires_or_is_deleted<S: Access>(s: Arc<S>) {
    assert!(s
        .add_user(user("rita", "reviewer", 1), "hash".into())
        .await
        .expect("add"));
    s.create_console_session("d1".into(), console("rita", 100, 1_000))
        .await
        .expect("sign in");
    s.create_console_session("d2".into(), console("rita", 200, 5_000))
        .await
        .expect("second sign-in");
    let live = s.console_session("d1", 999).await.expect("session");
    assert_eq!(
        live,
        Some(ConsoleSession {
            role: "reviewer".into(),
            ..console("rita", 100, 1_000)
        }),
        "with the user's role"
    );
    assert_eq!(
        s.console_session("d1", 1_000).await.expect("session"),
        None,
        "expired at expires_at_ms"
    );
    assert_eq!(
        s.console_session("unknown", 100).await.expect("session"),
        None
    );
    assert!(
        s.console_session("d2", 1_000)
            .await
            .expect("session")
            .is_some(),
        "sign-ins are separate"
    );
    s.delete_console_session("d2").await.expect("sign out");
    assert_eq!(
        s.console_session("d2", 1_000).await.expect("session"),
        None,
        "signed out"
    );
    s.delete_console_session("d2")
        .await
        .expect("signing out twice is fine");
    s.delete_console_session("unknown")
        .await
        .expect("signing out of nothing is fine");

    // A sign-in of a user who does not exist (any longer) is no sign-in.
    s.create_console_session("ghost".into(), console("ghost", 100, 5_000))
        .await
        .expect("sign in");
    assert_eq!(
        s.console_session("ghost", 200).await.expect("session"),
        None
    );
}

/// Many failed sign-ins for one user at once: every one counts, so the
/// lockout engages at the threshold, not later.
async fn concurrent_failed_sign_ins_all_count<S: Access>(s: Arc<S>) {
    const ATTEMPTS: usize = 40;
    const MAX: u32 = 5;
    let mut tasks = JoinSet::new();
    for _ in 0..ATTEMPTS {
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            s.begin_login("rita", 1_000, MAX, 60_000)
                .await
                .expect("begin")
        });
    }
    let (mut checked, mut last, mut locked) = (0, 0, 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("sign-in task") {
            LoginAttempt::Allowed { locks: false } => checked += 1,
            LoginAttempt::Allowed { locks: true } => last += 1,
            LoginAttempt::Locked { until_ms } => {
                assert_eq!(until_ms, 61_000);
                locked += 1;
            }
        }
    }
    assert_eq!(
        (checked, last, locked),
        (MAX as usize - 1, 1, ATTEMPTS - MAX as usize),
        "exactly max_attempts passwords are checked, the last of them locking"
    );
    assert_eq!(
        s.begin_login("rita", 2_000, MAX, 60_000)
            .await
            .expect("begin"),
        LoginAttempt::Locked { until_ms: 61_000 }
    );
}
