//! The conventions operators check first, on the built binary: `--version`
//! (version, git revision, backends), shell completions, the log (JSON
//! lines with `KYCD_LOG_FORMAT=json`, no colour codes into a pipe,
//! `RUST_LOG` honoured), `config check` printing TOML that reads back
//! as the same configuration, and refusing a CA bundle it cannot use.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::Server;

fn kycd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kycd"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().expect("run kycd");
    assert!(
        out.status.success(),
        "kycd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

#[test]
fn version_names_the_crate_version_a_revision_and_the_backends() {
    let text = stdout(&run(kycd().arg("--version")));
    let line = text.trim();
    assert!(
        line.starts_with(&format!("kycd {} (", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    let revision = line
        .split("revision ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no revision in {line:?}"));
    // The build script's value, which a packager may set.
    assert_eq!(revision, env!("KYCD_GIT_REVISION"));
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.git");
    if checkout.exists() && std::env::var_os("KYCD_GIT_REVISION").is_none() {
        let hash = revision.strip_suffix("-dirty").unwrap_or(revision);
        assert!(
            hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
            "a checkout's revision is 12 hex digits (and -dirty): {revision:?}"
        );
    }
    assert!(
        line.contains(
            "backends: event-log:sqlite, event-log:postgres, store:sqlite, store:postgres"
        ),
        "{line}"
    );
    // -V says the same.
    assert_eq!(stdout(&run(kycd().arg("-V"))).trim(), line);
}

/// `bash`, named by `KYCD_TEST_BASH` or found on PATH. Missing: skipped
/// with a note, except under CI=true, where it fails.
fn bash() -> Option<String> {
    let named = std::env::var("KYCD_TEST_BASH")
        .ok()
        .filter(|p| !p.is_empty());
    let found = named.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("bash"))
            .find(|p| p.is_file())
            .map(|p| p.to_string_lossy().into_owned())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "bash is needed under CI=true (or KYCD_TEST_BASH naming it)"
        );
        eprintln!("note: bash not found: the bash completion script is not syntax-checked");
    }
    found
}

#[test]
fn completions_cover_the_subcommands_in_each_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout(&run(kycd().args(["completions", shell])));
        assert!(script.len() > 1000, "{shell}: {} bytes", script.len());
        for sub in ["serve", "demo", "replay", "config", "completions"] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
        // The settings' flags are completed too.
        assert!(
            script.contains("admin-listen"),
            "{shell} lacks --admin-listen"
        );
        if shell == "bash" {
            if let Some(bash) = bash() {
                let path = dir.path().join("kycd.bash");
                std::fs::write(&path, &script).unwrap();
                let check = Command::new(bash).arg("-n").arg(&path).output().unwrap();
                assert!(
                    check.status.success(),
                    "bash -n: {}",
                    String::from_utf8_lossy(&check.stderr)
                );
            }
        }
    }
    // Any other shell name is refused.
    let out = kycd()
        .args(["completions", "cmd.exe"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// The log of a `kycd serve` started with `envs`, once it is listening
/// (its start-up warnings are written by then), and stopped.
fn serve_log(envs: &[(&str, String)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let mut envs = envs.to_vec();
    // An unknown variable and no webhook secret: two warnings at start-up.
    envs.push(("KYCD_NOT_A_SETTING", "1".to_owned()));
    let server = Server::start(&dir.path().join("data"), &log, &envs);
    drop(server);
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn json_logs_are_one_object_a_line_and_text_logs_into_a_pipe_have_no_colour() {
    let json = serve_log(&[("KYCD_LOG_FORMAT", "json".to_owned())]);
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines:\n{json}");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("KYCD_NOT_A_SETTING")),
        "{json}"
    );

    // The default: text, and the log file is no terminal.
    let text = serve_log(&[]);
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("KYCD_NOT_A_SETTING"), "{text}");
    assert!(!text.contains('\x1b'), "colour codes in a file:\n{text:?}");
    assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).is_err());
}

#[test]
fn rust_log_is_honoured_and_kycd_log_wins_over_it() {
    // RUST_LOG alone: `error` drops the start-up warnings.
    let quiet = serve_log(&[("RUST_LOG", "error".to_owned())]);
    assert!(!quiet.contains("WARN"), "{quiet}");
    // Both: KYCD_LOG's `warn` wins over RUST_LOG's `error`.
    let both = serve_log(&[
        ("RUST_LOG", "error".to_owned()),
        ("KYCD_LOG", "warn".to_owned()),
    ]);
    assert!(both.contains("WARN"), "{both}");
}

/// The lines of `config check` that set something, without the comment
/// saying where the value came from.
fn assignments(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split("  # ").next().unwrap_or(l).to_owned())
        .collect()
}

#[test]
fn config_check_prints_toml_that_reads_back_as_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kycd.toml");
    std::fs::write(
        &file,
        "max_connections = 77\n[step_up_workflows]\nNFC = \"wf-1\"\n",
    )
    .unwrap();
    let first = stdout(&run(kycd()
        .args(["config", "check", "--durability", "normal", "--config"])
        .arg(&file)
        .env("KYCD_ADMIN_LISTEN", "127.0.0.1:9")
        .env("KYCD_STEP_UP_WORKFLOW_PHONE", "wf-2")
        .env("KYCD_API_TOKEN", "tok-never-shown")
        .env("KYCD_LOG_FORMAT", "json")));
    assert!(!first.contains("tok-never-shown"));
    let parsed: toml::Table = first.parse().unwrap_or_else(|e| panic!("{e}\n{first}"));
    assert_eq!(parsed["max_connections"].as_integer(), Some(77));
    assert_eq!(parsed["durability"].as_str(), Some("normal"));
    assert_eq!(parsed["step_up_workflows"]["PHONE"].as_str(), Some("wf-2"));
    assert!(!parsed.contains_key("api_token"));
    assert!(first.contains("# from --durability"), "{first}");
    assert!(first.contains("# from KYCD_ADMIN_LISTEN"), "{first}");

    let again = dir.path().join("again.toml");
    std::fs::write(&again, &first).unwrap();
    let second = stdout(&run(kycd()
        .args(["config", "check", "--config"])
        .arg(&again)
        .env_clear()));
    assert_eq!(assignments(&second), assignments(&first));
    assert!(second.contains("# from the file"), "{second}");

    // An unknown key is refused, by name.
    std::fs::write(&again, "max_conections = 5\n").unwrap();
    let out = kycd()
        .args(["config", "check", "--config"])
        .arg(&again)
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown key max_conections") && err.contains("max_connections"),
        "{err}"
    );
}

#[test]
fn config_check_and_serve_refuse_a_ca_bundle_they_cannot_use_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let empty = dir.path().join("empty-ca.pem");
    std::fs::write(&empty, "").unwrap();
    for (path, reason) in [(&missing, "cannot read it"), (&empty, "no PEM certificate")] {
        for args in [&["config", "check"][..], &["serve"][..]] {
            let out = kycd()
                .args(args)
                .env_clear()
                .env("KYCD_CA_BUNDLE", path)
                .env("KYCD_DATA_DIR", dir.path().join("data"))
                .env("KYCD_LISTEN", "127.0.0.1:0")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "{args:?} accepted {}",
                path.display()
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("KYCD_CA_BUNDLE")
                    && err.contains(&*path.to_string_lossy())
                    && err.contains(reason)
                    && !err.contains("panicked"),
                "{args:?}: {err}"
            );
        }
    }
}
