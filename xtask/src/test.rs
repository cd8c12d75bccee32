//! `cargo xtask test`: every stage in order, a summary with wall times, and a
//! non-zero exit if any stage failed.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, cmd, deb, dist, setup, vm};

#[derive(clap::Args)]
pub struct Options {
    /// Unit tests only (after build-ebpf): the inner loop.
    #[arg(long)]
    quick: bool,
    /// Only the stages whose names start with this (repeatable): `lint`, `unit`,
    /// `dist`, `host`, `vm` (both kernels, at once on two cores or more),
    /// `vm 6.1`, `vm 6.12`, `booted` (build-ebpf always runs).
    #[arg(long = "stage", value_name = "NAME")]
    stages: Vec<String>,
}

type Stage = (String, Box<dyn Fn() -> Result<()>>);

fn stage(name: &str, f: impl Fn() -> Result<()> + 'static) -> Stage {
    (name.to_owned(), Box::new(f))
}

pub fn run(opts: Options) -> Result<()> {
    let mut stages: Vec<Stage> = Vec::new();
    if !opts.quick {
        stages.push(stage("setup", setup::run));
    }
    stages.push(stage("build-ebpf", build_ebpf::run));
    stages.push(stage("lint", crate::lint::run));
    stages.push(stage("unit", unit));
    if !opts.quick {
        stages.push(stage("dist (router client)", router_client));
        stages.push(stage("host (root)", host));
        // Behaviour differs between Debian's kernels (TCX, kfuncs, fou6): the
        // VM suite runs on each of them (resolved when it runs, after setup
        // has installed them), and a missing one is a failure.
        let series: Vec<&'static str> = vm::REQUIRED_KERNELS
            .iter()
            .copied()
            .filter(|s| opts.stages.is_empty() || opts.stages.iter().any(|f| format!("vm {s}").starts_with(f.as_str())))
            .collect();
        if series.len() > 1 && at_once(series.len()) {
            let name = format!("vm {}", series.join(" + "));
            stages.push((name, Box::new(move || vm_tests_at_once(&series))));
        } else {
            for series in series {
                stages.push((format!("vm {series}"), Box::new(move || vm_tests(series))));
            }
        }
        stages.push(stage("booted systemd", systemd_tests));
    }
    if !opts.stages.is_empty() {
        stages.retain(|(name, _)| name == "build-ebpf" || opts.stages.iter().any(|s| name.starts_with(s.as_str())));
    }
    let mut results: Vec<(&str, Option<Result<()>>, Duration)> = Vec::new();
    let mut failed = false;
    for (name, stage) in &stages {
        let name = name.as_str();
        if failed {
            results.push((name, None, Duration::ZERO));
            continue;
        }
        println!("\n===== xtask test: {name} =====");
        let started = Instant::now();
        let result = stage();
        // One kernel's failure does not hide the other's result.
        failed = result.is_err() && !name.starts_with("vm ");
        results.push((name, Some(result), started.elapsed()));
    }
    println!("\n===== xtask test: summary =====");
    for (name, result, took) in &results {
        match result {
            Some(Ok(())) => println!("  {name:<22} passed   {:>7.1} s", took.as_secs_f64()),
            Some(Err(e)) => println!("  {name:<22} FAILED   {:>7.1} s  {e:#}", took.as_secs_f64()),
            None => println!("  {name:<22} not run (an earlier stage failed)"),
        }
    }
    let passed = results.iter().filter(|(_, r, _)| matches!(r, Some(Ok(())))).count();
    println!("stages: {passed} passed, {} failed", results.len() - passed);
    if passed < results.len() {
        bail!("a test stage failed");
    }
    Ok(())
}

/// Tests that need no privileges: the libraries (the eBPF crate's included,
/// compiled for the host) and the userspace binaries; and a build of the
/// benchmarks.
fn unit() -> Result<()> {
    cmd::run(cmd::cargo().args(["test", "--workspace", "--exclude", "footunnel-tests"]))?;
    // The alerting rules fire on the series that should raise them.
    cmd::run(Command::new("promtool").current_dir(cmd::workspace_root().join("packaging/prometheus")).args([
        "test",
        "rules",
        "footunnel.rules.test.yml",
    ]))
    .context("promtool test rules (promtool: Debian's prometheus package; `cargo xtask setup`)")?;
    // The benchmarks run only under `cargo xtask bench`; they must still build.
    cmd::run(cmd::cargo().args(["bench", "--package", "footunnel-tests", "--bench", "bench", "--no-run"]))
}

/// Tests on the host kernel as root: real BPF programs, veth, namespaces.
fn host() -> Result<()> {
    cmd::require_root("host")?;
    cmd::run(cmd::cargo().args(["test", "--package", "footunnel-tests", "--test", "host", "--", "--test-threads=1"]))
}

/// Tests that need fou/ipip, run inside a VM booted from Debian's kernel
/// `series` (`6.1`, `6.12`).
fn vm_tests(series: &str) -> Result<()> {
    let exe = vm_prepare()?;
    vm_suite(series, &exe, 2, None)
}

/// Under emulation (no KVM) the guest is CPU-bound on about one core
/// whatever its CPU count: one kernel's VM with two CPUs takes as long as
/// with one, and two VMs with two CPUs each on two cores take 2-3 times as
/// long per test. Two VMs of one CPU each take no longer than one (measured:
/// broker:: 63.2 s alone, 63.7 s each side by side), so with two cores or
/// more the kernels run at once (one core per VM).
fn at_once(vms: usize) -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= vms)
}

fn vm_tests_at_once(series: &[&'static str]) -> Result<()> {
    let exe = vm_prepare()?;
    println!("xtask test: the VM suite on {} at once, one CPU each; lines start with the kernel", series.join(" and "));
    let results: Vec<(&str, Result<()>)> = std::thread::scope(|scope| {
        let runs: Vec<_> = series
            .iter()
            .map(|&s| {
                let exe = &exe;
                (s, scope.spawn(move || vm_suite(s, exe, 1, Some(format!("[{s}] ")))))
            })
            .collect();
        runs.into_iter().map(|(s, run)| (s, run.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))))).collect()
    });
    let failed: Vec<String> =
        results.iter().filter_map(|(s, r)| r.as_ref().err().map(|e| format!("{s}: {e:#}"))).collect();
    for (s, r) in &results {
        println!("xtask test: vm {s} {}", if r.is_ok() { "passed" } else { "FAILED" });
    }
    if failed.is_empty() { Ok(()) } else { bail!("{}", failed.join("; ")) }
}

/// What every VM run needs, built once: the product, its package, the
/// router clients; the test executable's path.
fn vm_prepare() -> Result<String> {
    cmd::require_root("VM")?;
    cmd::run(cmd::cargo().args(["build", "--package", "footunnel"]))?;
    // The package tests install it (target/debian/, beside target/debug/).
    deb::build()?;
    // The client runs as routers run it (tests/vm/router.rs: aarch64 and
    // mipsel under qemu-user; every other client test: the x86_64 build).
    router_client()?;
    cmd::test_executable("vm")
}

fn vm_suite(series: &str, exe: &str, cpus: u32, prefix: Option<String>) -> Result<()> {
    let kernel = vm::pick_kernel(series)?.display().to_string();
    println!("xtask test: VM kernel {kernel}");
    let client = dist::binary("x86_64-unknown-linux-musl").display().to_string();
    let opts = vm::Options {
        systemd: false,
        kernel: Some(kernel),
        memory: "2G".into(),
        cpus,
        timeout: 1800,
        rwdirs: Vec::new(),
        // --nocapture: the end-to-end suite prints its failover times.
        command: vec![
            "env".into(),
            format!("FOOTUNNEL_CLIENT={client}"),
            exe.to_owned(),
            "--test-threads=1".into(),
            "--nocapture".into(),
        ],
        prefix,
    };
    match vm::run(&opts)? {
        0 => Ok(()),
        code => bail!("the VM tests failed (exit status {code})"),
    }
}

/// The client for routers, for all five targets (seconds when nothing
/// changed; the VM stages use three of them).
fn router_client() -> Result<()> {
    dist::run(&dist::Options::default())
}

/// What a user does with the package, on a booted Debian 12 with systemd as
/// PID 1 (tests/systemd): install, enable, reload, upgrade, reboot, purge.
fn systemd_tests() -> Result<()> {
    cmd::require_root("booted-systemd")?;
    let deb = deb::build()?;
    deb::build_upgrade()?;
    // Debian's package checker: no error and no unexplained warning.
    cmd::run(Command::new("lintian").args(["--fail-on", "error,warning", "--allow-root"]).arg(&deb))
        .context("lintian found problems in the package (above)")?;
    let exe = cmd::test_executable("systemd")?;
    let boot = crate::systemd_vm::Boot { memory: "2G".into(), cpus: 2, timeout: Duration::from_secs(900) };
    match crate::systemd_vm::run(&boot, &[exe])? {
        0 => Ok(()),
        code => bail!("the booted-systemd tests failed (exit status {code}; the failed step is named above)"),
    }
}
