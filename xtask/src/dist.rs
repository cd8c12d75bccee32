//! `cargo xtask dist`: the client alone (no broker, no eBPF object), as
//! static musl binaries for the routers it runs on, in target/dist/.
//!
//! Every target is built the same way: the nightly's `-Z build-std` (the
//! tier-3 MIPS targets have no prebuilt std, and a std built for size drops
//! the backtrace printer the others would carry), linked by zig's musl
//! (`cargo zigbuild`), and stripped of the sections a router never reads.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::cmd;

/// (Rust target, what runs it).
pub const TARGETS: &[(&str, &str)] = &[
    ("x86_64-unknown-linux-musl", "x86_64 routers and VMs"),
    ("aarch64-unknown-linux-musl", "OpenWrt aarch64_cortex-a53 / _generic (MT7622, MT7981, IPQ807x, Raspberry Pi 3/4)"),
    ("armv7-unknown-linux-musleabihf", "OpenWrt arm_cortex-a7/a9 with hard float (IPQ40xx, MT7623)"),
    ("mipsel-unknown-linux-musl", "OpenWrt mipsel_24kc, soft float (MT7621, MT7628)"),
    ("mips-unknown-linux-musl", "OpenWrt mips_24kc, soft float (ath79: AR9344, QCA9563)"),
];

/// Release settings come from the `router` profile; these are what a
/// profile cannot say. zig brings musl's start files and libc for every
/// target (rustc's own exist only for prebuilt targets). A panic aborts at once, without a message: the
/// message machinery is a tenth of the binary, and the service manager
/// (procd, systemd) restarts the client.
const RUSTFLAGS: &str = "-C link-self-contained=no -C relocation-model=static -C force-unwind-tables=no -Zunstable-options -C panic=immediate-abort";

/// Sections of no use on the router that the linker keeps: MIPS' procedure
/// descriptors (`.pdr`, 170 KB) and the toolchain's `.comment`.
const REMOVED_SECTIONS: &[&str] = &[".pdr", ".comment"];

#[derive(clap::Args, Default)]
pub struct Options {
    /// Only these targets (default: all five).
    #[arg(long = "target", value_name = "TRIPLE")]
    targets: Vec<String>,
}

/// target/dist/footunnel-TRIPLE.
pub fn binary(triple: &str) -> PathBuf {
    cmd::workspace_root().join("target/dist").join(format!("footunnel-{triple}"))
}

pub fn run(opts: &Options) -> Result<()> {
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.iter().map(|(t, _)| *t).collect()
    } else {
        for t in &opts.targets {
            anyhow::ensure!(
                TARGETS.iter().any(|(known, _)| known == t),
                "unknown target {t}: pick from {}",
                TARGETS.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
            );
        }
        opts.targets.iter().map(String::as_str).collect()
    };
    let dist = cmd::workspace_root().join("target/dist");
    std::fs::create_dir_all(&dist)?;
    for triple in targets {
        build(triple)?;
    }
    for file in ["footunnel.init", "footunnel.config"] {
        let from = cmd::workspace_root().join("packaging/openwrt").join(file);
        std::fs::copy(&from, dist.join(file)).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    println!("dist: {}", dist.display());
    Ok(())
}

fn build(triple: &str) -> Result<()> {
    let target_dir = cache_dir()?;
    let env_name = format!("CARGO_TARGET_{}_RUSTFLAGS", triple.to_uppercase().replace('-', "_"));
    let mut cargo = cmd::nightly_cargo();
    cargo
        .current_dir(cmd::workspace_root())
        .env(env_name, RUSTFLAGS)
        // Its own target directory: a std built for each target is kept
        // between runs (minutes when cold), apart from the host's builds.
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["zigbuild", "--package", "footunnel", "--no-default-features", "--profile", "router"])
        .args(["--target", triple, "-Z", "build-std=std,panic_abort", "-Z", "build-std-features=optimize_for_size"]);
    println!("dist: building the client for {triple}");
    cmd::run(&mut cargo).with_context(|| {
        format!("could not build the client for {triple} (`cargo xtask setup` installs zig and cargo-zigbuild)")
    })?;
    let built = target_dir.join(triple).join("router/footunnel");
    let out = binary(triple);
    let mut objcopy = Command::new("llvm-objcopy");
    for section in REMOVED_SECTIONS {
        objcopy.arg(format!("--remove-section={section}"));
    }
    cmd::run(objcopy.arg(&built).arg(&out)).context("llvm-objcopy (Debian's llvm package; `cargo xtask setup`)")?;
    let size = std::fs::metadata(&out)?.len();
    println!("dist: {} ({:.2} MB)", out.display(), size as f64 / 1e6);
    Ok(())
}

fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/footunnel/dist-target"))
}
