//! `kycd bench`: a load generator for the webhook intake.
//!
//! It fires distinct, freshly signed Didit deliveries at a running intake over
//! loopback and reports throughput and acknowledgement latency, then how
//! fast the deliveries were decided and what the servers' CPU cost per
//! delivery was. Without `--url` it starts `kycd serve` itself on a free
//! port and a fresh data directory (or, with `--database-url`, a fresh
//! schema of that PostgreSQL database, shared by `--instances` servers),
//! and stops it (SIGTERM) at the end. With several servers the deliveries
//! are dealt to them in turn.
//!
//! Everything that costs CPU on the bench's side is done before the clock
//! starts: every delivery is signed and turned into a complete HTTP request up
//! front, so that during the run the bench only writes prepared bytes and
//! reads acknowledgements. It shares the machine with the server, so it runs
//! on one runtime thread by default.
//!
//! Two modes:
//! - closed loop (default): each of `--connections` connections sends its next
//!   delivery as soon as the previous one is acknowledged; this measures the
//!   maximum throughput;
//! - open loop (`--rate R`): delivery `i` is due at `start + i / R`, and its
//!   latency is measured from that scheduled time, not from when a connection
//!   got round to sending it, so a slow server cannot hide its queueing delay
//!   by slowing the bench down (coordinated omission). The time from the
//!   actual send is reported too, as the service time.
//!
//! Decisions: after the warm-up the bench waits until the projector has
//! applied every event (`/readyz`'s `projector_lag` is 0), so that the
//! measured deliveries are the only work waiting; after the last
//! acknowledgement it polls again until the projector has caught up. The
//! time from the first measured delivery to then is the decision
//! throughput; the events still waiting when the intake finished, and the
//! time they took, are the drain (decisions with no intake beside them).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use didit::canonical::Value;
use didit::signature::{sign, Secret};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

mod fleet;

use fleet::{Backend, Cpu, Fleet};

/// The v3 delivery every bench request is made from: a full `Approved`
/// decision (the `approved_full_decision` vector of docs/didit-protocol.md section 6),
/// about 1.9 KB on the wire. Ids, `vendor_data` and `timestamp` are replaced
/// per delivery.
const TEMPLATE: &str = r#"{"application_id":"0b6f3c2e-7d41-4a55-9a0e-3f1c2d4e5a6b","created_at":1774969994,"decision":{"aml_screenings":[{"hits":[],"node_id":"feature_aml_1","score":0,"status":"Approved","total_hits":0,"warnings":[]}],"created_at":"2026-03-31T15:13:14.123456Z","database_validations":null,"email_verifications":null,"environment":"live","face_matches":[{"node_id":"feature_face_match_1","score":91.3,"status":"Approved","warnings":[]}],"features":["ID_VERIFICATION","LIVENESS","FACE_MATCH","AML","IP_ANALYSIS"],"id_verifications":[{"age":37,"date_of_birth":"1988-04-02","document_number":"X1234567","document_type":"Passport","expiration_date":"2031-01-09","first_name":"J\u00fcrgen","full_name":"J\u00fcrgen Gro\u00df","gender":"M","issuing_state":"DEU","last_name":"Gro\u00df","mrz":"P<D<<GROSS<<JUERGEN<<<<<<<<<<<<<<<<<<<<<<<<<<","nationality":"DEU","node_id":"feature_ocr_1","status":"Approved","warnings":[]}],"ip_analyses":[{"ip_address":"85.123.45.67","ip_country_code":"DE","is_data_center":false,"is_vpn_or_tor":false,"latitude":52.52,"longitude":13.405,"node_id":"feature_ip_analysis_1","status":"Approved","warnings":[]}],"liveness_checks":[{"age_estimation":36.4,"face_quality":88,"matches":[],"method":"PASSIVE","node_id":"feature_liveness_1","score":97.25,"status":"Approved","warnings":[]}],"metadata":null,"nfc_verifications":null,"phone_verifications":null,"poa_verifications":null,"questionnaire_responses":null,"reviews":[],"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","session_number":4211,"status":"Approved","vendor_data":"user-1001"},"environment":"live","event_id":"5f0c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5","metadata":{"plan":"pro"},"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","status":"Approved","timestamp":1774970000,"vendor_data":"user-1001","webhook_type":"status.updated","workflow_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","workflow_version":2}"#;

const WEBHOOK_PATH: &str = "/webhooks/didit";

/// How long the projector may take to apply every delivered event, after
/// the warm-up and after the measured phase, before the bench gives up on
/// the decision figures.
const DECIDE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the bench asks `/readyz` whether the projector has caught up.
const DECIDE_POLL: Duration = Duration::from_millis(20);
/// Fewer events than this waiting when the intake finished are too few to
/// time a drain by.
const MIN_BACKLOG: u64 = 1000;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A running intake, `http://HOST:PORT` or the full webhook URL. Repeat
    /// it for several instances of one cluster: deliveries go to them in
    /// turn. Without it the bench starts `kycd serve` itself and stops it at
    /// the end: on a free port and a fresh data directory, or a fresh schema
    /// of --database-url.
    #[arg(long)]
    url: Vec<String>,
    /// The webhook secret the intake accepts (required with --url).
    #[arg(long, env = "KYCD_BENCH_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Measured deliveries.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrent keep-alive connections (shared out over the servers).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Fixed arrival rate per second (open loop); without it, closed loop at
    /// maximum throughput.
    #[arg(long)]
    rate: Option<f64>,
    /// Deliveries sent before measuring, in the same mode.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Runtime threads the bench itself uses.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// A PostgreSQL database (`postgres://...`) for the servers the bench
    /// starts: they share a fresh schema in it, dropped at the end. Not
    /// used with --url.
    #[arg(long, env = "KYCD_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// How many `kycd serve` to start on --database-url; deliveries go to
    /// them in turn.
    #[arg(long, default_value_t = 1)]
    instances: usize,
}

/// What the arguments ask for.
#[derive(Debug)]
enum Plan {
    /// Servers started separately (`--url`).
    Running { urls: Vec<String>, secret: String },
    /// Servers the bench starts and stops.
    Start {
        backend: Backend,
        instances: usize,
        secret: String,
    },
}

fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number");
        }
    }
    let (plan, servers) = if args.url.is_empty() {
        if args.instances == 0 {
            bail!("--instances must be at least 1");
        }
        let backend = match &args.database_url {
            // Never quoted: the URL may hold a password.
            Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => {
                bail!("--database-url (or KYCD_DATABASE_URL) must be a postgres:// URL")
            }
            Some(url) => Backend::Postgres(url.clone()),
            None if args.instances > 1 => bail!(
                "--instances {} needs --database-url (or KYCD_DATABASE_URL): \
                 several instances share one PostgreSQL database",
                args.instances
            ),
            None => Backend::Embedded,
        };
        let secret = args.secret.clone().unwrap_or_else(|| random_hex(32));
        let instances = args.instances;
        (
            Plan::Start {
                backend,
                instances,
                secret,
            },
            instances,
        )
    } else {
        if args.instances != 1 {
            bail!("--instances starts servers; for servers already running, give one --url each");
        }
        for url in &args.url {
            Target::parse(url)?;
        }
        let secret = args
            .secret
            .clone()
            .context("--secret (or KYCD_BENCH_SECRET) is required with --url")?;
        let urls = args.url.clone();
        let n = urls.len();
        (Plan::Running { urls, secret }, n)
    };
    if args.connections < servers {
        bail!(
            "--connections ({}) must be at least the number of servers ({servers})",
            args.connections
        );
    }
    Ok(plan)
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the bench runtime")?;
    let (result, notes) = runtime.block_on(async {
        match plan {
            Plan::Running { urls, secret } => {
                let targets = urls
                    .iter()
                    .map(|u| Target::parse(u))
                    .collect::<anyhow::Result<Vec<_>>>();
                let result = match targets {
                    Ok(targets) => bench(&args, &targets, &Secret::new(secret), None).await,
                    Err(e) => Err(e),
                };
                (result, Vec::new())
            }
            Plan::Start {
                backend,
                instances,
                secret,
            } => {
                let fleet = match Fleet::start(&secret, &backend, instances).await {
                    Ok(fleet) => fleet,
                    Err(e) => return (Err(e), Vec::new()),
                };
                let result = match fleet
                    .urls()
                    .iter()
                    .map(|u| Target::parse(u))
                    .collect::<anyhow::Result<Vec<_>>>()
                {
                    Ok(targets) => bench(&args, &targets, &Secret::new(secret), Some(&fleet)).await,
                    Err(e) => Err(e),
                };
                // Stop the servers whatever happened, but report the
                // bench's error first. Their data is thrown away, so a slow
                // shutdown only earns a note.
                (result, fleet.stop().await)
            }
        }
    });
    for note in notes {
        eprintln!("note: {note}");
    }
    let report = result?;

    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{}", report.human());
    }
    Ok(if report.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn bench(
    args: &BenchArgs,
    targets: &[Target],
    secret: &Secret,
    fleet: Option<&Fleet>,
) -> anyhow::Result<Report> {
    let requests = prepare(targets, secret, args.warmup + args.requests)?;
    let mut measured = requests;
    let warmup: Vec<_> = measured.drain(..args.warmup).collect();

    let mut senders = Vec::with_capacity(args.connections);
    for c in 0..args.connections {
        let t = c % targets.len();
        senders.push((t, connect(&targets[t]).await?));
    }
    if !warmup.is_empty() {
        let (s, _) = phase(targets, senders, warmup, 0, args.rate).await;
        senders = s;
    }
    let probe = Probe::new(targets)?;
    // Start from a projector that has caught up, so that the measured
    // deliveries are all the work there is to decide.
    let lag_known = probe.wait_caught_up().await.is_some();
    let decided_before = probe.settled_decisions().await;
    let before = Snapshot::take(fleet).await;
    let (_, mut outcome) = phase(targets, senders, measured, args.warmup, args.rate).await;
    let after = Snapshot::take(fleet).await;
    let decisions = if lag_known {
        let backlog = probe.lag().await;
        let caught_up = probe.wait_caught_up().await;
        let settled = Snapshot::take(fleet).await;
        let decided_after = probe.settled_decisions().await;
        let behind = match caught_up {
            Some(_) => None,
            None => probe.lag().await,
        };
        Some(Decisions {
            caught_up: caught_up
                .map(|at| at.saturating_duration_since(outcome.started.unwrap_or(before.at))),
            backlog: backlog.unwrap_or(0),
            drain: caught_up.map(|at| at.saturating_duration_since(after.at)),
            decided: decided_before
                .zip(decided_after)
                .map(|(b, a)| a.saturating_sub(b)),
            behind,
            whole: settled.since(&before),
            drain_cpu: settled.since(&after),
        })
    } else {
        None
    };
    let intake = after.since(&before);
    outcome.bench_cpu = intake.bench;
    outcome.server_cpu = intake.servers.map(|c| c.total);
    let database = match fleet.and_then(Fleet::schema) {
        Some(schema) => Some(format!(
            "{}; schema {}",
            schema.describe().await,
            schema.name()
        )),
        None => None,
    };
    Ok(Report::new(
        args,
        outcome,
        Extra {
            servers: targets.len(),
            backend: fleet.map(|f| {
                if f.schema().is_some() {
                    "postgres"
                } else {
                    "sqlite"
                }
            }),
            database,
            decisions,
        },
    ))
}

/// Asks the servers how far their projector is behind and how many
/// decisions they have stored.
struct Probe {
    http: reqwest::Client,
    /// `http://host:port` of every server.
    bases: Vec<String>,
}

impl Probe {
    fn new(targets: &[Target]) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("building the HTTP client")?,
            bases: targets
                .iter()
                .map(|t| format!("http://{}", t.authority))
                .collect(),
        })
    }

    /// Events in the log the projector has not applied, from the first
    /// server's `/readyz` (the servers share one log and one projection).
    async fn lag(&self) -> Option<u64> {
        let resp = self
            .http
            .get(format!("{}/readyz", self.bases.first()?))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        body["checks"]["projector_lag"].as_u64()
    }

    /// Poll until the projector has applied every event; when that was
    /// seen, or `None` when it was not within [`DECIDE_TIMEOUT`] or the lag
    /// cannot be read.
    async fn wait_caught_up(&self) -> Option<Instant> {
        let deadline = Instant::now() + DECIDE_TIMEOUT;
        loop {
            let lag = self.lag().await?;
            if lag == 0 {
                return Some(Instant::now());
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(DECIDE_POLL).await;
        }
    }

    /// [`Probe::decisions`] once it holds still: the projector counts a
    /// batch's decisions just after its commit, and at its low priority
    /// that may come a while after `/readyz` has shown the commit.
    async fn settled_decisions(&self) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = self.decisions().await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.decisions().await?;
            if now == last || Instant::now() >= deadline {
                return Some(now);
            }
            last = now;
        }
    }

    /// Decisions stored so far, summed over every server's
    /// `kycd_decisions_total`; `None` where a server serves no `/metrics`
    /// on this listener.
    async fn decisions(&self) -> Option<u64> {
        let mut total = 0.0;
        for base in &self.bases {
            let resp = self.http.get(format!("{base}/metrics")).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            total += counter_sum(&resp.text().await.ok()?, "kycd_decisions_total");
        }
        Some(total as u64)
    }
}

/// The sum of a counter's samples over all its labels, in Prometheus's
/// text format.
fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU used so far by the bench, the servers it started and their
/// database backends.
struct Snapshot {
    at: Instant,
    bench: Option<f64>,
    /// Every server's CPU added up; `None` unless the bench started them
    /// and could read each one.
    servers: Option<Cpu>,
    /// Each database backend serving the servers, by process id; `None`
    /// without a schema, or when the database is not on this machine.
    database: Option<BTreeMap<u32, f64>>,
}

/// CPU seconds between two snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct CpuSpent {
    bench: Option<f64>,
    servers: Option<Cpu>,
    database: Option<f64>,
}

impl Snapshot {
    async fn take(fleet: Option<&Fleet>) -> Self {
        let at = Instant::now();
        let bench = fleet::own_cpu();
        let servers = fleet.and_then(|f| {
            f.pids()
                .into_iter()
                .map(fleet::process_cpu)
                .try_fold(Cpu::default(), |sum, c| Some(sum + c?))
        });
        let database = match fleet.and_then(|f| f.schema().map(|s| (f, s))) {
            Some((f, schema)) => Some(schema.backends(&f.application_names()).await)
                .filter(|backends| !backends.is_empty()),
            None => None,
        };
        Self {
            at,
            bench,
            servers,
            database,
        }
    }

    fn since(&self, earlier: &Snapshot) -> CpuSpent {
        CpuSpent {
            bench: self.bench.zip(earlier.bench).map(|(a, b)| a - b),
            servers: self.servers.zip(earlier.servers).map(|(a, b)| a - b),
            database: self
                .database
                .as_ref()
                .zip(earlier.database.as_ref())
                .map(|(a, b)| backends_spent(b, a)),
        }
    }
}

/// CPU seconds the database backends spent between two readings. A backend
/// that started in between counts from zero; one that ended in between is
/// lost (the servers keep their connections open, so there are few).
fn backends_spent(before: &BTreeMap<u32, f64>, after: &BTreeMap<u32, f64>) -> f64 {
    after
        .iter()
        .map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}
/// Where to send deliveries.
struct Target {
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// Origin-form request target, e.g. `/webhooks/didit`.
    path: Uri,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid url {url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("only http:// urls are supported, got {url:?}");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("url {url:?} has no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let path = match uri.path() {
            "" | "/" => WEBHOOK_PATH,
            p => p,
        };
        Ok(Self {
            authority: format!("{}:{port}", authority.host()),
            path: path.parse().context("invalid url path")?,
        })
    }
}

/// Sign `n` distinct deliveries and build their requests, delivery `i` for
/// `targets[i % targets.len()]` (see [`spread`]). Each has its own session,
/// event id and vendor data; all carry the current time.
fn prepare(
    targets: &[Target],
    secret: &Secret,
    n: usize,
) -> anyhow::Result<Vec<Request<Full<Bytes>>>> {
    let template = Value::parse(TEMPLATE.as_bytes())
        .map_err(|e| anyhow!("bench template does not parse: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs();
    let hosts = targets
        .iter()
        .map(|t| HeaderValue::from_str(&t.authority).context("invalid host"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let run_id = random_hex(4);
    let mut rng = rand::thread_rng();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let session_id = uuid_v4(&mut rng);
        let vendor_data = format!("bench-{run_id}-{i}");
        let mut payload = template.clone();
        payload.set("event_id", string(uuid_v4(&mut rng)));
        payload.set("session_id", string(session_id.clone()));
        payload.set("vendor_data", string(vendor_data.clone()));
        payload.set("timestamp", Value::Number(Cow::Owned(now.to_string())));
        if let Some(decision) = member_mut(&mut payload, "decision") {
            decision.set("session_id", string(session_id));
            decision.set("vendor_data", string(vendor_data));
            // Distinct people: the engine links sessions that share a
            // document or an IP address, and one value shared by every
            // delivery would turn the bench into a test of that one hot key.
            if let Some(doc) = member_mut(decision, "id_verifications").and_then(first_mut) {
                let number = rng.gen_range(0..100_000_000u32);
                doc.set("document_number", string(format!("B{number:08}")));
            }
            if let Some(ip) = member_mut(decision, "ip_analyses").and_then(first_mut) {
                let [x, y, z]: [u8; 3] = rng.gen();
                ip.set("ip_address", string(format!("10.{x}.{y}.{z}")));
            }
        }
        let signed = sign(secret, &payload);

        let mut req = Request::new(Full::new(Bytes::from(signed.body)));
        *req.method_mut() = Method::POST;
        let to = i % targets.len();
        *req.uri_mut() = targets[to].path.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, hosts[to].clone());
        for (name, value) in signed.headers {
            headers.insert(
                HeaderName::from_static(name_lower(name)),
                HeaderValue::from_str(&value).context("invalid header value")?,
            );
        }
        out.push(req);
    }
    Ok(out)
}

/// `HeaderName::from_static` wants lowercase names; the signer's are the
/// fixed set Didit sends.
fn name_lower(name: &'static str) -> &'static str {
    match name {
        "Content-Type" => "content-type",
        "User-Agent" => "user-agent",
        "X-Signature" => "x-signature",
        "X-Signature-V2" => "x-signature-v2",
        "X-Signature-Simple" => "x-signature-simple",
        "X-Timestamp" => "x-timestamp",
        "X-Didit-Test-Webhook" => "x-didit-test-webhook",
        _ => "x-unknown",
    }
}

fn string(s: String) -> Value<'static> {
    Value::String(Cow::Owned(s))
}

/// A member of an object, for editing.
fn member_mut<'v>(value: &'v mut Value<'static>, key: &str) -> Option<&'v mut Value<'static>> {
    match value {
        Value::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

/// The first element of an array, for editing.
fn first_mut<'v>(value: &'v mut Value<'static>) -> Option<&'v mut Value<'static>> {
    match value {
        Value::Array(items) => items.first_mut(),
        _ => None,
    }
}

fn uuid_v4(rng: &mut impl Rng) -> String {
    let b: [u8; 16] = rng.gen();
    let h = hex::encode(b);
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        (b[8] & 0x3) | 0x8,
        &h[17..20],
        &h[20..32]
    )
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::thread_rng();
    let b: Vec<u8> = (0..bytes).map(|_| rng.gen()).collect();
    hex::encode(b)
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(&target.authority)
        .await
        .with_context(|| format!("connecting to {}", target.authority))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("http handshake")?;
    tokio::spawn(async move {
        // A connection error surfaces on the request that was in flight.
        let _ = conn.await;
    });
    Ok(sender)
}

/// What one phase produced.
#[derive(Default)]
struct Outcome {
    /// Latency of each accepted delivery, from its due time, in nanoseconds.
    latencies: Vec<u64>,
    /// Latency from the actual send (equal to `latencies` in closed loop).
    service: Vec<u64>,
    /// Responses by HTTP status.
    statuses: BTreeMap<u16, usize>,
    /// 200 responses whose body was not `accepted` (e.g. `duplicate`).
    not_accepted: usize,
    /// Requests that got no response (connection errors).
    transport_errors: usize,
    /// Requests never sent because every connection was lost.
    unsent: usize,
    elapsed: Duration,
    /// When the phase began.
    started: Option<Instant>,
    /// CPU seconds the bench and (if it started them) the servers used.
    bench_cpu: Option<f64>,
    server_cpu: Option<f64>,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.service.extend(other.service);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.not_accepted += other.not_accepted;
        self.transport_errors += other.transport_errors;
        self.unsent += other.unsent;
    }
}

/// The requests of a phase for one server, handed out in order to whichever
/// of its connections is free, each with its index in the phase, which
/// gives its due time in open loop.
type Queue = Mutex<std::vec::IntoIter<(usize, Request<Full<Bytes>>)>>;

/// Deal a phase's requests round-robin over `ways` servers: request `j` of
/// a phase whose first request is the run's `first`-th goes to server
/// `(first + j) % ways`, each with `j`. The run's `i`-th request was
/// prepared for server `i % ways`, so every request stays with its server.
fn spread<T>(items: Vec<T>, first: usize, ways: usize) -> Vec<Vec<(usize, T)>> {
    let ways = ways.max(1);
    let mut out: Vec<Vec<(usize, T)>> = (0..ways)
        .map(|_| Vec::with_capacity(items.len() / ways + 1))
        .collect();
    for (j, item) in items.into_iter().enumerate() {
        out[(first + j) % ways].push((j, item));
    }
    out
}

/// A connection, with the index of the server it goes to.
type Sender = (usize, SendRequest<Full<Bytes>>);

/// Send `requests` (the run's from the `first`-th on) over `senders` and
/// wait for every acknowledgement. Returns the connections still usable,
/// for the next phase.
async fn phase(
    targets: &[Target],
    senders: Vec<Sender>,
    requests: Vec<Request<Full<Bytes>>>,
    first: usize,
    rate: Option<f64>,
) -> (Vec<Sender>, Outcome) {
    let total = requests.len();
    let workers = senders.len();
    let queues: Vec<Arc<Queue>> = spread(requests, first, targets.len())
        .into_iter()
        .map(|q| Arc::new(Mutex::new(q.into_iter())))
        .collect();
    let per_task = total / senders.len().max(1) + 16;
    let start = Instant::now();

    // In open loop a pacer thread releases one permit per due delivery, to
    // the server it goes to. A plain thread sleeps with far finer
    // resolution than the runtime's 1 ms timer wheel, which would otherwise
    // add up to 1 ms of bench-made delay.
    let gate = rate.map(|r| {
        (
            (0..queues.len())
                .map(|_| Arc::new(Semaphore::new(0)))
                .collect::<Vec<_>>(),
            Duration::from_secs_f64(1.0 / r),
        )
    });
    let pacer = gate.as_ref().map(|(sems, interval)| {
        let sems = sems.clone();
        let interval = *interval;
        std::thread::spawn(move || pace(&sems, first, start, interval, total, workers))
    });

    let mut tasks = Vec::with_capacity(senders.len());
    for (to, sender) in senders {
        let queue = queues[to].clone();
        let gate = gate
            .as_ref()
            .map(|(sems, interval)| (sems[to].clone(), *interval));
        let authority = targets[to].authority.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                latencies: Vec::with_capacity(per_task),
                service: Vec::with_capacity(per_task),
                ..Outcome::default()
            };
            let sender = worker(sender, &queue, gate, start, &authority, &mut out).await;
            (sender.map(|s| (to, s)), out)
        }));
    }

    let mut outcome = Outcome::default();
    let mut alive = Vec::new();
    for task in tasks {
        match task.await {
            Ok((sender, out)) => {
                alive.extend(sender);
                outcome.merge(out);
            }
            Err(_) => outcome.transport_errors += 1,
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.started = Some(start);
    // Whatever no connection could take was never sent.
    for queue in &queues {
        if let Ok(mut rest) = queue.lock() {
            outcome.unsent += rest.by_ref().count();
        }
    }
    if let Some((sems, _)) = &gate {
        for sem in sems {
            sem.close();
        }
    }
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    (alive, outcome)
}

/// Release a permit to the server of each delivery as it falls due (see
/// [`spread`] for which server that is).
fn pace(
    sems: &[Arc<Semaphore>],
    first: usize,
    start: Instant,
    interval: Duration,
    total: usize,
    workers: usize,
) {
    let mut released = 0usize;
    while released < total && !sems.iter().any(|s| s.is_closed()) {
        let due =
            ((start.elapsed().as_secs_f64() / interval.as_secs_f64()) as usize + 1).min(total);
        for j in released..due {
            sems[(first + j) % sems.len()].add_permits(1);
        }
        released = released.max(due);
        let next = start + interval.mul_f64(released as f64);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    // One permit more per worker: a worker waiting for a permit after the
    // last delivery was taken wakes, finds the queue empty and stops.
    for sem in sems {
        sem.add_permits(workers);
    }
}

async fn worker(
    mut sender: SendRequest<Full<Bytes>>,
    queue: &Queue,
    gate: Option<(Arc<Semaphore>, Duration)>,
    start: Instant,
    authority: &str,
    out: &mut Outcome,
) -> Option<SendRequest<Full<Bytes>>> {
    loop {
        if let Some((sem, _)) = &gate {
            match sem.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Some(sender),
            }
        }
        let next = match queue.lock() {
            Ok(mut q) => q.next(),
            Err(_) => None,
        };
        let Some((index, req)) = next else {
            return Some(sender);
        };
        let due = match &gate {
            Some((_, interval)) => start + interval.mul_f64(index as f64),
            None => Instant::now(),
        };

        if sender.ready().await.is_err() {
            match reconnect(authority).await {
                Some(s) => sender = s,
                None => {
                    out.transport_errors += 1;
                    return None;
                }
            }
        }
        let sent = Instant::now();
        match send(&mut sender, req).await {
            Ok((status, accepted)) => {
                let done = Instant::now();
                *out.statuses.entry(status).or_default() += 1;
                if status == 200 && accepted {
                    out.latencies
                        .push(nanos(done.saturating_duration_since(due)));
                    out.service.push(nanos(done - sent));
                } else if status == 200 {
                    out.not_accepted += 1;
                }
            }
            Err(_) => {
                out.transport_errors += 1;
                match reconnect(authority).await {
                    Some(s) => sender = s,
                    None => return None,
                }
            }
        }
    }
}

async fn reconnect(authority: &str) -> Option<SendRequest<Full<Bytes>>> {
    let target = Target {
        authority: authority.to_owned(),
        path: Uri::from_static(WEBHOOK_PATH),
    };
    connect(&target).await.ok()
}

/// Send one request; the status and whether the body says `accepted`.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> anyhow::Result<(u16, bool)> {
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    // The body is `{"status":"accepted","id":"evt_..."}`; a substring test
    // is enough and costs far less than parsing it.
    let needle: &[u8] = b"\"accepted\"";
    let accepted = body.windows(needle.len()).any(|w| w == needle);
    Ok((status, accepted))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The result of the measured phase.
struct Report {
    requests: usize,
    connections: usize,
    rate: Option<f64>,
    outcome: Outcome,
    latency: Percentiles,
    service: Percentiles,
    extra: Extra,
}

/// What the report says besides the intake's figures.
struct Extra {
    /// Servers the deliveries were dealt to.
    servers: usize,
    /// `sqlite` or `postgres` for servers the bench started.
    backend: Option<&'static str>,
    /// The database's version and settings, and the bench's schema.
    database: Option<String>,
    /// `None` where `/readyz` gave no projector lag.
    decisions: Option<Decisions>,
}

/// How the measured deliveries were decided.
struct Decisions {
    /// From the first measured delivery until the projector had applied
    /// every event; `None` when that did not happen within the deadline.
    caught_up: Option<Duration>,
    /// Events not yet applied when the last delivery was acknowledged.
    backlog: u64,
    /// From then until the projector had caught up.
    drain: Option<Duration>,
    /// Decisions stored meanwhile (`kycd_decisions_total` of every server).
    decided: Option<u64>,
    /// Events still waiting at the deadline.
    behind: Option<u64>,
    /// CPU from the first measured delivery until caught up, and in the
    /// drain alone.
    whole: CpuSpent,
    drain_cpu: CpuSpent,
}

impl Decisions {
    fn rate(&self, accepted: usize) -> Option<f64> {
        self.caught_up
            .map(|d| accepted as f64 / d.as_secs_f64().max(1e-9))
    }

    /// The drain's events per second, when there was a backlog worth
    /// timing.
    fn drain_rate(&self) -> Option<f64> {
        self.drain
            .filter(|_| self.backlog >= MIN_BACKLOG)
            .map(|d| self.backlog as f64 / d.as_secs_f64().max(1e-9))
    }

    /// Microseconds of CPU per event: (servers, their decision threads,
    /// database backends).
    fn per_event(spent: &CpuSpent, events: u64) -> (Option<f64>, Option<f64>, Option<f64>) {
        let per = |s: f64| s * 1e6 / events.max(1) as f64;
        (
            spent.servers.map(|c| per(c.total)),
            spent.servers.map(|c| per(c.projector)),
            spent.database.map(per),
        )
    }

    fn whole_per_delivery(&self, accepted: usize) -> (Option<f64>, Option<f64>, Option<f64>) {
        match self.caught_up {
            Some(_) => Self::per_event(&self.whole, accepted as u64),
            None => (None, None, None),
        }
    }

    fn drain_per_event(&self) -> (Option<f64>, Option<f64>, Option<f64>) {
        match self.drain_rate() {
            Some(_) => Self::per_event(&self.drain_cpu, self.backlog),
            None => (None, None, None),
        }
    }

    fn human(&self, accepted: usize) -> String {
        let mut s = match (self.caught_up, self.rate(accepted)) {
            (Some(d), Some(rate)) => {
                let decided = match self.decided {
                    Some(n) => format!("{n} decisions for {accepted} deliveries"),
                    None => format!("{accepted} deliveries"),
                };
                format!(
                    "\ndecisions: {decided}, every event applied {:.2} s after the first delivery: {rate:.0} /s",
                    d.as_secs_f64()
                )
            }
            _ => format!(
                "\ndecisions: the projector had not caught up {} s after the last delivery ({} events waiting)",
                DECIDE_TIMEOUT.as_secs(),
                self.behind.map_or("?".to_owned(), |n| n.to_string())
            ),
        };
        match self.drain_rate() {
            Some(rate) => s.push_str(&format!(
                "; {} events waiting when the intake finished, drained in {:.2} s: {rate:.0} /s",
                self.backlog,
                self.drain.unwrap_or_default().as_secs_f64()
            )),
            None => s.push_str(&format!(
                "; {} events waiting when the intake finished",
                self.backlog
            )),
        }
        let part = |(servers, projector, database): (Option<f64>, Option<f64>, Option<f64>)| {
            let mut p = match (servers, projector) {
                (Some(all), Some(proj)) => format!(
                    "servers {all:.0} µs (decision threads {proj:.0}, the rest {:.0})",
                    all - proj
                ),
                _ => String::new(),
            };
            if let Some(db) = database {
                p.push_str(&format!(", PostgreSQL backends {db:.0} µs"));
            }
            p
        };
        let whole = part(self.whole_per_delivery(accepted));
        if !whole.is_empty() {
            s.push_str(&format!(
                "\nCPU per delivery, first delivery to every event applied: {whole}"
            ));
            let drain = part(self.drain_per_event());
            if !drain.is_empty() {
                s.push_str(&format!("; per event drained with no intake: {drain}"));
            }
        }
        s
    }

    fn to_json(&self, accepted: usize) -> serde_json::Value {
        let us = |(servers, projector, database): (Option<f64>, Option<f64>, Option<f64>)| serde_json::json!({"servers": servers, "decision_threads": projector, "database": database});
        serde_json::json!({
            "decided": self.decided,
            "caught_up_s": self.caught_up.map(|d| d.as_secs_f64()),
            "throughput_per_s": self.rate(accepted),
            "backlog_events": self.backlog,
            "drain_s": self.drain.map(|d| d.as_secs_f64()),
            "drain_per_s": self.drain_rate(),
            "behind_events": self.behind,
            "cpu_us_per_delivery": us(self.whole_per_delivery(accepted)),
            "drain_cpu_us_per_event": us(self.drain_per_event()),
        })
    }
}

struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles, in milliseconds.
    fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        let at = |p: f64| -> f64 {
            if samples.is_empty() {
                return 0.0;
            }
            let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1] as f64 / 1e6
        };
        Self {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: at(1.0),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50": self.p50, "p90": self.p90, "p99": self.p99,
            "p99_9": self.p999, "max": self.max,
        })
    }
}

impl Report {
    fn new(args: &BenchArgs, mut outcome: Outcome, extra: Extra) -> Self {
        let latency = Percentiles::of(&mut outcome.latencies);
        let service = Percentiles::of(&mut outcome.service);
        Self {
            requests: args.requests,
            connections: args.connections,
            rate: args.rate,
            outcome,
            latency,
            service,
            extra,
        }
    }

    fn accepted(&self) -> usize {
        self.outcome.latencies.len()
    }

    fn errors(&self) -> usize {
        self.requests - self.accepted().min(self.requests)
    }

    fn throughput(&self) -> f64 {
        self.accepted() as f64 / self.outcome.elapsed.as_secs_f64().max(1e-9)
    }

    /// CPU used during the measured phase, in cores (1.0 = one core busy).
    fn cores(&self, cpu: Option<f64>) -> Option<f64> {
        cpu.map(|c| c / self.outcome.elapsed.as_secs_f64().max(1e-9))
    }

    fn human(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "{} deliveries in {:.2} s: {:.0} /s; ack latency p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms max {:.1} ms",
            self.accepted(),
            self.outcome.elapsed.as_secs_f64(),
            self.throughput(),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
        );
        match self.rate {
            Some(rate) => {
                let v = &self.service;
                s.push_str(&format!(
                    "\n(open loop at {rate} /s over {} connections, latency from each delivery's scheduled time; from the actual send: p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms)",
                    self.connections, v.p50, v.p99, v.p999
                ));
            }
            None => s.push_str(&format!(
                "\n(closed loop over {} connections)",
                self.connections
            )),
        }
        if let Some(bench) = self.cores(self.outcome.bench_cpu) {
            s.push_str(&format!("\nCPU: bench {:.0}% of a core", bench * 100.0));
            if let Some(server) = self.cores(self.outcome.server_cpu) {
                let per = self.outcome.server_cpu.unwrap_or(0.0) / self.accepted().max(1) as f64;
                s.push_str(&format!(
                    ", server {:.0}% ({:.0} µs per delivery)",
                    server * 100.0,
                    per * 1e6
                ));
            }
        }
        if let Some(d) = &self.extra.decisions {
            s.push_str(&d.human(self.accepted()));
        }
        if self.extra.servers > 1 {
            s.push_str(&format!(
                "\n{} servers, deliveries dealt to them in turn",
                self.extra.servers
            ));
        }
        if let Some(db) = &self.extra.database {
            s.push_str(&format!("\ndatabase: {db}"));
        }
        if self.errors() > 0 {
            let o = &self.outcome;
            let statuses: Vec<String> = o
                .statuses
                .iter()
                .map(|(status, n)| format!("{status}: {n}"))
                .collect();
            s.push_str(&format!(
                "\nerrors: {} of {} (responses by status {{{}}}, 200 but not accepted {}, transport errors {}, never sent {})",
                self.errors(),
                self.requests,
                statuses.join(", "),
                o.not_accepted,
                o.transport_errors,
                o.unsent,
            ));
        }
        s
    }

    fn to_json(&self) -> serde_json::Value {
        let o = &self.outcome;
        let statuses: serde_json::Map<String, serde_json::Value> = o
            .statuses
            .iter()
            .map(|(status, n)| (status.to_string(), (*n).into()))
            .collect();
        serde_json::json!({
            "requests": self.requests,
            "accepted": self.accepted(),
            "errors": self.errors(),
            "connections": self.connections,
            "rate": self.rate,
            "elapsed_s": o.elapsed.as_secs_f64(),
            "throughput_per_s": self.throughput(),
            "latency_ms": self.latency.to_json(),
            "service_time_ms": self.service.to_json(),
            "statuses": statuses,
            "not_accepted": o.not_accepted,
            "transport_errors": o.transport_errors,
            "unsent": o.unsent,
            "bench_cpu_cores": self.cores(o.bench_cpu),
            "server_cpu_cores": self.cores(o.server_cpu),
            "servers": self.extra.servers,
            "backend": self.extra.backend,
            "database": self.extra.database,
            "decisions": self.extra.decisions.as_ref().map(|d| d.to_json(self.accepted())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<u64> = (1..=1000).map(|ms| ms * 1_000_000).collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(p.p50, 500.0);
        assert_eq!(p.p99, 990.0);
        assert_eq!(p.p999, 999.0);
        assert_eq!(p.max, 1000.0);
    }

    #[test]
    fn prepared_deliveries_are_distinct_and_verify() {
        let target = Target::parse("http://127.0.0.1:9").unwrap();
        let secret = Secret::new("s3cret");
        let reqs = prepare(&[target], &secret, 3).unwrap();
        let verifier = didit::signature::Verifier::new(vec![secret]);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut sessions = std::collections::HashSet::new();
        let mut documents = std::collections::HashSet::new();
        for req in reqs {
            assert_eq!(req.uri().path(), WEBHOOK_PATH);
            assert_eq!(req.headers()[HOST], "127.0.0.1:9");
            let headers = didit::signature::SignatureHeaders::from_pairs(
                req.headers()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.to_str().unwrap())),
            );
            let body = collect(req.into_body());
            let verified = verifier.verify(&body, &headers, now).unwrap();
            let session = verified.body.get("session_id").unwrap().simple_text();
            let decision = verified.body.get("decision").unwrap();
            assert_eq!(decision.get("session_id").unwrap().simple_text(), session);
            let Some(Value::Array(docs)) = decision.get("id_verifications") else {
                panic!("no id_verifications")
            };
            documents.insert(docs[0].get("document_number").unwrap().simple_text());
            sessions.insert(session);
        }
        assert_eq!(sessions.len(), 3);
        assert_eq!(documents.len(), 3);
    }

    fn collect(body: Full<Bytes>) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(body.collect())
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn url_may_be_a_base_or_the_webhook() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path.path(), WEBHOOK_PATH);
        let t = Target::parse("http://localhost:1/hooks").unwrap();
        assert_eq!(t.path.path(), "/hooks");
    }

    /// `kycd bench` with these arguments, as clap reads them (without the
    /// environment's KYCD_DATABASE_URL, which would change the defaults).
    fn args(argv: &[&str]) -> BenchArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let mut args = Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .unwrap()
            .bench;
        if !argv.contains(&"--database-url") {
            args.database_url = None;
        }
        args
    }

    fn refused(argv: &[&str]) -> String {
        format!("{:#}", plan(&args(argv)).unwrap_err())
    }

    #[test]
    fn arguments_are_checked_before_anything_starts() {
        let pg = "postgres://u:hunter2@127.0.0.1/db";
        assert!(matches!(
            plan(&args(&[])).unwrap(),
            Plan::Start {
                backend: Backend::Embedded,
                instances: 1,
                ..
            }
        ));
        match plan(&args(&["--database-url", pg, "--instances", "3"])).unwrap() {
            Plan::Start {
                backend: Backend::Postgres(url),
                instances: 3,
                ..
            } => assert_eq!(url, pg),
            other => panic!("{other:?}"),
        }
        match plan(&args(&[
            "--url",
            "http://127.0.0.1:1",
            "--url",
            "http://127.0.0.1:2/webhooks/didit",
            "--secret",
            "s",
        ]))
        .unwrap()
        {
            Plan::Running { urls, secret } => {
                assert_eq!(urls.len(), 2);
                assert_eq!(secret, "s");
            }
            other => panic!("{other:?}"),
        }

        let e = refused(&["--instances", "3"]);
        assert!(e.contains("--database-url"), "{e}");
        assert!(refused(&["--instances", "0"]).contains("at least 1"));
        let e = refused(&["--database-url", "mysql://u:hunter2@h/db"]);
        assert!(e.contains("postgres://"), "{e}");
        assert!(
            !e.contains("hunter2"),
            "the URL's password is never shown: {e}"
        );
        let e = refused(&[
            "--url",
            "http://127.0.0.1:1",
            "--secret",
            "s",
            "--instances",
            "2",
        ]);
        assert!(e.contains("--url"), "{e}");
        assert!(refused(&["--url", "http://127.0.0.1:1"]).contains("--secret"));
        assert!(refused(&["--url", "https://127.0.0.1:1", "--secret", "s"]).contains("http://"));
        let e = refused(&[
            "--database-url",
            pg,
            "--instances",
            "3",
            "--connections",
            "2",
        ]);
        assert!(e.contains("number of servers (3)"), "{e}");
        assert!(refused(&["--rate", "0"]).contains("--rate"));
        assert!(refused(&["--requests", "0"]).contains("--requests"));
    }

    #[test]
    fn deliveries_are_dealt_round_robin_and_keep_their_server() {
        // The warm-up is the run's first 4 deliveries, the measured phase
        // the next 7, over 3 servers.
        let warmup = spread(vec!["w0", "w1", "w2", "w3"], 0, 3);
        assert_eq!(
            warmup,
            vec![vec![(0, "w0"), (3, "w3")], vec![(1, "w1")], vec![(2, "w2")]]
        );
        let measured: Vec<usize> = (4..11).collect();
        let dealt = spread(measured, 4, 3);
        for (server, items) in dealt.iter().enumerate() {
            for (j, run_index) in items {
                // Each keeps its index in the phase, for its due time...
                assert_eq!(*run_index, 4 + j);
                // ...and goes where `prepare` addressed it.
                assert_eq!(run_index % 3, server);
            }
        }
        assert_eq!(dealt.iter().map(Vec::len).collect::<Vec<_>>(), [2, 3, 2]);
        assert_eq!(spread(vec![1, 2], 0, 1), vec![vec![(0, 1), (1, 2)]]);
    }

    #[test]
    fn prepared_deliveries_are_addressed_to_their_server_in_turn() {
        let targets = [
            Target::parse("http://127.0.0.1:7").unwrap(),
            Target::parse("http://127.0.0.1:8/hooks").unwrap(),
        ];
        let reqs = prepare(&targets, &Secret::new("s"), 5).unwrap();
        let hosts: Vec<_> = reqs.iter().map(|r| r.headers()[HOST].clone()).collect();
        assert_eq!(
            hosts,
            [
                "127.0.0.1:7",
                "127.0.0.1:8",
                "127.0.0.1:7",
                "127.0.0.1:8",
                "127.0.0.1:7"
            ]
        );
        assert_eq!(reqs[1].uri().path(), "/hooks");
        assert_eq!(reqs[2].uri().path(), WEBHOOK_PATH);
    }

    #[test]
    fn decisions_are_counted_over_every_outcome() {
        let text = "# HELP kycd_decisions_total Decisions stored\n\
                    # TYPE kycd_decisions_total counter\n\
                    kycd_decisions_total{outcome=\"approve\"} 1200\n\
                    kycd_decisions_total{outcome=\"review\"} 34\n\
                    kycd_decisions_total_other 99\n\
                    kycd_decisions_totals 7\n";
        assert_eq!(counter_sum(text, "kycd_decisions_total"), 1234.0);
        assert_eq!(counter_sum("", "kycd_decisions_total"), 0.0);
    }

    #[test]
    fn backends_that_start_during_a_run_count_from_zero() {
        let before = BTreeMap::from([(10, 1.0), (11, 2.0), (12, 5.0)]);
        // 12 ended; 13 started.
        let after = BTreeMap::from([(10, 1.5), (11, 2.25), (13, 0.5)]);
        assert_eq!(backends_spent(&before, &after), 1.25);
    }
}
