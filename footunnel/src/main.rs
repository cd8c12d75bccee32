//! `footunnel`: the operator's command; each subcommand is a module of
//! `cmd`.

#![warn(clippy::too_many_lines)]

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "footunnel",
    version,
    about = "Foo-over-UDP tunnels that follow clients behind NATs",
    long_about = "footunnel keeps Foo-over-UDP (FoU) tunnels up to clients whose public address and \
NAT-assigned UDP port may change. An eBPF program on the broker's uplink verifies authenticated \
heartbeats and records where each tunnel's client is; the broker re-points the tunnel's ipip link to it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: keep each tunnel's link pointed at its client.
    #[cfg(feature = "broker")]
    #[command(long_about = cmd::broker::HELP)]
    Broker(Box<cmd::broker::Args>),
    /// Keep the broker informed of where this end of the tunnel is.
    #[command(long_about = cmd::client::HELP)]
    Client(Box<cmd::client::Args>),
    /// Show tunnels, endpoints and counters (broker: from its pinned maps; client: its last ACK).
    #[command(long_about = cmd::show::HELP)]
    Show(cmd::show::Args),
    /// Print a fresh random tunnel secret (192 bits) to share between broker and client.
    Keygen(cmd::keygen::Args),
    /// Make the running broker re-read its configuration (as SIGHUP does) and report the outcome.
    #[cfg(feature = "broker")]
    #[command(long_about = cmd::reload::HELP)]
    Reload(cmd::reload::Args),
    /// Write the manual pages (section 8) into DIR; packaging uses this.
    #[cfg(feature = "broker")]
    #[command(hide = true)]
    Manpages { dir: std::path::PathBuf },
    /// Write shell completions for bash, zsh and fish into DIR; packaging uses this.
    #[cfg(feature = "broker")]
    #[command(hide = true)]
    Completions { dir: std::path::PathBuf },
    /// Detach the broker's eBPF program and remove its pinned maps.
    #[cfg(feature = "broker")]
    Unload(cmd::unload::Args),
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("footunnel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "broker")]
        Command::Broker(args) => cmd::broker::run(*args),
        Command::Client(args) => cmd::client::run(*args),
        Command::Show(args) => cmd::show::run(args),
        Command::Keygen(args) => cmd::keygen::run(args),
        #[cfg(feature = "broker")]
        Command::Reload(args) => cmd::reload::run(args),
        #[cfg(feature = "broker")]
        Command::Manpages { dir } => cmd::packaging::write_manpages(&dir, <Cli as clap::CommandFactory>::command()),
        #[cfg(feature = "broker")]
        Command::Completions { dir } => {
            cmd::packaging::write_completions(&dir, <Cli as clap::CommandFactory>::command())
        }
        #[cfg(feature = "broker")]
        Command::Unload(args) => cmd::unload::run(args),
    }
}
