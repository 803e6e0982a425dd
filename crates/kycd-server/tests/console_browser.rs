//! The console in a real browser: headless Chromium, driven over WebDriver
//! by Debian's chromedriver, logs in as a reviewer, opens a case the Didit
//! simulator produced, approves it with a comment, and the test checks that
//! the case left the queue, that the decision and Didit's write-back
//! happened (the simulator's API call log is the witness), and that the
//! audit chain verifies. A screenshot of the case page is kept as an
//! artefact under `$CARGO_TARGET_DIR/test-artefacts/` (else the workspace's
//! `target/test-artefacts/`).
//!
//! It needs chromedriver and Chromium: `KYCD_TEST_CHROMEDRIVER` names the
//! driver, `KYCD_TEST_CHROMIUM` the browser (else the driver's default).
//! Without `KYCD_TEST_CHROMEDRIVER` the test prints a notice and passes,
//! except under `CI=true`, where that is a failure. `.ci/chromium.sh`
//! installs both from Debian's packages.
//!
//! ```sh
//! KYCD_TEST_CHROMEDRIVER=/usr/bin/chromedriver KYCD_TEST_CHROMIUM=/usr/bin/chromium \
//!     cargo test -p kycd-server --test console_browser -- --nocapture
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use kycd_log::access::UserInfo;
use kycd_server::Settings;
use kycd_sim::{Faults, WebhookVersion};
use serde_json::Value;

// Not every test file uses every helper (this one runs nothing beside the stack).
#[allow(dead_code)]
mod support;
use support::Stack;

const SECRET: &str = "console-browser-secret";
const REVIEWER: &str = "rita";
const PASSWORD: &str = "correct horse battery staple";
const COMMENT: &str = "Namesake; date of birth differs from the listed person";

/// How long any one browser-visible condition may take.
const STEP: Duration = Duration::from_secs(30);

/// kycd against the simulator, acting on Didit (with an NFC step-up
/// workflow, as in `closing_loop.rs`, so the built-in policy behaves alike).
async fn stack(seed: u64) -> Stack {
    let sim = support::simulator(SECRET, seed, 1000.0, Faults::none()).await;
    let workflows = support::step_up_workflows(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        step_up_workflows: workflows,
        retry_time_scale: 20.0,
        ..support::settings(&sim, SECRET, dir.path().join("data"))
    };
    Stack::start(sim, settings, dir, WebhookVersion::V3).await
}

/// chromedriver on a free loopback port, in its own process group so that
/// the browsers it starts go with it; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(path: &str) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(path);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver {path}: {e}"));
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        // Poll /status until the driver says it is ready.
        let http = reqwest::Client::new();
        let end = Instant::now() + STEP;
        loop {
            if let Some(status) = driver.child.try_wait().unwrap() {
                panic!("chromedriver exited before answering: {status}");
            }
            let ready = match http
                .get(format!("{}/status", driver.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return driver;
            }
            assert!(Instant::now() < end, "chromedriver did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium through the driver.
async fn browser(driver: &Driver, chromium: Option<&str>) -> Client {
    let mut options = serde_json::json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1600",
        ],
    });
    if let Some(binary) = chromium {
        options["binary"] = binary.into();
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Poll the browser's URL until its path (and query) is `want`.
async fn wait_for_path(c: &Client, want: impl Fn(&str, Option<&str>) -> bool, what: &str) {
    let end = Instant::now() + STEP;
    loop {
        let url = c.current_url().await.unwrap();
        if want(url.path(), url.query()) {
            return;
        }
        assert!(Instant::now() < end, "{what}: the browser is at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where test artefacts go: `$CARGO_TARGET_DIR/test-artefacts`, else the
/// workspace's `target/test-artefacts`.
fn artefacts_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
    };
    target.join("test-artefacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reviewer_approves_a_case_in_the_console() {
    let Some(chromedriver) = std::env::var("KYCD_TEST_CHROMEDRIVER")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "KYCD_TEST_CHROMEDRIVER must name chromedriver under CI=true \
                 (.ci/chromium.sh installs Debian's chromium and chromium-driver)"
            );
        }
        eprintln!(
            "note: console_browser skipped: set KYCD_TEST_CHROMEDRIVER (and \
             KYCD_TEST_CHROMIUM) to run the console in headless Chromium"
        );
        return;
    };
    let chromium = std::env::var("KYCD_TEST_CHROMIUM")
        .ok()
        .filter(|p| !p.is_empty());

    // Cases for the queue: kycd said review, Didit says In Review.
    let s = stack(69).await;
    s.sim.run(60);
    s.settle(Duration::from_secs(90)).await;
    let mut in_review = Vec::new();
    for t in s.sim.truth() {
        let doc = s.session(&t.session_id).await;
        if doc.pointer("/decision/outcome").and_then(Value::as_str) == Some("review")
            && t.final_status == "In Review"
        {
            in_review.push(t.session_id.clone());
        }
    }
    assert!(
        !in_review.is_empty(),
        "the simulation left a case in review"
    );

    // A reviewer, straight into the store.
    let app = &s.running.app;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let added = app
        .access
        .add_user(
            UserInfo {
                username: REVIEWER.into(),
                role: "reviewer".into(),
                created_at_ms: now_ms,
            },
            kycd_server::access_api::hash_password(PASSWORD).unwrap(),
        )
        .await
        .unwrap();
    assert!(added);

    let driver = Driver::start(&chromedriver).await;
    let c = browser(&driver, chromium.as_deref()).await;
    let base = format!("http://127.0.0.1:{}", s.running.addr.port());

    // Without a session the console sends the browser to its login page.
    c.goto(&format!("{base}/console/")).await.unwrap();
    wait_for_path(&c, |p, _| p == "/console/login", "redirect to login").await;
    let login = c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("login"))
        .await
        .unwrap();
    login
        .find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(REVIEWER)
        .await
        .unwrap();
    login
        .find(Locator::Css("input[name=password][type=password]"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    login
        .find(Locator::Css("input[name=csrf]"))
        .await
        .expect("the login form carries a CSRF token");
    login
        .find(Locator::Id("login-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for_path(&c, |p, _| p == "/console/", "login lands on the queue").await;

    // The queue shows the case; open it.
    let queue = c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("queue"))
        .await
        .unwrap();
    let total: usize = c
        .find(Locator::Id("queue-total"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim()
        .parse()
        .expect("#queue-total is a number");
    assert!(total >= 1, "the queue counts its cases");
    let mut case = None;
    for row in queue.find_all(Locator::Css("tr.case")).await.unwrap() {
        let id = row.attr("data-session").await.unwrap().unwrap_or_default();
        if in_review.contains(&id) {
            case = Some((id, row));
            break;
        }
    }
    let (case, row) = case.expect("the queue lists a case in review");
    println!("case in review: {case}");
    let link = row.find(Locator::Css("a.case-link")).await.unwrap();
    assert_eq!(
        link.attr("href").await.unwrap().as_deref(),
        Some(format!("/console/cases/{case}").as_str())
    );
    link.click().await.unwrap();
    let case_path = format!("/console/cases/{case}");
    wait_for_path(&c, |p, _| p == case_path, "the case page").await;
    c.wait()
        .at_most(STEP)
        .for_element(Locator::Id("case-title"))
        .await
        .unwrap();
    // The element's text, not its rendering (styles may change its case).
    let shown = c
        .find(Locator::Id("decision-outcome"))
        .await
        .unwrap()
        .prop("textContent")
        .await
        .unwrap()
        .unwrap_or_default();
    assert_eq!(shown.trim(), "review", "the case shows its outcome");

    // The case page as an artefact.
    let dir = artefacts_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = dir.join("console-case.png");
    std::fs::write(&shot, &png).unwrap();
    println!(
        "screenshot of the case page: {}",
        shot.canonicalize().unwrap_or(shot).display()
    );

    // Approve, with a comment.
    let decide = c.find(Locator::Id("decide")).await.unwrap();
    decide
        .find(Locator::Css("select[name=outcome]"))
        .await
        .unwrap()
        .select_by_value("approve")
        .await
        .unwrap();
    decide
        .find(Locator::Css("textarea[name=comment]"))
        .await
        .unwrap()
        .send_keys(COMMENT)
        .await
        .unwrap();
    decide
        .find(Locator::Id("decide-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let decided = format!("decided={case}");
    wait_for_path(
        &c,
        |p, q| p == "/console/" && q.is_some_and(|q| q.split('&').any(|kv| kv == decided)),
        "the decision lands on the queue",
    )
    .await;
    let flash = c
        .wait()
        .at_most(STEP)
        .for_element(Locator::Id("flash"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !flash.trim().is_empty(),
        "the queue says the decision was recorded"
    );
    c.wait()
        .at_most(STEP)
        .for_element(Locator::Id("queue"))
        .await
        .unwrap();
    let still = c
        .find_all(Locator::Css(&format!("tr.case[data-session=\"{case}\"]")))
        .await
        .unwrap();
    assert!(still.is_empty(), "the decided case left the queue");
    c.close().await.unwrap();
    drop(driver);

    // The decision is the reviewer's.
    let doc = s.session(&case).await;
    assert_eq!(doc["decision"]["outcome"], "approve", "{doc}");
    assert_eq!(doc["decision"]["policy_version"], "reviewer", "{doc}");

    // Didit was updated once, to Approved.
    let end = Instant::now() + Duration::from_secs(60);
    while s.changes_of(&case).is_empty() {
        assert!(Instant::now() < end, "no write-back to Didit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.settle(Duration::from_secs(60)).await;
    let changed = s.changes_of(&case);
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0].request["new_status"], "Approved");

    // Audited under the console user, and the chain holds.
    let audit = app.audit.list_audit(0, 0, 1_000_000).await.unwrap();
    let actor = format!("user:{REVIEWER}");
    let rec = audit
        .iter()
        .find(|r| {
            r.action == "decision" && r.target.as_deref() == Some(case.as_str()) && r.actor == actor
        })
        .unwrap_or_else(|| panic!("no decision on {case} audited under {actor}"));
    assert_eq!(rec.details["outcome"], "approve");
    assert_eq!(rec.details["previous_outcome"], "review");
    assert_eq!(rec.details["reasons"][0]["text"], COMMENT);
    let verified = app.audit.verify_audit().await.unwrap();
    assert_eq!(verified.first_broken, None);
    println!(
        "approved {case} in the console: Didit updated once, audit chain of {} records intact",
        verified.records
    );
    s.sim.shutdown().await;
}
