//! Helpers shared by the tests that run the real binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub mod acks;

/// How long `kycd serve` may take to print its address.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(120);

/// A running `kycd serve`, killed when dropped (also when a test panics).
pub struct Server {
    child: Child,
    pub base: String,
    /// The admin listener's base URL, when `KYCD_ADMIN_LISTEN` is set.
    pub admin: Option<String>,
}

impl Server {
    /// Start `kycd serve` on `data_dir` (listening on a free port unless
    /// `envs` sets `KYCD_LISTEN`), with `envs` on top, its log in `log`.
    pub fn start(data_dir: &Path, log: &Path, envs: &[(&str, String)]) -> Server {
        Self::start_with(data_dir, log, envs, |_| {})
    }

    /// [`Server::start`], with `configure` applied to the command first
    /// (resource limits, say).
    pub fn start_with(
        data_dir: &Path,
        log: &Path,
        envs: &[(&str, String)],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let log_file = std::fs::File::create(log).expect("create server log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_kycd"));
        configure(&mut command);
        let mut child = command
            .arg("serve")
            .env("KYCD_LISTEN", "127.0.0.1:0")
            .env("KYCD_DATA_DIR", data_dir)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn kycd serve");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout after the first line so the server can never
        // block on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            // The admin address is printed just before the main one.
            let mut admin = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.trim().strip_prefix("admin listening on ") {
                    admin = Some(url.to_owned());
                } else if let Some(url) = line.trim().strip_prefix("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((url.to_owned(), admin.take()));
                    }
                }
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
            admin: None,
        };
        match rx.recv_timeout(STARTUP_DEADLINE) {
            Ok((url, admin)) => {
                server.base = url.trim_end_matches('/').to_owned();
                server.admin = admin.map(|a| a.trim_end_matches('/').to_owned());
            }
            Err(_) => panic!(
                "kycd serve printed no `listening on` line; its log ends with:\n{}",
                tail(log)
            ),
        }
        server
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, and wait for the graceful stop to finish.
    pub fn terminate(&mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        self.child.wait().expect("reap kycd serve");
    }

    /// SIGKILL: no graceful shutdown, no flush, nothing.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL kycd serve");
        self.child.wait().expect("reap kycd serve");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kycd audit verify --data-dir DIR` with `envs` (and no key or anchor
/// file but what they name): its exit code and what it printed.
pub fn audit_verify<V: AsRef<std::ffi::OsStr>>(
    data_dir: &Path,
    envs: &[(&str, V)],
) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data_dir)
        .env_remove("KYCD_CONFIG")
        .env_remove("KYCD_AUDIT_KEY_FILE")
        .env_remove("KYCD_AUDIT_ANCHOR_FILE")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_ref())))
        .output()
        .expect("run kycd audit verify");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Run `kycd serve` on `dir` with `envs`, expecting it to refuse to start
/// (a broken audit chain, say); the end of its log.
pub fn serve_refused(dir: &Path, log: &Path, envs: &[(&str, String)]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kycd"))
        .arg("serve")
        .env("KYCD_LISTEN", "127.0.0.1:0")
        .env("KYCD_DATA_DIR", dir)
        .env_remove("KYCD_ALLOW_BROKEN_AUDIT")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + STARTUP_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "kycd serve did not refuse a broken chain; its log:\n{}",
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    tail(log)
}

pub fn tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Step-up workflows at the simulator for every check the default policy
/// may ask for, as an operator would set them up: the variables that name
/// them.
pub async fn step_up_workflows(sim: &kycd_sim::Sim) -> Vec<(&'static str, String)> {
    let client = didit::client::DiditClient::new({
        let mut c = didit::client::ClientConfig::new(sim.api_key().to_owned());
        c.base_url = sim.base_url();
        c
    })
    .unwrap();
    let mut envs = Vec::new();
    for (var, nfc) in [
        ("KYCD_STEP_UP_WORKFLOW_NFC", true),
        ("KYCD_STEP_UP_WORKFLOW_PHONE", false),
    ] {
        let mut req = didit::client::CreateWorkflowRequest::new(
            format!("step-up {var}"),
            didit::client::WorkflowType::Kyc,
        );
        req.is_nfc_enabled = Some(nfc);
        req.is_phone_verification_enabled = Some(!nfc);
        let wf = client.create_workflow(&req).await.unwrap();
        envs.push((var, wf.id().unwrap().to_owned()));
    }
    envs.push((
        "KYCD_STEP_UP_WORKFLOW_BIOMETRIC_AUTH",
        sim.biometric_workflow_id().to_owned(),
    ));
    envs
}

/// Calls that changed something at Didit, per (path, session, new status).
pub fn changes(calls: &[kycd_sim::ApiCall]) -> HashMap<(String, String, String), usize> {
    let mut out = HashMap::new();
    for c in calls
        .iter()
        .filter(|c| c.effect == kycd_sim::CallEffect::Changed)
    {
        let status = c.request["new_status"].as_str().unwrap_or("").to_owned();
        let path = if c.path.ends_with("/update-status/") {
            "update-status".to_owned()
        } else {
            c.path.clone()
        };
        *out.entry((path, c.session_id.clone().unwrap_or_default(), status))
            .or_insert(0) += 1;
    }
    out
}
