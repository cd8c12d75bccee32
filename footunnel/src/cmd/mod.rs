//! One module per subcommand, as wireguard-tools has one file per `wg`
//! subcommand; what several share is here.

#[cfg(feature = "broker")]
pub mod broker;
pub mod client;
pub mod keygen;
#[cfg(feature = "broker")]
pub mod packaging;
#[cfg(feature = "broker")]
pub mod reload;
pub mod show;
#[cfg(feature = "broker")]
pub mod unload;

use anyhow::Result;

/// A single-threaded runtime: footunnel's loops are one task each.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Logs to stderr at info (debug for footunnel itself with -v), or as
/// FOOTUNNEL_LOG says (`target=level,...`, e.g. `footunnel=trace,info`).
pub fn init_logging(verbose: bool) {
    use tracing_subscriber::{filter::Targets, layer::SubscriberExt, util::SubscriberInitExt};
    let default = if verbose { "footunnel=debug,info" } else { "info" };
    let from_env = std::env::var("FOOTUNNEL_LOG").ok();
    let targets: Targets = match from_env.as_deref().map(str::parse::<Targets>) {
        Some(Ok(targets)) => targets,
        Some(Err(e)) => {
            eprintln!("footunnel: FOOTUNNEL_LOG ignored ({e}): write it as target=level,... e.g. footunnel=debug,info");
            default.parse().expect("a valid default")
        }
        None => default.parse().expect("a valid default"),
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour needs tracing-subscriber's `ansi` feature, which the router
        // build (no `broker` feature) leaves out to stay small.
        .with_ansi(cfg!(feature = "broker") && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry().with(stderr).with(targets).init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

pub fn parse_metrics(s: &str) -> Result<std::net::SocketAddr, String> {
    footunnel::config::parse_metrics_address(s).map_err(|e| e.to_string())
}
