//! `cargo xtask deb`: a Debian package of footunnel — the binary (its eBPF
//! object embedded), the systemd units, an example /etc/footunnel/broker.toml
//! and the manual pages made from `--help` — built with dpkg-deb.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{build_ebpf, cmd, test::cargo};

const CONTROL: &str = "Package: footunnel
Version: {version}
Architecture: amd64
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

/// Maintainer scripts: systemd learns of the units; nothing is enabled or
/// started (the example configuration has no tunnels). Under `dpkg --root`
/// ($DPKG_ROOT set) there is no systemd to tell.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -z \"$DPKG_ROOT\" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
";

const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -z \"$DPKG_ROOT\" ] && [ -d /run/systemd/system ]; then
    systemctl stop footunnel-broker.service 'footunnel-client@*.service' >/dev/null 2>&1 || true
fi
";

const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -z \"$DPKG_ROOT\" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
";

/// Where the package lands: target/debian/footunnel_VERSION_amd64.deb.
pub fn path() -> PathBuf {
    cmd::workspace_root().join("target/debian").join(format!("footunnel_{}_amd64.deb", version()))
}

fn version() -> String {
    // The footunnel crate's version, the package's version.
    let manifest = std::fs::read_to_string(cmd::workspace_root().join("footunnel/Cargo.toml")).unwrap_or_default();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned))
        .unwrap_or_else(|| "0.0.0".into())
}

pub fn run() -> Result<()> {
    let deb = build()?;
    println!("deb: {}", deb.display());
    Ok(())
}

/// Builds the package and returns its path.
pub fn build() -> Result<PathBuf> {
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
    put(root.join("packaging/etc/broker.toml"), "etc/footunnel/broker.toml", 0o644)?;
    put(root.join("packaging/etc/client.conf"), "usr/share/doc/footunnel/examples/client.conf", 0o644)?;
    std::fs::create_dir_all(staging.join("etc/footunnel/client"))?;
    let man = staging.join("usr/share/man/man8");
    cmd::run(Command::new(&binary).arg("manpages").arg(&man))?;
    cmd::run(
        Command::new("gzip")
            .args(["-9n"])
            .args(std::fs::read_dir(&man)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?),
    )?;
    write("usr/share/doc/footunnel/copyright", &copyright(&root)?, 0o644)?;
    write("DEBIAN/control", &CONTROL.replace("{version}", &version()), 0o644)?;
    write("DEBIAN/conffiles", "/etc/footunnel/broker.toml\n", 0o644)?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    write("DEBIAN/prerm", PRERM, 0o755)?;
    write("DEBIAN/postrm", POSTRM, 0o755)?;
    let deb = path();
    cmd::run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&staging).arg(&deb))?;
    Ok(deb)
}

fn copyright(root: &std::path::Path) -> Result<String> {
    let license = std::fs::read_to_string(root.join("Cargo.toml"))?
        .lines()
        .find_map(|l| l.strip_prefix("license = \"")?.strip_suffix('"').map(str::to_owned))
        .unwrap_or_else(|| "see the source".into());
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: footunnel\n\nFiles: *\nLicense: {license}\n"
    ))
}
