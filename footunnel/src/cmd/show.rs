//! `footunnel show`: tunnels, endpoints and counters, on a broker and on a
//! client.

use std::path::PathBuf;

use anyhow::{Result, bail};
#[cfg(feature = "broker")]
use footunnel::broker::show;
use footunnel::{client, config};

pub const HELP: &str = "Show tunnels, endpoints and counters: on a broker from its pinned maps and
state file, on a client from its last ACK (also each footunnel-client@NAME's,
under STATE_DIR/client-NAME).

On a broker the endpoint is what the data plane recorded from the client's
latest heartbeat; the controller applies it to the link. `link points at`
appears when the kernel's link sends elsewhere (the controller is not
running, stalled or could not re-point it), and `controller: NOT RUNNING`
when the state file's process is gone.

--check prints nothing but problems and exits 1 if there is one: the
controller not running, the shared device down, a link that cannot be read
or points elsewhere than its endpoint. Use it from monitoring, keepalived's
track_script or a BIRD health check.";

#[derive(clap::Args)]
pub struct Args {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// Exit status 1, with the reasons, unless the broker's controller runs and every
    /// tunnel's link points at its endpoint (for monitoring and health checks).
    #[cfg(feature = "broker")]
    #[arg(long)]
    check: bool,
    /// Where the broker keeps its state file.
    #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    #[cfg(feature = "broker")]
    let broker = {
        let mut broker = show::collect(&args.state_dir);
        if let Ok(report) = &mut broker {
            super::runtime()?.block_on(show::read_links(report))?;
        }
        if args.check {
            return check(broker?);
        }
        broker
    };
    // The client alone has no broker to report.
    #[cfg(not(feature = "broker"))]
    let broker: Result<()> = Err(anyhow::anyhow!("this footunnel is built without the broker"));
    let clients = client_states(&args.state_dir);
    if let (Err(e), true) = (&broker, clients.is_empty()) {
        bail!(
            "{e:#}; no client state there either (nor in {}/client-*): is footunnel running with --state-dir {}?",
            args.state_dir.display(),
            args.state_dir.display()
        );
    }
    let broker = broker.ok();
    let now = footunnel::now_ns();
    if args.json {
        // One client (the common case) as an object, as before; several as a list.
        let client = match clients.as_slice() {
            [] => serde_json::Value::Null,
            [one] => serde_json::to_value(one)?,
            many => serde_json::to_value(many)?,
        };
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "broker": broker, "client": client }))?);
    } else {
        #[cfg(feature = "broker")]
        if let Some(report) = &broker {
            print!("{}", show::render(report, now));
        }
        for state in &clients {
            print!("{}", client::render(state, now));
        }
    }
    Ok(())
}

/// `--check`: problems only, and a failing exit status if there is one.
#[cfg(feature = "broker")]
fn check(report: show::Report) -> Result<()> {
    let problems = show::problems(&report);
    if problems.is_empty() {
        println!("ok: the controller runs and every link points at its endpoint");
        return Ok(());
    }
    for p in &problems {
        println!("{p}");
    }
    bail!("{} problem(s) (above)", problems.len())
}

/// The client state in `dir`, and in each `dir/client-NAME` (where the unit
/// `footunnel-client@NAME` keeps it), so `footunnel show` needs no flag.
fn client_states(dir: &std::path::Path) -> Vec<client::ClientState> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut units: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("client-"))
            .map(|e| e.path())
            .collect();
        units.sort();
        dirs.extend(units);
    }
    dirs.iter().filter_map(|d| client::read_state(d).ok()).collect()
}
