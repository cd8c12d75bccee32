//! `cargo xtask deb`: a Debian package of footunnel — the binary (its eBPF
//! object embedded), the systemd units, an example /etc/footunnel/broker.toml
//! and the manual pages made from `--help` — built with dpkg-deb.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{build_ebpf, cmd, cmd::cargo};

const CONTROL: &str = "Package: footunnel
Version: {version}
Architecture: {arch}
Installed-Size: {installed_size}
Maintainer: footunnel developers <footunnel@example.org>
Depends: libc6 (>= 2.34)
Recommends: iproute2
Section: net
Priority: optional
Description: Foo-over-UDP tunnel broker and client that follows clients behind NATs
 An eBPF program on the broker's uplink verifies authenticated heartbeats and
 records where each tunnel's client is; the broker re-points the tunnel's ipip
 link to it over rtnetlink. The client sends heartbeats from the tunnel's own
 UDP port. Includes systemd units: footunnel-broker.service (configured in
 /etc/footunnel/broker.toml) and footunnel-client@.service.
";

/// Maintainer scripts. Nothing is enabled or started on install (the example
/// configuration has no tunnels); the FoU modules are loaded at once, as
/// systemd-modules-load does at every boot. An upgrade restarts what runs
/// (the pinned data plane forwards meanwhile); a removal stops and disables
/// the units and takes the data plane, its pins and the links and listeners
/// footunnel made with it. Under `dpkg --root` ($DPKG_ROOT set) there is no
/// system to act on.
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ] && [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    systemctl restart systemd-modules-load.service >/dev/null 2>&1 || true
    if [ -n "$2" ]; then
        systemctl try-restart footunnel-broker.service 'footunnel-client@*.service' || true
    fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "$DPKG_ROOT" ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop footunnel-broker.service 'footunnel-client@*.service' >/dev/null 2>&1 || true
    fi
    # Enablement goes with the units: no symlink is left dangling.
    systemctl disable footunnel-broker.service >/dev/null 2>&1 || true
    for wants in /etc/systemd/system/*.wants/footunnel-client@*.service; do
        [ -L "$wants" ] || continue
        systemctl disable "${wants##*/}" >/dev/null 2>&1 || true
    done
    if [ -e /run/footunnel/broker.json ] || [ -d /sys/fs/bpf/footunnel ]; then
        footunnel unload || echo "footunnel: unload failed (above); remove what is left by hand" >&2
    fi
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = purge ] && [ -z "$DPKG_ROOT" ]; then
    rm -rf /run/footunnel
fi
"#;

/// Why lintian's warnings do not apply (it reads this file from the package).
const LINTIAN_OVERRIDES: &str = "\
# The maintainer scripts call systemctl rather than deb-systemd-helper: a
# removal must also disable footunnel-client@NAME instances the administrator
# enabled by hand, which deb-systemd-helper does not track, and an upgrade
# restarts every running instance of the template.
footunnel: maintainer-script-calls-systemctl *
";

/// Where the package lands: target/debian/footunnel_VERSION_ARCH.deb.
pub fn path() -> PathBuf {
    cmd::workspace_root().join("target/debian").join(file_name(&version()))
}

fn file_name(version: &str) -> String {
    format!("footunnel_{version}_{}.deb", architecture())
}

/// The architecture the binary is built for: this machine's.
fn architecture() -> String {
    cmd::output(Command::new("dpkg").arg("--print-architecture"))
        .map_or_else(|_| "amd64".into(), |a| a.trim().to_owned())
}

pub fn version() -> String {
    // The footunnel crate's version, the package's version.
    let manifest = std::fs::read_to_string(cmd::workspace_root().join("footunnel/Cargo.toml")).unwrap_or_default();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned))
        .unwrap_or_else(|| "0.0.0".into())
}

/// A newer build of the same code, for upgrade tests: target/debian/upgrade/.
pub fn build_upgrade() -> Result<PathBuf> {
    let version = format!("{}+upgrade1", version());
    build_as(&version, &cmd::workspace_root().join("target/debian/upgrade").join(file_name(&version)))
}

pub fn run() -> Result<()> {
    let deb = build()?;
    println!("deb: {}", deb.display());
    Ok(())
}

/// Builds the package and returns its path.
pub fn build() -> Result<PathBuf> {
    build_as(&version(), &path())
}

fn build_as(version: &str, deb: &std::path::Path) -> Result<PathBuf> {
    build_ebpf::run()?;
    cmd::run(cargo().args(["build", "--release", "--package", "footunnel"]))?;
    let root = cmd::workspace_root();
    let staging = root.join("target/debian/root");
    let _ = std::fs::remove_dir_all(&staging);
    let put = |from: PathBuf, to: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let to = staging.join(to);
        std::fs::create_dir_all(to.parent().expect("a file in a directory"))?;
        std::fs::copy(&from, &to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let write = |to: &str, text: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let to = staging.join(to);
        std::fs::create_dir_all(to.parent().expect("a file in a directory"))?;
        std::fs::write(&to, text)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let binary = root.join("target/release/footunnel");
    put(binary.clone(), "usr/bin/footunnel", 0o755)?;
    cmd::run(Command::new("strip").arg(staging.join("usr/bin/footunnel")))?;
    for unit in ["footunnel-broker.service", "footunnel-client@.service"] {
        put(root.join("packaging/systemd").join(unit), &format!("lib/systemd/system/{unit}"), 0o644)?;
    }
    put(root.join("packaging/modules-load.d/footunnel.conf"), "usr/lib/modules-load.d/footunnel.conf", 0o644)?;
    put(root.join("packaging/etc/broker.toml"), "etc/footunnel/broker.toml", 0o644)?;
    put(root.join("packaging/etc/client.conf"), "usr/share/doc/footunnel/examples/client.conf", 0o644)?;
    put(
        root.join("packaging/prometheus/footunnel.rules.yml"),
        "usr/share/doc/footunnel/examples/prometheus/footunnel.rules.yml",
        0o644,
    )?;
    std::fs::create_dir_all(staging.join("etc/footunnel/client"))?;
    let man = staging.join("usr/share/man/man8");
    cmd::run(Command::new(&binary).arg("manpages").arg(&man))?;
    cmd::run(
        Command::new("gzip")
            .args(["-9n"])
            .args(std::fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?),
    )?;
    let completions = root.join("target/debian/completions");
    cmd::run(Command::new(&binary).arg("completions").arg(&completions))?;
    put(completions.join("footunnel.bash"), "usr/share/bash-completion/completions/footunnel", 0o644)?;
    put(completions.join("_footunnel"), "usr/share/zsh/vendor-completions/_footunnel", 0o644)?;
    put(completions.join("footunnel.fish"), "usr/share/fish/vendor_completions.d/footunnel.fish", 0o644)?;
    write("usr/share/doc/footunnel/copyright", &copyright(&root)?, 0o644)?;
    std::fs::write(staging.join("usr/share/doc/footunnel/changelog.gz"), gzip(changelog(version)?.as_bytes())?)?;
    let control = CONTROL
        .replace("{version}", version)
        .replace("{arch}", &architecture())
        .replace("{installed_size}", &installed_size_kib(&staging)?.to_string());
    write("usr/share/lintian/overrides/footunnel", LINTIAN_OVERRIDES, 0o644)?;
    write("DEBIAN/control", &control, 0o644)?;
    write("DEBIAN/conffiles", "/etc/footunnel/broker.toml\n", 0o644)?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    write("DEBIAN/prerm", PRERM, 0o755)?;
    write("DEBIAN/postrm", POSTRM, 0o755)?;
    write("DEBIAN/md5sums", &md5sums(&staging)?, 0o644)?;
    std::fs::create_dir_all(deb.parent().expect("a file in a directory"))?;
    cmd::run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&staging).arg(deb))?;
    Ok(deb.to_path_buf())
}

/// Every file the package installs, relative to the staging root, sorted.
fn payload(staging: &std::path::Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let relative = path.strip_prefix(base)?.to_path_buf();
            if relative.starts_with("DEBIAN") {
                continue;
            }
            if path.is_dir() { walk(&path, base, out)? } else { out.push(relative) }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(staging, staging, &mut files)?;
    files.sort();
    Ok(files)
}

/// DEBIAN/md5sums, as dh_md5sums writes it.
fn md5sums(staging: &std::path::Path) -> Result<String> {
    let files = payload(staging)?;
    cmd::output(Command::new("md5sum").current_dir(staging).args(&files))
}

/// Installed-Size: KiB of the payload, rounded up per file as dpkg-gencontrol does.
fn installed_size_kib(staging: &std::path::Path) -> Result<u64> {
    let mut total = 0;
    for f in payload(staging)? {
        total += std::fs::metadata(staging.join(f))?.len().div_ceil(1024);
    }
    Ok(total)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9nc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(bytes)?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}

/// A native package's changelog: this version, from the commit it is built from.
fn changelog(version: &str) -> Result<String> {
    let git = |args: &[&str]| {
        cmd::output(Command::new("git").current_dir(cmd::workspace_root()).args(args))
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "an unknown commit".into());
    let date = git(&["log", "-1", "--format=%aD"]).unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".into());
    Ok(format!(
        "footunnel ({version}) unstable; urgency=medium\n\n  * Built from footunnel's repository at {commit}.\n\n -- footunnel developers <footunnel@example.org>  {date}\n"
    ))
}

fn copyright(root: &std::path::Path) -> Result<String> {
    let license = std::fs::read_to_string(root.join("Cargo.toml"))?
        .lines()
        .find_map(|l| l.strip_prefix("license = \"")?.strip_suffix('"').map(str::to_owned))
        .unwrap_or_else(|| "see the source".into());
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: footunnel\n\nFiles: *\nCopyright: 2026 footunnel developers\nLicense: {license}\n"
    ))
}
