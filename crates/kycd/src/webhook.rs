//! `kycd webhook verify|sign`: tools for people integrating with Didit.
//!
//! `verify` answers "would kycd accept this delivery, and by which
//! signature?" for a body saved to a file and the headers it came with.
//! `sign` produces a delivery exactly as Didit would send it, for fixtures
//! and for driving a receiver by hand.
//!
//! Bodies carry personal data, so nothing here ever prints any part of a
//! body or payload: errors name files, header positions and byte offsets.
//! Secrets are parsed straight into [`Secret`], whose `Debug` is redacted.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::ArgAction;
use didit::canonical::{CanonicalError, Value};
use didit::signature::{self, Scheme, Secret, SignatureHeaders, Verifier, DEFAULT_TOLERANCE_SECS};

#[derive(Debug, clap::Subcommand)]
pub enum WebhookCmd {
    /// Check a saved delivery's signatures the way kycd's intake does.
    ///
    /// Prints which signature verified (`verified: raw|v2|simple (secret #N)`)
    /// and exits 0, or prints `not verified: <reason>: <why>` and exits 1.
    /// Exits 2 on a usage error (unreadable body file, bad --header).
    ///
    /// Unlike the server, this tool accepts a delivery that only passes
    /// X-Signature-Simple by default, reporting it as verified with a
    /// warning that only the envelope is authentic; pass
    /// `--accept-simple=false` to refuse it as the server does by default.
    Verify(VerifyArgs),
    /// Sign a JSON payload read on stdin exactly as Didit would deliver it.
    ///
    /// Prints `{"headers": {...}, "body": "..."}`: the canonical ASCII body
    /// and the headers Didit sends with it (Content-Type, User-Agent,
    /// X-Signature, X-Signature-V2, X-Signature-Simple, X-Timestamp).
    Sign(SignArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The destination's secret_shared_key; repeat to try several (the
    /// first is the current one, as during a rotation).
    #[arg(long = "secret", value_name = "SECRET", required = true, value_parser = parse_secret)]
    secrets: Vec<Secret>,
    /// File holding the body exactly as received.
    #[arg(long, value_name = "FILE")]
    body: PathBuf,
    /// A received header as `Name: value`; repeat for each. Names are
    /// case-insensitive; headers other than X-Signature, X-Signature-V2,
    /// X-Signature-Simple and X-Timestamp are ignored.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Use this Unix time (seconds) as the clock, e.g. the payload's
    /// timestamp to check an old fixture.
    #[arg(long, value_name = "UNIX")]
    now: Option<i64>,
    /// Freshness window in seconds, either direction.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = DEFAULT_TOLERANCE_SECS,
        value_parser = clap::value_parser!(i64).range(0..)
    )]
    tolerance: i64,
    /// Report a delivery that only passes X-Signature-Simple as verified
    /// (envelope only). On by default here; `--accept-simple=false`
    /// refuses it, as the server does unless configured otherwise.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = ArgAction::Set
    )]
    accept_simple: bool,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The secret_shared_key to sign with; if repeated, the first is used.
    #[arg(long = "secret", value_name = "SECRET", required = true, value_parser = parse_secret)]
    secrets: Vec<Secret>,
    /// Set the payload's top-level `timestamp` to the current Unix time
    /// (replacing or adding it) before signing.
    #[arg(long)]
    now: bool,
}

pub fn run(cmd: WebhookCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        WebhookCmd::Verify(args) => verify(args),
        WebhookCmd::Sign(args) => sign(args),
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    if s.is_empty() {
        return Err("the secret is empty".to_owned());
    }
    Ok(Secret::new(s))
}

/// Split `Name: value` at the first colon. The error names the header by
/// position only, since a mangled line might hold anything.
fn parse_header(position: usize, line: &str) -> anyhow::Result<(&str, &str)> {
    let Some((name, value)) = line.split_once(':') else {
        bail!("--header #{position} has no ':'; expected 'Name: value'");
    };
    let name = name.trim();
    if name.is_empty() {
        bail!("--header #{position} has an empty name; expected 'Name: value'");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("--header #{position} has a name with spaces or non-ascii characters");
    }
    Ok((name, value.trim()))
}

fn unix_now() -> anyhow::Result<i64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    i64::try_from(since.as_secs()).context("the system clock is out of range")
}

fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let pairs = args
        .headers
        .iter()
        .enumerate()
        .map(|(i, line)| parse_header(i + 1, line))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = std::fs::read(&args.body)
        .with_context(|| format!("cannot read body file {}", args.body.display()))?;
    let headers = SignatureHeaders::from_pairs(pairs);
    let now = match args.now {
        Some(now) => now,
        None => unix_now()?,
    };
    let verifier = Verifier::new(args.secrets)
        .with_tolerance_secs(args.tolerance)
        .accept_simple(args.accept_simple);

    let mut out = std::io::stdout().lock();
    match verifier.verify(&body, &headers, now) {
        Ok(v) => {
            writeln!(
                out,
                "verified: {} (secret #{})",
                v.scheme.as_str(),
                v.secret_index + 1
            )?;
            if v.envelope_only() {
                writeln!(
                    out,
                    "warning: only the envelope (timestamp, session_id, status, webhook_type) \
                     is authentic; the decision in this body must not be trusted: fetch it \
                     from GET /v3/session/{{id}}/decision/"
                )?;
            }
            if v.scheme == Scheme::V2 && headers.x_signature.is_some() {
                writeln!(
                    out,
                    "note: X-Signature did not match, so the body was re-encoded after Didit \
                     signed it (by a proxy or a framework)"
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "not verified: {}: {e}", e.reason())?;
            if let Some(hint) = hint(&e, args.now.is_some()) {
                writeln!(out, "hint: {hint}")?;
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn hint(e: &signature::VerifyError, clock_given: bool) -> Option<&'static str> {
    use signature::VerifyError as E;
    match e {
        E::MissingSignature => Some(
            "pass the received headers with --header 'X-Signature: ...' \
             (and X-Signature-V2, X-Signature-Simple, X-Timestamp)",
        ),
        E::BadSignature => Some(
            "check the secret (the destination's secret_shared_key, used as text) and \
             that the body file holds the bytes exactly as received",
        ),
        E::SimpleNotAccepted => Some(
            "only the four envelope fields are authentic; the rest of the body was \
             changed or is not covered by any signature",
        ),
        E::Stale { .. } | E::Future { .. } if !clock_given => {
            Some("to check an old fixture, pass --now with the payload's timestamp")
        }
        _ => None,
    }
}

/// What `sign` prints. Field order is the order they are written in.
#[derive(serde::Serialize)]
struct SignOutput {
    headers: serde_json::Map<String, serde_json::Value>,
    body: String,
}

fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let Some(secret) = args.secrets.first() else {
        bail!("no --secret given");
    };
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .context("cannot read the payload from stdin")?;
    if input.iter().all(u8::is_ascii_whitespace) {
        bail!("stdin is empty: pipe a json payload in, e.g. `kycd webhook sign --secret S < payload.json`");
    }
    let mut payload = Value::parse(&input).map_err(|e| not_json(&e, input.len()))?;
    if !matches!(payload, Value::Object(_)) {
        bail!("the payload on stdin is json but not an object, as every Didit delivery is");
    }
    if args.now {
        let now = unix_now()?;
        payload.set("timestamp", Value::Number(now.to_string().into()));
    }
    if payload.get("timestamp").is_none() {
        eprintln!(
            "warning: the payload has no top-level timestamp, so no X-Timestamp is sent \
             and receivers will refuse it (pass --now to add one)"
        );
    }

    let signed = signature::sign(secret, &payload);
    let body = String::from_utf8(signed.body).map_err(|_| {
        anyhow!("the canonical body is not ascii; this is a bug in didit::canonical")
    })?;
    let headers = signed
        .headers
        .into_iter()
        .map(|(name, value)| (name.to_owned(), serde_json::Value::String(value)))
        .collect();
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &SignOutput { headers, body })?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The error for a payload that does not parse. `CanonicalError` carries
/// only offsets, never input; an unexpected end is given the input's length
/// as its offset so every message says where.
fn not_json(e: &CanonicalError, len: usize) -> anyhow::Error {
    match e {
        CanonicalError::UnexpectedEnd => {
            anyhow!("the payload on stdin is not json: unexpected end of input at byte {len}")
        }
        other => anyhow!("the payload on stdin is not json: {other}"),
    }
}
