//! Running commands with their failures named; the cargo, root and test-binary helpers every task shares.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}

/// Runs `cmd` with inherited stdio; an error names the command and its status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// True when `cmd` runs and exits 0; its output is discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Stdout of `cmd`, which must succeed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `cargo` for the nightly toolchain, cleaned of the variables that the
/// outer (stable) cargo set: left in, they leak the outer toolchain into the
/// inner build (aya's template clears them the same way).
pub fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"]);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO") || key.starts_with("RUSTC") || key == "RUSTUP_TOOLCHAIN" || key == "RUSTFLAGS" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The outer cargo (the one running xtask), in the workspace.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn require_root(stage: &str) -> Result<()> {
    if !is_root() {
        bail!("the {stage} tests need root (BPF, network namespaces): run `sudo -E cargo xtask test`");
    }
    Ok(())
}

/// Builds an integration test binary of footunnel-tests and returns its path.
pub fn test_executable(name: &str) -> Result<String> {
    executable(&["test", "--package", "footunnel-tests", "--test", name, "--no-run", "--message-format=json"], name)
}

/// Runs a cargo build command with JSON messages; the path of target `name`'s executable.
pub fn executable(args: &[&str], name: &str) -> Result<String> {
    let out = output(cargo().args(args))?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(str::to_owned))
        .with_context(|| format!("cargo built no executable for `{name}`"))
}
