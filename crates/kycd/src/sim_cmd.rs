//! `kycd sim`: the Didit simulator as a standalone server, for trying
//! `kycd serve` (or any receiver) without a Didit account.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use kycd_sim::{DestinationConfig, Faults, SimConfig, WebhookVersion};

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Where the simulated Didit API listens.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// The API key clients must send as `x-api-key`.
    #[arg(
        long,
        env = "KYCD_SIM_API_KEY",
        hide_env_values = true,
        default_value = "sim-api-key"
    )]
    pub api_key: String,
    /// The application's webhook secret (give kycd the same one in
    /// `KYCD_WEBHOOK_SECRETS`).
    #[arg(long, env = "KYCD_SIM_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: String,
    /// A webhook destination; append `#v1` or `#v2` for the older payload
    /// versions. Repeatable; more can be added with
    /// `POST /v3/webhook/destinations/`.
    #[arg(long = "webhook")]
    pub webhooks: Vec<String>,
    /// Simulated customers to run at start (0: only serve the API).
    #[arg(long, default_value_t = 0)]
    pub users: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How much faster than real time customers, retries and rate-limit
    /// windows run.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Delivery faults: `none`, or `demo` (duplicates, reordering, delays).
    #[arg(long, default_value = "none")]
    pub faults: String,
    /// Share of deliveries lost for good (overrides the preset).
    #[arg(long)]
    pub loss: Option<f64>,
    /// `sandbox` or `live`.
    #[arg(long, default_value = "sandbox")]
    pub environment: String,
    /// Exit once the customers have finished and every delivery settled,
    /// printing the simulator's statistics as JSON.
    #[arg(long)]
    pub exit_when_settled: bool,
}

fn destination(spec: &str) -> anyhow::Result<DestinationConfig> {
    let (url, version) = match spec.rsplit_once('#') {
        Some((url, v)) => (
            url,
            WebhookVersion::parse(v).with_context(|| format!("unknown webhook version {v:?}"))?,
        ),
        None => (spec, WebhookVersion::V3),
    };
    Ok(DestinationConfig::new(url).version(version))
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    crate::logging::init(&crate::config::env_only(&crate::config::process_env())?);
    let mut faults = match args.faults.as_str() {
        "none" => Faults::none(),
        "demo" => Faults::demo_default(),
        other => bail!("unknown --faults {other:?}: use none or demo"),
    };
    if let Some(loss) = args.loss {
        if !(0.0..=1.0).contains(&loss) {
            bail!("--loss must be between 0 and 1");
        }
        faults.loss = loss;
    }
    let destinations = args
        .webhooks
        .iter()
        .map(|w| destination(w))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = SimConfig {
        api_key: args.api_key,
        webhook_secret: args.secret,
        seed: args.seed,
        time_scale: args.time_scale,
        faults,
        environment: args.environment,
        listen: args.listen,
        destinations,
        ..SimConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let sim = kycd_sim::start(config).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "didit simulator on {}", sim.base_url())?;
        writeln!(out, "  kyc workflow        {}", sim.kyc_workflow_id())?;
        writeln!(out, "  biometric workflow  {}", sim.biometric_workflow_id())?;
        out.flush()?;
        drop(out);
        if args.users > 0 {
            sim.run(args.users);
        }
        if args.exit_when_settled {
            sim.wait_settled(Duration::from_secs(7 * 86_400)).await?;
            println!("{}", serde_json::to_string_pretty(&sim.stats())?);
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
        sim.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}
