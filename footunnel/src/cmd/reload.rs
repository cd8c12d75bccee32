//! `footunnel reload`: make the running broker re-read its configuration.

use std::path::PathBuf;

use anyhow::{Result, bail};
use footunnel::{broker, config};

pub const HELP: &str = "Make the running broker re-read its configuration, as SIGHUP does, and
report the outcome (exit status 1 if the new configuration was refused).

New tunnels start, removed ones stop (links footunnel created for them are
removed; links made by hand stay), changed ones change. A tunnel whose name and
link stay keeps its link, endpoint and counters, and its traffic flows on, also
when its secret is rotated (next_secret, see `footunnel broker --help`).
A configuration that fails any check changes nothing: the running one stays, and
the error says what to fix. pin_dir, state_dir, attach, interfaces, fou_ports,
legacy_port, metrics, mode and [shared] place the data plane or its listener and
need a restart.";

#[derive(clap::Args)]
pub struct Args {
    /// Where the broker keeps its state file.
    #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let outcome = broker::request_reload(&args.state_dir, std::time::Duration::from_secs(30))?;
    if !outcome.ok {
        bail!("reload refused, the running configuration stays: {}", outcome.message);
    }
    println!("reloaded: {}", outcome.message);
    Ok(())
}
