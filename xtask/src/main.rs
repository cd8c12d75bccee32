//! footunnel's developer tasks. `cargo xtask --help` lists them.

mod bench;
mod build_ebpf;
mod cmd;
mod deb;
mod demo;
mod dist;
mod lint;
mod router_bench;
mod setup;
mod systemd_vm;
mod test;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "footunnel's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh Debian machine lacks (idempotent; seconds when all is present).
    Setup,
    /// Build the eBPF programs for bpfel-unknown-none, with BTF, where the userspace embeds them.
    BuildEbpf,
    /// Run every test stage: setup, build-ebpf, unit, privileged host, VM.
    Test(test::Options),
    /// Run a command in a VM booted from Debian's kernel (which has fou/ipip) over this root filesystem.
    Vm(vm::Options),
    /// Measure the claims (per-packet cost, flood, failover, scale); write bench/results.{md,json}.
    Bench(bench::Options),
    /// Build the client alone as static musl binaries for routers (five targets), in target/dist/.
    Dist(dist::Options),
    /// Build the Debian package: binary, systemd units, example configuration, manual pages (target/debian/).
    Deb,
    /// Show a tunnel following its client through an address change and a NAT port change.
    Demo,
    /// The demo itself, on a kernel with fou (`demo` starts it, in the VM if needed).
    #[command(hide = true)]
    DemoInside,
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => build_ebpf::run(),
        Task::Test(opts) => test::run(opts),
        Task::Vm(opts) if opts.systemd => {
            let boot = systemd_vm::Boot {
                memory: opts.memory.clone(),
                cpus: opts.cpus,
                timeout: std::time::Duration::from_secs(opts.timeout),
            };
            std::process::exit(systemd_vm::run(&boot, &opts.command)?)
        }
        Task::Vm(opts) => std::process::exit(vm::run(&opts)?),
        Task::Deb => deb::run(),
        Task::Dist(opts) => dist::run(&opts),
        Task::Demo => demo::run(),
        Task::Bench(opts) => bench::run(&opts),
        Task::DemoInside => demo::inside(),
    }
}
