//! `kycd token` and `kycd user` on a data directory.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kycd(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("KYCD_CONFIG")
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
    let added = kycd(
        &dir,
        &[
            "user",
            "add",
            "--username",
            "ada",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    );
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

#[test]
fn file_commands_refuse_a_postgres_deployment_instead_of_writing_files_no_server_reads() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    for args in [
        &["token", "create", "--name", "x", "--scope", "read"][..],
        &["token", "list"][..],
        &["audit", "verify"][..],
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
            said.contains("embedded data directory only"),
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
}
