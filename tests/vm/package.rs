//! The Debian package (`cargo xtask deb`): it installs with dpkg into a
//! fresh directory tree, its units pass `systemd-analyze verify`, and its
//! binary runs broker and client with no more privilege than the units
//! grant (their capability bounding sets, no new privileges).

use std::{path::PathBuf, process::Command, time::Duration};

use footunnel_tests::{NsProcess, footunnel_bin};

use crate::broker::{CLIENT_B, SECRET, Topology};

/// target/debian/footunnel_*.deb, beside target/debug/ (`cargo xtask test` builds it).
fn package() -> PathBuf {
    let dir = footunnel_bin().parent().and_then(|d| d.parent()).unwrap().join("debian");
    std::fs::read_dir(&dir)
        .ok()
        .and_then(|entries| entries.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb")))
        .unwrap_or_else(|| panic!("no package in {}: run `cargo xtask deb` (cargo xtask test does)", dir.display()))
}

fn dpkg(root: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("dpkg")
        .arg(format!("--root={root}"))
        .args(["--force-script-chrootless", "--log=/dev/null"])
        .args(args)
        .output()
        .expect("run dpkg");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `setpriv` arguments that grant exactly the unit's capabilities.
fn unit_privileges(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(unit).unwrap();
    let caps: Vec<String> = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{unit} sets no CapabilityBoundingSet"))
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(text.lines().any(|l| l == "NoNewPrivileges=yes"), "{unit} lets the service gain privileges");
    vec![format!("--bounding-set=-all,{}", caps.join(",")), "--no-new-privs".into()]
}

#[test]
fn the_package_installs_verifies_and_runs_with_only_its_units_privileges() {
    let topo = Topology::new();
    let deb = package();
    let root = format!("{}/root", topo.state_dir);
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(format!("{root}/var/lib/dpkg/{dir}")).unwrap();
    }
    std::fs::write(format!("{root}/var/lib/dpkg/status"), "").unwrap();
    // A fresh tree has no package database of its own: libc6 is the host's.
    let (ok, out) = dpkg(&root, &["--force-depends", "-i", deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i {}:\n{out}", deb.display());
    for file in [
        "usr/bin/footunnel",
        "lib/systemd/system/footunnel-broker.service",
        "lib/systemd/system/footunnel-client@.service",
        "etc/footunnel/broker.toml",
        "usr/share/man/man8/footunnel-broker.8.gz",
        "usr/share/man/man8/footunnel-reload.8.gz",
    ] {
        assert!(std::path::Path::new(&format!("{root}/{file}")).is_file(), "the package lacks /{file}");
    }
    for unit in ["/lib/systemd/system/footunnel-broker.service", "footunnel-client@fou0.service"] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", "--recursive-errors=no", &format!("--root={root}"), unit])
            .output()
            .expect("systemd-analyze is missing: `cargo xtask setup` installs systemd");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify {unit}:\n{said}");
    }
    let bin = format!("{root}/usr/bin/footunnel");
    // The shipped example parses; it only lacks tunnels.
    let out =
        Command::new(&bin).args(["broker", "--config", &format!("{root}/etc/footunnel/broker.toml")]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("no tunnels: add a [[tunnel]] section"), "{said}");

    let as_unit = |unit: &str, args: &[&str]| {
        let mut argv = unit_privileges(&format!("{root}/lib/systemd/system/{unit}"));
        argv.push(bin.clone());
        argv.extend(args.iter().map(|a| a.to_string()));
        NsProcess::run_in(
            if unit.starts_with("footunnel-broker") { &topo.broker } else { &topo.client },
            "setpriv",
            &argv.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let config = format!("{}/broker.toml", topo.state_dir);
    std::fs::write(
        &config,
        format!(
            "pin_dir = \"{}\"\nstate_dir = \"{}\"\n[[tunnel]]\nname = \"a\"\nlink = \"fou0\"\nsecret = \"{SECRET}\"\n",
            topo.pin_dir, topo.state_dir
        ),
    )
    .unwrap();
    // The restriction is real: without CAP_BPF the broker cannot start.
    let mut unprivileged = NsProcess::run_in(
        &topo.broker,
        "setpriv",
        &["--bounding-set=-all,+net_admin,+net_raw", "--no-new-privs", &bin, "broker", "--config", &config],
    );
    let status = unprivileged.child.wait().unwrap();
    assert!(!status.success(), "the broker started without CAP_BPF:\n{}", unprivileged.log());
    assert!(
        unprivileged.log().contains("Operation not permitted") || unprivileged.log().contains("Permission denied"),
        "{}",
        unprivileged.log()
    );
    let mut broker = as_unit("footunnel-broker.service", &["broker", "-v", "--config", &config]);
    drop(unprivileged);
    broker.wait_for("broker running", Duration::from_secs(20));
    let client_state = format!("{}-client", topo.state_dir);
    let mut client = as_unit(
        "footunnel-client@.service",
        &["client", "--interval", "1", "--state-dir", &client_state, "198.51.100.1", SECRET],
    );
    client.wait_for("the broker sees this end at 198.51.100.3:40001", Duration::from_secs(10));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    assert!(topo.ping(), "no traffic:\n{}\n{}", broker.log(), client.log());
    let mut reload = as_unit("footunnel-broker.service", &["reload", "--state-dir", &topo.state_dir]);
    let status = reload.child.wait().unwrap();
    assert!(status.success() && reload.log().contains("unchanged: 1"), "ExecReload failed: {}", reload.log());
    broker.kill9();
    client.kill9();

    let (ok, out) = dpkg(&root, &["-r", "footunnel"]);
    assert!(ok, "{out}");
    assert!(!std::path::Path::new(&bin).exists(), "dpkg -r left the binary");
    assert!(std::path::Path::new(&format!("{root}/etc/footunnel/broker.toml")).exists(), "-r removed a conffile");
    let (ok, out) = dpkg(&root, &["-P", "footunnel"]);
    assert!(ok, "{out}");
    assert!(!std::path::Path::new(&format!("{root}/etc/footunnel/broker.toml")).exists(), "purge left the conffile");
}
