//! `cargo xtask build-ebpf`: the eBPF object, with BTF, where
//! `footunnel/build.rs` looks for it.

use anyhow::{Context, Result};

use crate::cmd::{self, workspace_root};

pub const TARGET: &str = "bpfel-unknown-none";

/// Where the object lands; `footunnel/build.rs` embeds it from here.
pub fn object_path() -> std::path::PathBuf {
    workspace_root().join("target/bpf").join(TARGET).join("release/footunnel")
}

pub fn run() -> Result<()> {
    let root = workspace_root();
    cmd::run(
        cmd::nightly_cargo()
            .current_dir(&root)
            .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
            .args(["build", "--release", "--package", "footunnel-ebpf", "--bin", "footunnel"])
            .args(["--target", TARGET, "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(root.join("target/bpf")),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask setup` installs the nightly rust-src and bpf-linker they need",
    )?;
    println!("eBPF object: {}", object_path().display());
    Ok(())
}
