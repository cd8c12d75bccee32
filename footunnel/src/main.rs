//! `footunnel`: the operator's command.

use anyhow::Result;
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
    /// Print a fresh random tunnel secret (192 bits) to share between broker and client.
    Keygen,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Keygen => println!("{}", footunnel::secret::generate()?),
    }
    Ok(())
}
