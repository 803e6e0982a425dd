//! `kycd bench`: a load generator for the webhook intake.
//!
//! It fires distinct, freshly signed Didit deliveries at a running intake over
//! loopback and reports throughput and acknowledgement latency. Without
//! `--url` it starts `kycd serve` itself on a free port and a fresh data
//! directory, and stops it (SIGTERM) at the end.
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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
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

/// The v3 delivery every bench request is made from: a full `Approved`
/// decision (the `approved_full_decision` vector of docs/didit-protocol.md section 6),
/// about 1.9 KB on the wire. Ids, `vendor_data` and `timestamp` are replaced
/// per delivery.
const TEMPLATE: &str = r#"{"application_id":"0b6f3c2e-7d41-4a55-9a0e-3f1c2d4e5a6b","created_at":1774969994,"decision":{"aml_screenings":[{"hits":[],"node_id":"feature_aml_1","score":0,"status":"Approved","total_hits":0,"warnings":[]}],"created_at":"2026-03-31T15:13:14.123456Z","database_validations":null,"email_verifications":null,"environment":"live","face_matches":[{"node_id":"feature_face_match_1","score":91.3,"status":"Approved","warnings":[]}],"features":["ID_VERIFICATION","LIVENESS","FACE_MATCH","AML","IP_ANALYSIS"],"id_verifications":[{"age":37,"date_of_birth":"1988-04-02","document_number":"X1234567","document_type":"Passport","expiration_date":"2031-01-09","first_name":"J\u00fcrgen","full_name":"J\u00fcrgen Gro\u00df","gender":"M","issuing_state":"DEU","last_name":"Gro\u00df","mrz":"P<D<<GROSS<<JUERGEN<<<<<<<<<<<<<<<<<<<<<<<<<<","nationality":"DEU","node_id":"feature_ocr_1","status":"Approved","warnings":[]}],"ip_analyses":[{"ip_address":"85.123.45.67","ip_country_code":"DE","is_data_center":false,"is_vpn_or_tor":false,"latitude":52.52,"longitude":13.405,"node_id":"feature_ip_analysis_1","status":"Approved","warnings":[]}],"liveness_checks":[{"age_estimation":36.4,"face_quality":88,"matches":[],"method":"PASSIVE","node_id":"feature_liveness_1","score":97.25,"status":"Approved","warnings":[]}],"metadata":null,"nfc_verifications":null,"phone_verifications":null,"poa_verifications":null,"questionnaire_responses":null,"reviews":[],"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","session_number":4211,"status":"Approved","vendor_data":"user-1001"},"environment":"live","event_id":"5f0c1d2e-3a4b-4c5d-8e9f-a0b1c2d3e4f5","metadata":{"plan":"pro"},"session_id":"c3d4e5f6-a7b8-4c9d-8e0f-112233445566","status":"Approved","timestamp":1774970000,"vendor_data":"user-1001","webhook_type":"status.updated","workflow_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","workflow_version":2}"#;

const WEBHOOK_PATH: &str = "/webhooks/didit";

/// How long a self-started server may take to print its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a self-started server may take to shut down after SIGTERM
/// before it is killed. Its data is thrown away, so there is no point in
/// waiting for, say, the projection to catch up.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A running intake, `http://HOST:PORT` or the full webhook URL. Without
    /// it the bench starts `kycd serve` on a free port and a fresh data
    /// directory and stops it at the end.
    #[arg(long)]
    url: Option<String>,
    /// The webhook secret the intake accepts (required with --url).
    #[arg(long, env = "KYCD_BENCH_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Measured deliveries.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Concurrent keep-alive connections.
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
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
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
    let (target, secret, server) = match &args.url {
        Some(url) => {
            let secret = args
                .secret
                .clone()
                .context("--secret (or KYCD_BENCH_SECRET) is required with --url")?;
            (Target::parse(url)?, secret, None)
        }
        None => {
            let secret = args.secret.clone().unwrap_or_else(|| random_hex(32));
            let server = Server::start(&secret)?;
            (Target::parse(&server.url)?, secret, Some(server))
        }
    };

    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("building the bench runtime")?
        .block_on(bench(
            &args,
            &target,
            &Secret::new(secret),
            server.as_ref().and_then(Server::pid),
        ));

    // Stop the server whatever happened, but report the bench's error first.
    // Its data is thrown away, so a slow shutdown only earns a note.
    if let Some(server) = server {
        if let Err(e) = server.stop() {
            eprintln!("note: {e:#}");
        }
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
    target: &Target,
    secret: &Secret,
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let requests = prepare(target, secret, args.warmup + args.requests)?;
    let mut measured = requests;
    let warmup: Vec<_> = measured.drain(..args.warmup).collect();

    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        senders.push(connect(target).await?);
    }
    if !warmup.is_empty() {
        let (s, _) = phase(target, senders, warmup, args.rate).await;
        senders = s;
    }
    let before = (
        cpu_time("self"),
        server_pid.and_then(|p| cpu_time(&p.to_string())),
    );
    let (_, mut outcome) = phase(target, senders, measured, args.rate).await;
    let after = (
        cpu_time("self"),
        server_pid.and_then(|p| cpu_time(&p.to_string())),
    );
    outcome.bench_cpu = before.0.zip(after.0).map(|(b, a)| a - b);
    outcome.server_cpu = before.1.zip(after.1).map(|(b, a)| a - b);
    Ok(Report::new(args, outcome))
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat`; `None` where there is no such file.
fn cpu_time(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is the first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux platform kycd targets.
    Some((utime + stime) / 100.0)
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

/// Sign `n` distinct deliveries and build their requests. Each has its own
/// session, event id and vendor data; all carry the current time.
fn prepare(
    target: &Target,
    secret: &Secret,
    n: usize,
) -> anyhow::Result<Vec<Request<Full<Bytes>>>> {
    let template = Value::parse(TEMPLATE.as_bytes())
        .map_err(|e| anyhow!("bench template does not parse: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs();
    let host = HeaderValue::from_str(&target.authority).context("invalid host")?;
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
        *req.uri_mut() = target.path.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, host.clone());
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
    /// CPU seconds the bench and (if it started it) the server used.
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

/// The requests of a phase, handed out in order to whichever connection is
/// free; the index gives a request's due time in open loop.
type Queue = Mutex<std::iter::Enumerate<std::vec::IntoIter<Request<Full<Bytes>>>>>;

/// Send `requests` over `senders` and wait for every acknowledgement.
/// Returns the connections still usable, for the next phase.
async fn phase(
    target: &Target,
    senders: Vec<SendRequest<Full<Bytes>>>,
    requests: Vec<Request<Full<Bytes>>>,
    rate: Option<f64>,
) -> (Vec<SendRequest<Full<Bytes>>>, Outcome) {
    let total = requests.len();
    let workers = senders.len();
    let queue: Arc<Queue> = Arc::new(Mutex::new(requests.into_iter().enumerate()));
    let per_task = total / senders.len().max(1) + 16;
    let start = Instant::now();

    // In open loop a pacer thread releases one permit per due delivery. A
    // plain thread sleeps with far finer resolution than the runtime's 1 ms
    // timer wheel, which would otherwise add up to 1 ms of bench-made delay.
    let gate = rate.map(|r| {
        (
            Arc::new(Semaphore::new(0)),
            Duration::from_secs_f64(1.0 / r),
        )
    });
    let pacer = gate.as_ref().map(|(sem, interval)| {
        let sem = sem.clone();
        let interval = *interval;
        std::thread::spawn(move || pace(&sem, start, interval, total, workers))
    });

    let mut tasks = Vec::with_capacity(senders.len());
    for sender in senders {
        let queue = queue.clone();
        let gate = gate.clone();
        let authority = target.authority.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                latencies: Vec::with_capacity(per_task),
                service: Vec::with_capacity(per_task),
                ..Outcome::default()
            };
            let sender = worker(sender, &queue, gate, start, &authority, &mut out).await;
            (sender, out)
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
    // Whatever no connection could take was never sent.
    if let Ok(mut rest) = queue.lock() {
        outcome.unsent += rest.by_ref().count();
    }
    if let Some((sem, _)) = &gate {
        sem.close();
    }
    if let Some(pacer) = pacer {
        let _ = pacer.join();
    }
    (alive, outcome)
}

fn pace(sem: &Semaphore, start: Instant, interval: Duration, total: usize, workers: usize) {
    let mut released = 0usize;
    while released < total && !sem.is_closed() {
        let due =
            ((start.elapsed().as_secs_f64() / interval.as_secs_f64()) as usize + 1).min(total);
        if due > released {
            sem.add_permits(due - released);
            released = due;
        }
        let next = start + interval.mul_f64(released as f64);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    // One permit more per worker: a worker waiting for a permit after the
    // last delivery was taken wakes, finds the queue empty and stops.
    sem.add_permits(workers);
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
    fn new(args: &BenchArgs, mut outcome: Outcome) -> Self {
        let latency = Percentiles::of(&mut outcome.latencies);
        let service = Percentiles::of(&mut outcome.service);
        Self {
            requests: args.requests,
            connections: args.connections,
            rate: args.rate,
            outcome,
            latency,
            service,
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
        })
    }
}

/// A `kycd serve` the bench started itself.
struct Server {
    child: Option<Child>,
    url: String,
    /// Holds the data directory and the server's log; removed at the end.
    root: PathBuf,
}

impl Server {
    fn start(secret: &str) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!(
            "kycd-bench-{}-{}",
            std::process::id(),
            random_hex(4)
        ));
        let data = root.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let log_path = root.join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let exe = std::env::current_exe().context("locating the kycd binary")?;
        let child = Command::new(exe)
            .arg("serve")
            .env("KYCD_LISTEN", "127.0.0.1:0")
            .env("KYCD_DATA_DIR", &data)
            .env("KYCD_WEBHOOK_SECRETS", secret)
            .env("KYCD_API_TOKEN", random_hex(16))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting kycd serve");
        let mut server = Self {
            child: None,
            url: String::new(),
            root,
        };
        let mut child = child?;
        let stdout = child.stdout.take();
        server.child = Some(child);
        let stdout = stdout.context("no stdout from kycd serve")?;
        match wait_listening(stdout) {
            Ok(url) => {
                server.url = url;
                Ok(server)
            }
            Err(e) => {
                let tail = log_tail(&log_path);
                Err(e.context(format!(
                    "kycd serve did not start; its log ends with:\n{tail}"
                )))
            }
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, wait for the graceful shutdown, then remove the data.
    fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let term = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let status = loop {
            match child.try_wait().context("waiting for kycd serve")? {
                Some(status) => break Some(status),
                None if term.is_err() || Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => bail!(
                "kycd serve exited with {s}; log:\n{}",
                log_tail(&self.root.join("server.log"))
            ),
            None => bail!(
                "kycd serve did not stop within {SHUTDOWN_TIMEOUT:?} of SIGTERM and was killed"
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
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
        let reqs = prepare(&target, &secret, 3).unwrap();
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
}
