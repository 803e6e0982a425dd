//! Runs the Didit simulator from the command line:
//!
//! ```text
//! cargo run -p kycd-sim --example didit-sim -- \
//!     --users 200 --time-scale 600 --webhook http://127.0.0.1:8080/webhooks/didit \
//!     --secret your-didit-secret --faults demo
//! ```
//!
//! Options: `--users N` (default 20), `--seed S` (0), `--time-scale X` (600),
//! `--webhook URL` (repeatable; append `#v1` or `#v2` for older payload
//! versions), `--secret S`, `--api-key K`, `--listen ADDR` (127.0.0.1:0),
//! `--faults none|demo`, `--keep` (keep serving the API after the run until
//! Ctrl-C). Prints the stats as JSON when the run has settled.

use std::time::Duration;

use anyhow::{bail, Context};
use kycd_sim::{DestinationConfig, Faults, SimConfig, WebhookVersion};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut config = SimConfig {
        time_scale: 600.0,
        ..SimConfig::default()
    };
    let mut users = 20usize;
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--users" => users = value()?.parse()?,
            "--seed" => config.seed = value()?.parse()?,
            "--time-scale" => config.time_scale = value()?.parse()?,
            "--secret" => config.webhook_secret = value()?,
            "--api-key" => config.api_key = value()?,
            "--listen" => config.listen = value()?.parse()?,
            "--faults" => {
                config.faults = match value()?.as_str() {
                    "none" => Faults::none(),
                    "demo" => Faults::demo_default(),
                    other => bail!("unknown faults preset {other:?}"),
                }
            }
            "--webhook" => {
                let spec = value()?;
                let (url, version) = match spec.rsplit_once('#') {
                    Some((url, v)) => (
                        url.to_owned(),
                        WebhookVersion::parse(v).with_context(|| format!("bad version {v:?}"))?,
                    ),
                    None => (spec, WebhookVersion::V3),
                };
                config
                    .destinations
                    .push(DestinationConfig::new(url).version(version));
            }
            "--keep" => keep = true,
            other => bail!("unknown option {other:?} (see the example's source for usage)"),
        }
    }

    let sim = kycd_sim::start(config).await?;
    println!("didit simulator at {}", sim.base_url());
    println!("  api key:              {}", sim.api_key());
    println!("  kyc workflow:         {}", sim.kyc_workflow_id());
    println!("  biometric workflow:   {}", sim.biometric_workflow_id());
    let run = sim.run(users);
    println!("running {} customers ...", run.vendor_data().len());
    sim.wait_settled(Duration::from_secs(24 * 3600)).await?;
    println!("{}", serde_json::to_string_pretty(&sim.stats())?);
    if keep {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    sim.shutdown().await;
    Ok(())
}
