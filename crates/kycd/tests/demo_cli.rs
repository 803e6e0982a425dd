//! `kycd demo` as people run it: one command, no configuration, a summary,
//! and an exit code that says whether every customer was decided.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> (i32, String, String) {
    demo_on(args, None)
}

/// `kycd demo` with `KYCD_DATABASE_URL` set to `database` (else unset).
fn demo_on(args: &[&str], database: Option<&str>) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kycd"));
    command
        .arg("demo")
        .args(args)
        // The demo ignores configuration: none of these may matter.
        .env("KYCD_LISTEN", "not an address")
        .env("KYCD_DATA_DIR", "/nonexistent/kycd-demo-must-not-use-this")
        .env("KYCD_WEBHOOK_SECRETS", "")
        .env("KYCD_POLICY", "/nonexistent/policy.toml")
        .env("KYCD_INSTANCE_ID", "not-one-of-the-demos");
    match database {
        Some(url) => command.env("KYCD_DATABASE_URL", url),
        None => command.env_remove("KYCD_DATABASE_URL"),
    };
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The summary's tables: everything from the outcomes by scenario to the
/// confusion matrix, which the seed fixes (latency and delivery counts,
/// which timing moves, come after).
fn tables(out: &str) -> String {
    out.lines()
        .skip_while(|l| !l.starts_with("Outcomes by scenario"))
        .take_while(|l| !l.starts_with("Webhook to decision"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_demo_decides_every_customer_and_explains_the_result() {
    let (code, out, err) = demo(&["--users", "120", "--seed", "3"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for part in [
        "Outcomes by scenario",
        "clean_approval",
        "fraud approved",
        "eligible genuine, approved",
        "ineligible, declined",
        "right outcome",
        "Friction",
        "step-ups:",
        "Confusion matrix",
        "approve (eligible)",
        "reject (ineligible)",
        "Webhook to decision",
        "duplicated",
        "Every customer reached a decision (120 of 120)",
    ] {
        assert!(out.contains(part), "missing {part:?} in:\n{out}");
    }
    assert!(err.contains("120/120 customers"), "progress: {err}");
}

#[test]
fn the_same_seed_gives_the_same_tables() {
    let (a, out_a, err_a) = demo(&["--users", "60", "--seed", "9"]);
    let (b, out_b, err_b) = demo(&["--users", "60", "--seed", "9"]);
    assert_eq!((a, b), (0, 0), "{out_a}\n{err_a}\n{out_b}\n{err_b}");
    let (ta, tb) = (tables(&out_a), tables(&out_b));
    assert!(ta.contains("Confusion matrix"), "{out_a}");
    // Everything the seed fixes: every scenario's sessions, kycd's final
    // decisions on each (ring members included: the simulator starts a
    // ring's members far enough apart that they finish one after another),
    // the friction on the way (a session's deliveries reach kycd in the
    // order Didit sent them) and the confusion matrix.
    assert_eq!(ta, tb, "first run:\n{out_a}\nsecond run:\n{out_b}");
    for part in ["The policy against the ground truth", "Friction"] {
        assert!(ta.contains(part), "{part}: {ta}");
    }
    let scenarios = ta.lines().skip(2).take_while(|l| !l.is_empty()).count();
    assert!(scenarios > 10, "{ta}");
}

#[test]
fn zero_users_is_refused() {
    let (code, _, err) = demo(&["--users", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--users"), "{err}");
}

#[test]
fn keep_running_leaves_the_engine_up_with_urls_that_work() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["demo", "--users", "20", "--keep-running"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut api, mut token, mut sim) = (None, None, None);
    let (mut console, mut credentials, mut data_dir) = (None, None, None);
    while api.is_none()
        || token.is_none()
        || sim.is_none()
        || credentials.is_none()
        || data_dir.is_none()
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the demo prints its URLs");
        let field = |prefix: &str| {
            line.trim()
                .strip_prefix(prefix)
                .map(|rest| rest.trim().to_owned())
        };
        api = api.or(field("kycd API"));
        token = token.or(field("Authorization: Bearer"));
        sim = sim.or(field("ground truth"));
        console = console.or(field("review console"));
        credentials = credentials.or(field("username"));
        data_dir = data_dir.or(field("data directory").map(|d| directory_of(&d)));
    }
    let data_dir = data_dir.unwrap();
    assert!(data_dir.join("store.db").exists(), "{}", data_dir.display());
    let (api, token, sim) = (api.unwrap(), token.unwrap(), sim.unwrap());
    let console = console.expect("the console's URL comes before its credentials");
    // "demo-reviewer, password SECRET"
    let credentials = credentials.unwrap();
    let (username, password) = credentials.split_once(", password ").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        let sessions = http.get(&api).bearer_auth(&token).send().await.unwrap();
        assert_eq!(sessions.status(), 200);
        let body: serde_json::Value = sessions.json().await.unwrap();
        assert!(body.to_string().contains("Approved"), "{body}");
        let anonymous = http.get(&api).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        // The simulator's API answers too (403 without its key).
        assert_eq!(http.get(&sim).send().await.unwrap().status(), 403);

        // The printed reviewer signs in to the printed console.
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let login = format!("{console}login");
        let form = browser.get(&login).send().await.unwrap();
        assert_eq!(form.status(), 200);
        let cookie = form.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let page = form.text().await.unwrap();
        let at = page.find(r#"name="csrf" value=""#).unwrap() + 19;
        let csrf = page[at..].split('"').next().unwrap();
        let signed_in = browser
            .post(&login)
            .header("cookie", cookie)
            .form(&[
                ("csrf", csrf),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(signed_in.status(), 303);
        assert_eq!(signed_in.headers()["location"], "/console/");
        let session = signed_in.headers()["set-cookie"].to_str().unwrap();
        let session = session.split(';').next().unwrap().to_owned();
        let queue = browser
            .get(&console)
            .header("cookie", session)
            .send()
            .await
            .unwrap();
        assert_eq!(queue.status(), 200);
        assert!(queue
            .text()
            .await
            .unwrap()
            .contains(r#"<table id="queue">"#));
    });
    stop(&mut child, "-INT");
    assert!(
        !data_dir.exists(),
        "the data directory {} outlived the demo",
        data_dir.display()
    );
}

/// The path in `/tmp/kycd-demo-x (removed on exit)`.
fn directory_of(printed: &str) -> std::path::PathBuf {
    let path = printed
        .strip_suffix(" (removed on exit)")
        .unwrap_or(printed);
    std::path::PathBuf::from(path)
}

/// Sends `signal` to the demo and waits for it to exit successfully.
fn stop(child: &mut std::process::Child, signal: &str) {
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on {signal}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keep_running_removes_its_data_directory_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["demo", "--users", "5", "--keep-running"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kept open until the end, so the demo never writes to a closed pipe.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut data_dir = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(d) = line.trim().strip_prefix("data directory") {
            data_dir = Some(directory_of(d.trim()));
            break;
        }
    }
    let data_dir = data_dir.expect("the demo prints its data directory");
    assert!(data_dir.exists());
    stop(&mut child, "-TERM");
    drop(lines);
    assert!(
        !data_dir.exists(),
        "the data directory {} outlived the demo",
        data_dir.display()
    );
}

#[test]
fn the_cluster_demo_needs_a_postgres_url_and_never_shows_it() {
    let (code, _, err) = demo_on(&["--cluster", "--users", "5"], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("--cluster runs on PostgreSQL") && err.contains("KYCD_DATABASE_URL"),
        "{err}"
    );
    let (code, _, err) = demo_on(
        &["--cluster", "--users", "5"],
        Some("mysql://demo:hunter2@db.internal/kycd"),
    );
    assert_eq!(code, 2);
    assert!(err.contains("must be a postgres:// URL"), "{err}");
    assert!(!err.contains("hunter2"), "the URL's password: {err}");
}

/// A runtime for the checks in the database, and the server
/// `KYCD_TEST_POSTGRES_URL` names (`None`, after saying why the test
/// skips, without it).
fn postgres(test: &str) -> Option<(tokio::runtime::Runtime, String)> {
    let url = kycd_log::postgres::testing::url_or_skip(test)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Some((rt, url))
}

/// The rows of the cluster summary's instance table: instance, webhooks,
/// decisions, sessions.
fn instance_rows(out: &str) -> Vec<(String, i64, i64, i64)> {
    out.lines()
        .skip_while(|l| !l.starts_with("Instances ("))
        .skip(2)
        .take_while(|l| l.starts_with("  kycd-"))
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| cells[i].parse::<i64>().unwrap();
            (cells[0].to_owned(), n(1), n(2), n(3))
        })
        .collect()
}

/// `kycd demo --cluster` on the PostgreSQL that `KYCD_TEST_POSTGRES_URL`
/// names, in a schema of its own: three instances decide every customer
/// with the same tables as the embedded demo on the same seed; the
/// instance that projected is stopped half-way and another takes over;
/// the summary's count of decisions per instance is what each decision's
/// `decided_by` says in the database, and both the stopped instance and
/// its successor decided.
#[test]
fn the_cluster_demo_decides_like_the_embedded_one_and_says_which_instance_decided() {
    let Some((rt, url)) = postgres("the_cluster_demo_decides_like_the_embedded_one") else {
        return;
    };
    let schemas = rt.block_on(kycd_log::postgres::testing::Schemas::new(&url));
    let schema = rt.block_on(schemas.schema());
    let database = schemas.url_of(&schema);
    let args = ["--users", "60", "--seed", "9"];
    let (code, out, err) = demo_on(&[&args[..], &["--cluster"]].concat(), Some(&database));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("60/60 customers"), "progress: {err}");
    assert!(err.contains("kycd-1 at http://"), "{err}");
    for part in [
        "Every customer reached a decision (60 of 60)",
        "Webhook to decision",
        "Actions taken",
        "Replay of this run's log with the built-in policy",
        "Instances (3 kycd serve on one PostgreSQL schema",
        "Leases (",
        "partition/0",
        "timers",
    ] {
        assert!(out.contains(part), "missing {part:?} in:\n{out}");
    }
    let (embedded_code, embedded, _) = demo(&args);
    assert_eq!(embedded_code, 0, "{embedded}");
    assert_eq!(
        tables(&out),
        tables(&embedded),
        "cluster:\n{out}\nembedded:\n{embedded}"
    );

    // "Takeover: kycd-N held partition/0 (epoch E) and was stopped ...; kycd-M held ..."
    let takeover = out
        .lines()
        .find_map(|l| l.strip_prefix("Takeover: "))
        .unwrap_or_else(|| panic!("no takeover in:\n{out}"));
    let words: Vec<&str> = takeover.split_whitespace().collect();
    let stopped = words[0];
    let successor = takeover
        .split("; ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_ne!(stopped, successor, "{takeover}");

    let rows = instance_rows(&out);
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["kycd-1", "kycd-2", "kycd-3"], "{out}");
    let total: i64 = out
        .lines()
        .find_map(|l| l.strip_prefix("kycd demo: 60 customers, "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|d| d.strip_suffix(" decisions")?.parse().ok())
        .unwrap_or_else(|| panic!("no decision count in:\n{out}"));
    assert_eq!(rows.iter().map(|r| r.2).sum::<i64>(), total, "{out}");
    for who in [stopped, successor] {
        let row = rows.iter().find(|r| r.0 == who).unwrap();
        assert!(row.2 > 0, "{who} decided nothing:\n{out}");
    }
    // Every instance took webhooks through the front.
    assert!(rows.iter().all(|r| r.1 > 0), "{out}");

    // What the database says: the schema was the given one, and is kept.
    let by: Vec<(Option<String>, i64)> = rt.block_on(async {
        let pool = kycd_log::postgres::schemas::admin(&database).await.unwrap();
        sqlx::query_as(
            "SELECT decided_by, count(*) FROM decisions WHERE NOT shadow
             GROUP BY decided_by ORDER BY decided_by",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    });
    let expected: Vec<(Option<String>, i64)> = rows
        .iter()
        .filter(|r| r.2 > 0)
        .map(|r| (Some(r.0.clone()), r.2))
        .collect();
    assert_eq!(by, expected, "{out}");
    rt.block_on(schemas.drop_all());
}

#[test]
fn the_cluster_demo_makes_its_own_schema_and_drops_it() {
    let Some((rt, url)) = postgres("the_cluster_demo_makes_its_own_schema_and_drops_it") else {
        return;
    };
    let (code, out, err) = demo_on(&["--cluster", "--users", "5"], Some(&url));
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let schema = err
        .split("PostgreSQL schema ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no schema named in: {err}"));
    assert!(schema.starts_with("kycd_demo_"), "{schema}");
    assert!(out.contains("Takeover: "), "{out}");
    let left: i64 = rt.block_on(async {
        let pool = kycd_log::postgres::schemas::admin(&url).await.unwrap();
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
            .bind(schema)
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    assert_eq!(left, 0, "the demo's schema {schema} outlived it");
}

#[test]
fn the_cluster_demo_refuses_a_schema_that_holds_a_kycd_database() {
    let Some((rt, url)) = postgres("the_cluster_demo_refuses_a_schema_that_holds_a_kycd_database")
    else {
        return;
    };
    let schemas = rt.block_on(kycd_log::postgres::testing::Schemas::new(&url));
    // A migrated schema, as a deployment's would be.
    let db = rt.block_on(schemas.database());
    let database = rt.block_on(async {
        let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(db.pool())
            .await
            .unwrap();
        schemas.url_of(&schema)
    });
    let (code, _, err) = demo_on(&["--cluster", "--users", "5"], Some(&database));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already holds a kycd database"), "{err}");
    rt.block_on(schemas.drop_all());
}
