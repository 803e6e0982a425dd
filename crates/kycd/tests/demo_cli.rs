//! `kycd demo` as people run it: one command, no configuration, a summary,
//! and an exit code that says whether every customer was decided.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn demo(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .arg("demo")
        .args(args)
        // The demo ignores configuration: none of these may matter.
        .env("KYCD_LISTEN", "not an address")
        .env("KYCD_DATA_DIR", "/nonexistent/kycd-demo-must-not-use-this")
        .env("KYCD_WEBHOOK_SECRETS", "")
        .env("KYCD_POLICY", "/nonexistent/policy.toml")
        .output()
        .unwrap();
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
