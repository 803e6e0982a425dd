//! `kycd token` and `kycd user` on a data directory, and on PostgreSQL.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kycd(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    kycd_with(data_dir, args, stdin, &[])
}

fn kycd_with(data_dir: &Path, args: &[&str], stdin: Option<&str>, envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("KYCD_CONFIG")
        .env_remove("KYCD_AUDIT_KEY_FILE")
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// `kycd user add` of an admin named ada, her password on stdin.
const ADD_ADA: &[&str] = &[
    "user",
    "add",
    "--username",
    "ada",
    "--role",
    "admin",
    "--password-stdin",
];

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn tokens_are_created_listed_and_revoked() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let made = kycd(
        &dir,
        &["token", "create", "--name", "ci reader", "--scope", "read"],
        None,
    );
    assert!(made.status.success(), "{}", text(&made));
    let secret = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    assert!(secret.starts_with("kycd_") && secret.len() > 60, "{secret}");
    let id = String::from_utf8_lossy(&made.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .unwrap()
        .to_owned();

    let listed = kycd(&dir, &["token", "list"], None);
    let out = text(&listed);
    assert!(
        out.contains(&id) && out.contains("read") && !out.contains(&secret),
        "{out}"
    );

    let revoked = kycd(&dir, &["token", "revoke", &id], None);
    assert!(revoked.status.success(), "{}", text(&revoked));
    assert!(text(&kycd(&dir, &["token", "list"], None)).contains("revoked"));
    assert!(!kycd(&dir, &["token", "revoke", "tok_nope"], None)
        .status
        .success());
    let bad = kycd(
        &dir,
        &["token", "create", "--name", "x", "--scope", "root"],
        None,
    );
    assert!(!bad.status.success() && text(&bad).contains("read, review or admin"));
}

#[test]
fn users_are_added_with_a_hashed_password_from_stdin() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let added = kycd(&dir, ADD_ADA, Some("correct horse battery\n"));
    assert!(added.status.success(), "{}", text(&added));

    // Stored as argon2, without the trailing newline.
    let conn = rusqlite::Connection::open(dir.join("store.db")).unwrap();
    let (role, hash): (String, String) = conn
        .query_row(
            "SELECT role, password_hash FROM users WHERE username = 'ada'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(role, "admin");
    assert!(hash.starts_with("$argon2id$"));
    assert!(kycd_server::access_api::verify_password(
        "correct horse battery",
        &hash
    ));
    assert!(!kycd_server::access_api::verify_password(
        "correct horse battery\n",
        &hash
    ));

    let again = kycd(
        &dir,
        &[
            "user",
            "add",
            "--username",
            "ada",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        Some("another password\n"),
    );
    assert!(!again.status.success() && text(&again).contains("already exists"));
    let role = kycd(
        &dir,
        &[
            "user",
            "add",
            "--username",
            "bob",
            "--role",
            "root",
            "--password-stdin",
        ],
        Some("long enough pw\n"),
    );
    assert!(!role.status.success() && text(&role).contains("admin, reviewer or viewer"));
    let short = kycd(
        &dir,
        &[
            "user",
            "add",
            "--username",
            "bob",
            "--role",
            "viewer",
            "--password-stdin",
        ],
        Some("short\n"),
    );
    assert!(!short.status.success() && text(&short).contains("at least 8"));

    // Each change is audited, and the chain holds.
    let verified = kycd(&dir, &["audit", "verify"], None);
    assert!(
        verified.status.success() && text(&verified).contains("intact: 1 records"),
        "{}",
        text(&verified)
    );
}

/// The secret a `token create` printed, and the token's id.
fn created(made: &Output) -> (String, String) {
    assert!(made.status.success(), "{}", text(made));
    let secret = String::from_utf8_lossy(&made.stdout).trim().to_owned();
    let id = String::from_utf8_lossy(&made.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("tok_"))
        .expect("the token's id")
        .to_owned();
    (secret, id)
}

/// On PostgreSQL the commands work in the database the servers share: a
/// token made there is accepted by a running instance and stops working
/// once revoked, a user lands in the database, each change is audited in
/// the one chain, and no SQLite file is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_tokens_and_users_live_in_the_database_the_servers_share() {
    let Some(url) = kycd_log::postgres::testing::url_or_skip("token and user on PostgreSQL") else {
        return;
    };
    let schemas = kycd_log::postgres::testing::Schemas::new(&url).await;
    let schema = schemas.schema().await;
    let db_url = schemas.url_of(&schema);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let env = [("KYCD_DATABASE_URL", db_url.as_str())];
    // A server first: it makes the schema and the audit key the commands
    // key their records with.
    let server = support::Server::start(
        &dir,
        &root.path().join("serve.log"),
        &[
            ("KYCD_DATABASE_URL", db_url.clone()),
            ("KYCD_INSTANCE_ID", "kycd-a".to_owned()),
        ],
    );
    let client = reqwest::Client::new();
    let sessions = |secret: String| {
        let request = client
            .get(format!("{}/api/v1/sessions", server.base))
            .bearer_auth(secret);
        async move { request.send().await.unwrap().status().as_u16() }
    };

    let made = kycd_with(
        &dir,
        &["token", "create", "--name", "ci reader", "--scope", "read"],
        None,
        &env,
    );
    let (secret, id) = created(&made);
    assert_eq!(
        sessions(secret.clone()).await,
        200,
        "the server accepts the new token"
    );
    let listed = kycd_with(&dir, &["token", "list"], None, &env);
    let out = text(&listed);
    assert!(
        listed.status.success()
            && out.contains(&id)
            && out.contains("read")
            && !out.contains(&secret),
        "{out}"
    );
    let revoked = kycd_with(&dir, &["token", "revoke", &id], None, &env);
    assert!(revoked.status.success(), "{}", text(&revoked));
    assert_eq!(
        sessions(secret).await,
        401,
        "a revoked token stops working at once"
    );
    assert!(text(&kycd_with(&dir, &["token", "list"], None, &env)).contains("revoked"));

    let added = kycd_with(&dir, ADD_ADA, Some("correct horse battery\n"), &env);
    assert!(added.status.success(), "{}", text(&added));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (role, hash): (String, String) = sqlx::query_as(&format!(
        "SELECT role, password_hash FROM \"{schema}\".users WHERE username = 'ada'"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(role, "admin");
    assert!(kycd_server::access_api::verify_password(
        "correct horse battery",
        &hash
    ));

    // Each change is in the one chain, keyed like the server's, and it
    // verifies.
    let actions: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT action FROM \"{schema}\".audit WHERE actor = 'cli' AND alg = 'hmac-sha256' ORDER BY seq"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(actions, ["token.created", "token.revoked", "user.added"]);
    let verified = kycd_with(&dir, &["audit", "verify"], None, &env);
    assert!(
        verified.status.success() && text(&verified).contains("audit chain intact"),
        "{}",
        text(&verified)
    );
    assert!(!dir.join("store.db").exists() && !dir.join("events.db").exists());
    drop(server);
    pool.close().await;
    schemas.drop_all().await;
}

#[test]
fn backup_and_replay_refuse_a_postgres_deployment_instead_of_reading_files_no_server_writes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let to = root.path().join("copy");
    let to = to.to_str().unwrap();
    for args in [
        &["backup", "--to", to][..],
        &["replay", "--policy", "builtin"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
            .args(args)
            .arg("--data-dir")
            .arg(&dir)
            .env_remove("KYCD_CONFIG")
            .env(
                "KYCD_DATABASE_URL",
                "postgres://kycd:hunter2@127.0.0.1:1/kycd",
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = text(&out);
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(
            said.contains("embedded data directory only") && said.contains("pg_dump"),
            "{args:?}: {said}"
        );
        assert!(
            !said.contains("hunter2"),
            "the URL's password never shows: {said}"
        );
        assert!(
            !dir.join("store.db").exists(),
            "{args:?} made a store no server reads"
        );
    }
    // The access commands go to the database instead: unreachable here,
    // they fail saying so, without the password and without a file.
    for args in [
        &["token", "create", "--name", "x", "--scope", "read"][..],
        &["token", "list"][..],
    ] {
        let out = kycd_with(
            &dir,
            args,
            None,
            &[(
                "KYCD_DATABASE_URL",
                "postgres://kycd:hunter2@127.0.0.1:1/kycd",
            )],
        );
        let said = text(&out);
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(said.contains("connect to the database"), "{args:?}: {said}");
        assert!(!said.contains("hunter2"), "{said}");
        assert!(
            !dir.join("store.db").exists(),
            "{args:?} made a SQLite store"
        );
    }
}
