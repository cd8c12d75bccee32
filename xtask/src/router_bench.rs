//! The router client's size, beside the proof of concept's C client and
//! wireguard-tools' `wg`: what a router's flash pays for each.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{cmd, dist};

/// Stripped size and xz-compressed size (as squashfs stores it), in bytes.
fn sizes(file: &Path) -> Result<(u64, u64)> {
    let stripped = std::fs::metadata(file).with_context(|| format!("missing {}", file.display()))?.len();
    let xz = Command::new("xz").args(["-9e", "-c"]).arg(file).output().context("xz")?;
    anyhow::ensure!(xz.status.success(), "xz -9e failed on {}", file.display());
    Ok((stripped, xz.stdout.len() as u64))
}

pub fn measure(raw: &Path) -> Result<Value> {
    dist::run(&dist::Options::default())?;
    let mut rows = Vec::new();
    for (triple, what) in dist::TARGETS {
        let (stripped, xz) = sizes(&dist::binary(triple))?;
        rows.push(
            json!({ "what": format!("footunnel client, {triple}"), "for": what, "bytes": stripped, "xz_bytes": xz }),
        );
    }
    // The proof of concept's client, built as its users would for a router.
    let poc = raw.join("footunnelc");
    cmd::run(
        Command::new("gcc")
            .args(["-Os", "-static", "-s", "-o"])
            .arg(&poc)
            .arg(cmd::workspace_root().join("bench/reference/footunnelc.c")),
    )
    .context("gcc -Os -static (Debian's gcc and libc6-dev)")?;
    let (stripped, xz) = sizes(&poc)?;
    rows.push(json!({ "what": "proof of concept's footunnelc (C)", "for": "x86_64, gcc -Os -static (glibc), stripped", "bytes": stripped, "xz_bytes": xz }));
    // wireguard-tools' wg, as Debian ships it (dynamically linked).
    let wg_dir = raw.join("wireguard-tools");
    std::fs::create_dir_all(&wg_dir)?;
    cmd::run(Command::new("apt-get").current_dir(&wg_dir).args(["download", "-q", "wireguard-tools"]))
        .context("apt-get download wireguard-tools")?;
    let deb = std::fs::read_dir(&wg_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(wg_dir.join("root")))?;
    let (stripped, xz) = sizes(&wg_dir.join("root/usr/bin/wg"))?;
    rows.push(json!({ "what": "wireguard-tools' wg (C)", "for": "x86_64, Debian 12's package, dynamically linked", "bytes": stripped, "xz_bytes": xz }));
    Ok(json!({ "rows": rows }))
}

/// Section 6 of bench/results.md.
pub fn render(size: &Value, memory: &Value) -> String {
    let mut md = String::from(
        "\n## 6. The client on a router\n\n`cargo xtask dist`: the client alone, static musl, built for size. xz is \
         how squashfs stores it on the router's flash.\n\n| binary | for | stripped | xz -9e | target |\n\
         |---|---|---:|---:|---|\n",
    );
    for row in size["rows"].as_array().into_iter().flatten() {
        let what = row["what"].as_str().unwrap_or("?");
        let bytes = row["bytes"].as_f64().unwrap_or(f64::NAN);
        let target = if what.ends_with("aarch64-unknown-linux-musl") || what.ends_with("mipsel-unknown-linux-musl") {
            if bytes <= 1.5e6 { "≤ 1.5 MB: met" } else { "≤ 1.5 MB: **missed**" }
        } else {
            "—"
        };
        md += &format!(
            "| {what} | {} | {:.2} MB | {:.2} MB | {target} |\n",
            row["for"].as_str().unwrap_or(""),
            bytes / 1e6,
            row["xz_bytes"].as_f64().unwrap_or(f64::NAN) / 1e6
        );
    }
    let rss = memory["rss_kib"].as_f64().unwrap_or(f64::NAN);
    let peak = memory["peak_rss_kib"].as_f64().unwrap_or(f64::NAN);
    md += &format!(
        "\nResident memory of the running client ({}, after first contact and a NAT port change; measured {}): \
         {:.2} MiB, peak {:.2} MiB (target ≤ 4 MiB: {}).\n",
        memory["triple"].as_str().unwrap_or("?"),
        memory["date"].as_str().unwrap_or("?"),
        rss / 1024.0,
        peak / 1024.0,
        if peak <= 4096.0 { "met" } else { "**missed**" }
    );
    md
}
