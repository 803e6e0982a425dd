//! The `kycd serve` processes the bench starts itself, the fresh
//! PostgreSQL schema they share (dropped at the end), and the CPU
//! accounting of both from `/proc`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;

use super::random_hex;

/// How long a self-started server may take to print its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a self-started server may take to shut down after SIGTERM
/// before it is killed. Its data is thrown away, so there is no point in
/// waiting for, say, the projection to catch up.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Names of the server's threads that run the decision path: the projector
/// thread (`kycd-projector`) and its runtime's blocking threads
/// (`kycd-proj-store`, the embedded store's SQL). Thread names are cut to
/// 15 bytes in `/proc`, so this is a prefix.
const PROJECTOR_THREADS: &str = "kycd-proj";

/// Where the servers keep their data.
#[derive(PartialEq)]
pub enum Backend {
    /// A fresh data directory each, SQLite inside.
    Embedded,
    /// A fresh schema of this PostgreSQL database, shared by every instance.
    Postgres(String),
}

impl std::fmt::Debug for Backend {
    /// Never the URL: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Embedded => "Embedded",
            Backend::Postgres(_) => "Postgres(..)",
        })
    }
}

/// The servers the bench started, with everything they need removed again.
pub struct Fleet {
    servers: Vec<Server>,
    /// Holds the data directories, the audit key and the servers' logs.
    root: PathBuf,
    schema: Option<Schema>,
}

impl Fleet {
    /// Start `instances` servers one after the other (so that only one runs
    /// the database's migrations at a time), each on a free loopback port.
    /// One that fails to start stops those started before it (and drops
    /// the schema).
    pub async fn start(secret: &str, backend: &Backend, instances: usize) -> anyhow::Result<Self> {
        let run = random_hex(4);
        let root = std::env::temp_dir().join(format!("kycd-bench-{}-{run}", std::process::id()));
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let mut fleet = Self {
            servers: Vec::new(),
            root,
            schema: None,
        };
        match fleet.launch(&run, secret, backend, instances).await {
            Ok(()) => Ok(fleet),
            Err(e) => {
                for note in fleet.stop().await {
                    eprintln!("note: {note}");
                }
                Err(e)
            }
        }
    }

    async fn launch(
        &mut self,
        run: &str,
        secret: &str,
        backend: &Backend,
        instances: usize,
    ) -> anyhow::Result<()> {
        let database_url = match backend {
            Backend::Embedded => None,
            Backend::Postgres(url) => {
                let schema = Schema::create(url).await?;
                let url = schema.url.clone();
                self.schema = Some(schema);
                Some(url)
            }
        };
        let exe = std::env::current_exe().context("locating the kycd binary")?;
        let api_token = random_hex(16);
        for i in 0..instances {
            let name = format!("bench-{run}-{i}");
            let data = self.root.join(&name);
            std::fs::create_dir_all(&data)
                .with_context(|| format!("creating {}", data.display()))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("serve")
                .env("KYCD_LISTEN", "127.0.0.1:0")
                .env("KYCD_DATA_DIR", &data)
                .env("KYCD_WEBHOOK_SECRETS", secret)
                .env("KYCD_API_TOKEN", &api_token);
            match &database_url {
                Some(url) => {
                    cmd.env("KYCD_DATABASE_URL", url)
                        .env("KYCD_INSTANCE_ID", &name)
                        // One chain for the cluster: every instance keys it
                        // with the same key (the first one writes it).
                        .env("KYCD_AUDIT_KEY_FILE", self.root.join("audit.key"));
                }
                None => {
                    cmd.env_remove("KYCD_DATABASE_URL");
                }
            }
            let log = self.root.join(format!("{name}.log"));
            self.servers.push(Server::start(cmd, &name, &log)?);
        }
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().filter_map(Server::pid).collect()
    }

    pub fn schema(&self) -> Option<&Schema> {
        self.schema.as_ref()
    }

    /// The PostgreSQL application names of the servers' connections
    /// (`kycd <instance id>`), to find their backends.
    pub fn application_names(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("kycd {}", s.name))
            .collect()
    }

    /// SIGTERM every server, wait for each, then drop the schema and remove
    /// the data. Every step runs whatever failed before it; the errors are
    /// returned as notes.
    pub async fn stop(mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for server in &self.servers {
            server.terminate();
        }
        for server in std::mem::take(&mut self.servers) {
            if let Err(e) = server.wait() {
                notes.push(format!("{e:#}"));
            }
        }
        if let Some(schema) = self.schema.take() {
            if let Err(e) = schema.drop_schema().await {
                notes.push(format!("{e:#}"));
            }
        }
        notes
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for server in &mut self.servers {
            server.kill();
        }
        if let Some(schema) = &self.schema {
            eprintln!(
                "note: the bench's schema {} was not dropped (DROP SCHEMA \"{}\" CASCADE)",
                schema.name, schema.name
            );
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A schema of its own in the database the bench was given, so that a run
/// never sees another's rows and leaves nothing behind.
pub struct Schema {
    /// The database's URL with `search_path` set to the schema, as an
    /// operator would write it in `KYCD_DATABASE_URL`.
    url: String,
    name: String,
    /// The bench's own connection: creates and drops the schema, finds the
    /// servers' backends, reads the settings.
    admin: PgPool,
}

impl Schema {
    async fn create(url: &str) -> anyhow::Result<Self> {
        let name = schema_name(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            std::process::id(),
            &random_hex(4),
        );
        Self::create_named(url, name).await
    }

    async fn create_named(url: &str, name: String) -> anyhow::Result<Self> {
        // The errors never hold the URL: it may hold a password.
        let options: PgConnectOptions = url
            .parse()
            .map_err(|_| anyhow!("the database URL does not parse"))?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.disable_statement_logging())
            .await
            .context("connecting to the bench's database")?;
        sqlx::query(&format!("CREATE SCHEMA \"{name}\""))
            .execute(&admin)
            .await
            .with_context(|| format!("creating the schema {name}"))?;
        Ok(Self {
            url: with_search_path(url, &name),
            name,
            admin,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    async fn drop_schema(self) -> anyhow::Result<()> {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name))
            .execute(&self.admin)
            .await
            .with_context(|| format!("dropping the bench's schema {}", self.name))?;
        self.admin.close().await;
        Ok(())
    }

    /// The server's version and the settings that decide what a commit
    /// costs, e.g. `PostgreSQL 15.2, fsync on, synchronous_commit on`.
    pub async fn describe(&self) -> String {
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.admin)
            .await
            .unwrap_or_else(|_| "?".into());
        let mut s = format!("PostgreSQL {version}");
        for setting in [
            "fsync",
            "synchronous_commit",
            "wal_sync_method",
            "shared_buffers",
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                .fetch_one(&self.admin)
                .await
                .unwrap_or_else(|_| "?".into());
            s.push_str(&format!(", {setting} {value}"));
        }
        s
    }

    /// The process ids of the database backends serving these application
    /// names, and each one's CPU seconds so far. Empty when the database is
    /// not on this machine (no such `postgres` process in `/proc`).
    pub async fn backends(&self, application_names: &[String]) -> BTreeMap<u32, f64> {
        let pids: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = ANY($1)")
                .bind(application_names)
                .fetch_all(&self.admin)
                .await
                .unwrap_or_default();
        pids.into_iter()
            .filter_map(|pid| u32::try_from(pid).ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "postgres")
            })
            .filter_map(|pid| Some((pid, process_cpu(pid)?.total)))
            .collect()
    }
}

/// `kycd_bench_<unix seconds>_<pid>_<random>`: a bench's schema says when
/// and by which process it was made, should one be left behind.
fn schema_name(unix_secs: u64, pid: u32, random: &str) -> String {
    format!("kycd_bench_{unix_secs}_{pid}_{random}")
}

/// `url` with `search_path` set to `schema`. PostgreSQL's `options`
/// parameters add up and the last `-c` wins, so a URL that sets options of
/// its own keeps them.
fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// CPU seconds of one process: all of it, and its decision-path threads.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub total: f64,
    pub projector: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, rhs: Cpu) -> Cpu {
        Cpu {
            total: self.total - rhs.total,
            projector: self.projector - rhs.projector,
        }
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;
    fn add(self, rhs: Cpu) -> Cpu {
        Cpu {
            total: self.total + rhs.total,
            projector: self.projector + rhs.projector,
        }
    }
}

/// CPU seconds (user + system) a process has used so far, every thread's,
/// from `/proc/<pid>/stat`, and of it those of its threads named
/// [`PROJECTOR_THREADS`] (`/proc/<pid>/task/*`; a thread that has exited
/// counts in the total only). `None` where there is no such process.
pub fn process_cpu(pid: u32) -> Option<Cpu> {
    let total = stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let mut projector = 0.0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path();
            let named = std::fs::read_to_string(path.join("comm"))
                .is_ok_and(|c| c.trim().starts_with(PROJECTOR_THREADS));
            if named {
                projector += std::fs::read_to_string(path.join("stat"))
                    .ok()
                    .and_then(|s| stat_cpu(&s))
                    .unwrap_or(0.0);
            }
        }
    }
    Some(Cpu { total, projector })
}

/// The bench's own CPU seconds so far.
pub fn own_cpu() -> Option<f64> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// utime + stime of a `stat` line, in seconds.
fn stat_cpu(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux platform kycd targets.
    Some((utime + stime) / 100.0)
}

/// One `kycd serve` the bench started.
struct Server {
    child: Option<Child>,
    url: String,
    /// Its instance id (also the name of its data directory and log).
    name: String,
    log: PathBuf,
}

impl Server {
    fn start(mut cmd: Command, name: &str, log_path: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting kycd serve")?;
        let stdout = child.stdout.take();
        let mut server = Self {
            child: Some(child),
            url: String::new(),
            name: name.to_owned(),
            log: log_path.to_owned(),
        };
        let stdout = stdout.context("no stdout from kycd serve")?;
        match wait_listening(stdout) {
            Ok(url) => {
                server.url = url;
                Ok(server)
            }
            Err(e) => Err(e.context(format!(
                "kycd serve did not start; its log ends with:\n{}",
                log_tail(log_path)
            ))),
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
    }

    /// Wait for the graceful shutdown [`Server::terminate`] asked for; kill
    /// the server when it takes too long.
    fn wait(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let status = loop {
            match child.try_wait().context("waiting for kycd serve")? {
                Some(status) => break Some(status),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!("kycd serve exited with {s}; log:\n{}", log_tail(&self.log)),
            None => bail!(
                "kycd serve did not stop within {SHUTDOWN_TIMEOUT:?} of SIGTERM and was killed"
            ),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Read the server's stdout until its `listening on` line, with a deadline;
/// keep draining it afterwards so the server never blocks on a full pipe.
fn wait_listening(stdout: std::process::ChildStdout) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(url) = line.trim().strip_prefix("listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.to_owned());
                }
            }
        }
    });
    rx.recv_timeout(STARTUP_TIMEOUT)
        .map_err(|_| anyhow!("no `listening on` line within {STARTUP_TIMEOUT:?}"))
}

fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_reads_utime_and_stime_after_a_command_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime ...
        let line = "4242 (kycd proj) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0";
        assert_eq!(stat_cpu(line), Some(3.25));
        assert_eq!(stat_cpu("garbage"), None);
    }

    #[test]
    fn process_cpu_reads_this_process() {
        let cpu = process_cpu(std::process::id()).unwrap();
        assert!(cpu.total >= 0.0);
        // The test harness names no thread like the projector.
        assert_eq!(cpu.projector, 0.0);
        assert_eq!(process_cpu(u32::MAX), None);
    }

    #[test]
    fn the_schema_url_sets_the_search_path_and_keeps_other_parameters() {
        assert_eq!(
            with_search_path("postgres://u@h:5432/db", "kycd_bench_1_2_ab"),
            "postgres://u@h:5432/db?options=-csearch_path%3Dkycd_bench_1_2_ab"
        );
        assert_eq!(
            with_search_path("postgres://u@h/db?sslmode=disable", "s"),
            "postgres://u@h/db?sslmode=disable&options=-csearch_path%3Ds"
        );
        let url: PgConnectOptions =
            with_search_path("postgres://u@h/db?options=-cwork_mem%3D8MB", "s")
                .parse()
                .unwrap();
        assert_eq!(url.get_options(), Some("-cwork_mem=8MB -csearch_path=s"));
        assert_eq!(
            schema_name(1700000000, 42, "beef"),
            "kycd_bench_1700000000_42_beef"
        );
    }

    /// The schema a run made is gone after it, with the servers' tables in
    /// it (DROP ... CASCADE), and dropping names that schema only.
    #[tokio::test]
    async fn the_schema_is_dropped_after_the_run() {
        let Some(url) = kycd_log::postgres::testing::url_or_skip("bench schema clean-up") else {
            return;
        };
        let exists = |pool: PgPool, name: String| async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap()
        };
        let other = Schema::create(&url).await.unwrap();
        let schema = Schema::create(&url).await.unwrap();
        let name = schema.name().to_owned();
        assert!(name.starts_with("kycd_bench_"), "{name}");
        assert_ne!(name, other.name());
        // A table made through the schema's URL lands in the schema.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&schema.url)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE events (pos bigint)")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        assert!(exists(schema.admin.clone(), name.clone()).await);
        schema.drop_schema().await.unwrap();

        let check = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        assert!(!exists(check.clone(), name).await);
        assert!(exists(check.clone(), other.name().to_owned()).await);
        other.drop_schema().await.unwrap();
        check.close().await;
    }
}
