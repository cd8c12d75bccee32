//! The lint stage: formatting, clippy on both builds of the command (with
//! functions of at most 60 lines, clippy.toml), and three rules of the tree
//! no tool checks: system calls only in `footunnel/src/os/`, no file there
//! over 400 lines, and no dependency a crate never names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd;

pub fn run() -> Result<()> {
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"])).context("`cargo fmt --all` would change files: run it")?;
    cmd::run(cmd::cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
        .context("clippy found warnings (listed above)")?;
    // The client alone, as `cargo xtask dist` builds it for routers.
    cmd::run(
        cmd::cargo()
            .args(["clippy", "--package", "footunnel", "--no-default-features", "--all-targets", "--"])
            .args(["-D", "warnings"]),
    )
    .context("clippy found warnings in the client-only build (listed above)")?;
    let root = cmd::workspace_root();
    system_calls_in_os(&root)?;
    short_files(&root)?;
    unused_dependencies(&root)
}

/// The longest a file of footunnel/src may be: one job per module.
const MAX_FILE_LINES: usize = 400;

fn short_files(root: &Path) -> Result<()> {
    let long: Vec<String> = rust_files(&root.join("footunnel/src"))?
        .into_iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(&f).ok()?.lines().count();
            (lines > MAX_FILE_LINES).then(|| format!("{} ({lines})", f.strip_prefix(root).unwrap_or(&f).display()))
        })
        .collect();
    if !long.is_empty() {
        bail!("files over {MAX_FILE_LINES} lines: {}: split them by what they do", long.join(", "));
    }
    println!("lint: no file in footunnel/src is over {MAX_FILE_LINES} lines");
    Ok(())
}

/// `libc::` appears in `footunnel/src/os/` only.
fn system_calls_in_os(root: &Path) -> Result<()> {
    let src = root.join("footunnel/src");
    let outside: Vec<String> = rust_files(&src)?
        .into_iter()
        .filter(|f| !f.starts_with(src.join("os")))
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|text| text.contains("libc::")))
        .map(|f| f.strip_prefix(root).unwrap_or(&f).display().to_string())
        .collect();
    if !outside.is_empty() {
        bail!(
            "system calls outside footunnel/src/os/ in {}: add a safe function to os/sys.rs and call that",
            outside.join(", ")
        );
    }
    println!("lint: every libc call is in footunnel/src/os/");
    Ok(())
}

/// Every dependency a workspace member declares is named in its sources
/// (`name::`, `use name`, `extern crate name`); one that is not is unused.
fn unused_dependencies(root: &Path) -> Result<()> {
    let mut unused = Vec::new();
    for member in ["footunnel", "footunnel-ebpf", "xtask", "tests"] {
        let dir = root.join(member);
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
            .with_context(|| format!("cannot read {member}/Cargo.toml"))?;
        let sources: Vec<String> = rust_files(&dir)?.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
        for dep in declared_dependencies(&manifest) {
            let ident = dep.replace('-', "_");
            let named = sources.iter().any(|text| names(text, &ident));
            if !named {
                unused.push(format!("{member}: {dep}"));
            }
        }
    }
    if !unused.is_empty() {
        bail!("dependencies declared but never used: {} (remove them from Cargo.toml)", unused.join(", "));
    }
    println!("lint: every declared dependency is used");
    Ok(())
}

/// The names under every `[…dependencies]` table of a manifest.
fn declared_dependencies(manifest: &str) -> Vec<String> {
    let mut in_table = false;
    let mut deps = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_table = line.trim_end_matches(']').ends_with("dependencies");
        } else if in_table && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().split('.').next().unwrap_or("").trim();
            if !name.is_empty() && !name.starts_with('#') {
                deps.push(name.to_owned());
            }
        }
    }
    deps
}

/// Whether Rust source `text` names crate `ident`.
fn names(text: &str, ident: &str) -> bool {
    text.match_indices(ident).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = &text[at + ident.len()..];
        let starts_word = !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        starts_word
            && (after.starts_with("::")
                || text[..at].ends_with("use ")
                || text[..at].ends_with("extern crate ")
                || text[..at].ends_with("use ::"))
    })
}

/// `.rs` files under `dir`, `target/` left out.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("cannot list {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_read_from_every_table() {
        let manifest = "[package]\nname = \"x\"\n[dependencies]\nanyhow = { workspace = true }\nserde_json = \"1\"\n\
                        # a comment = here\n[target.'cfg(target_arch = \"bpf\")'.dependencies]\naya-ebpf.workspace = true\n\
                        [features]\nuser = [\"dep:aya\"]\n[dev-dependencies]\nsiphasher = \"1\"\n";
        assert_eq!(declared_dependencies(manifest), ["anyhow", "serde_json", "aya-ebpf", "siphasher"]);
    }

    #[test]
    fn a_crate_is_named_by_a_path_or_a_use_not_by_a_longer_word() {
        assert!(names("let x = serde_json::json!({});", "serde_json"));
        assert!(names("use libc;", "libc"));
        assert!(names("#[tokio::main]", "tokio"));
        assert!(!names("let thiserror_like = 1; // thiserror", "thiserror"));
        assert!(!names("my_log::info!()", "log"));
        assert!(!names("crate::log::x", "log"));
    }
}
