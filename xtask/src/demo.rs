//! `cargo xtask demo`: a broker, a NAT and a client in network namespaces;
//! the tunnel follows the client through an address change and a NAT port
//! change, with `footunnel show` and the measured failover times. Runs in
//! the VM when this kernel lacks fou.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{build_ebpf, cmd, vm};

const SECRET: &str = "demo secret: use `footunnel keygen` for real ones";
const NS: [&str; 3] = ["demo-broker", "demo-nat", "demo-client"];

pub fn run() -> Result<()> {
    build_ebpf::run()?;
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(cmd::workspace_root())
            .args(["build", "--quiet", "--package", "footunnel"]),
    )?;
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    if host_has_fou() {
        return inside();
    }
    println!("this kernel has no fou/ipip: running the demo in a VM with Debian's kernel (about a minute)");
    let code = vm::run(&vm::Options {
        systemd: false,
        kernel: None,
        memory: "2G".into(),
        cpus: 2,
        timeout: 900,
        rwdirs: Vec::new(),
        command: vec![me, "demo-inside".into()],
        prefix: None,
    })?;
    if code != 0 {
        bail!("the demo failed (exit status {code})");
    }
    Ok(())
}

fn host_has_fou() -> bool {
    std::path::Path::new("/sys/module/fou").exists() || cmd::succeeds(Command::new("modprobe").args(["-q", "fou"]))
}

fn ip(args: &str) -> Result<()> {
    cmd::run(Command::new("ip").args(args.split_whitespace()))
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]).args(args);
    c
}

fn footunnel(ns: &str, args: &[&str]) -> Command {
    // nsenter --net keeps /sys/fs/bpf as it is (ip netns exec would remount /sys).
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).arg(cmd::workspace_root().join("target/debug/footunnel")).args(args);
    c
}

fn ping(ns: &str) -> bool {
    cmd::succeeds(&mut in_ns(ns, "ping", &["-n", "-c", "1", "-W", "0.2", "10.0.0.1"]))
}

fn failover(since: Instant) -> Result<Duration> {
    while since.elapsed() < Duration::from_secs(30) {
        if ping(NS[2]) {
            return Ok(since.elapsed());
        }
    }
    bail!("no traffic through the tunnel within 30 s")
}

fn show(title: &str) -> Result<()> {
    println!("\n$ footunnel show        # {title}");
    let out = footunnel(NS[0], &["show", "--state-dir", "/tmp/footunnel-demo/broker"]).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

struct Cleanup(Vec<Child>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = footunnel(
            NS[0],
            &["unload", "--pin-dir", "/sys/fs/bpf/footunnel-demo", "--state-dir", "/tmp/footunnel-demo/broker"],
        )
        .stdout(Stdio::null())
        .status();
        for ns in NS {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        let _ = std::fs::remove_dir_all("/tmp/footunnel-demo");
    }
}

/// The demo proper, on a kernel with fou.
pub fn inside() -> Result<()> {
    let _ = Command::new("modprobe").args(["-a", "fou", "ipip"]).status();
    let mut cleanup = Cleanup(Vec::new());
    for ns in NS {
        let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        ip(&format!("netns add {ns}"))?;
        ip(&format!("-n {ns} link set lo up"))?;
    }
    let [broker, nat, client] = NS;
    std::fs::create_dir_all("/tmp/footunnel-demo")?;
    println!("== client 192.0.2.2 — NAT 192.0.2.1 | 203.0.113.1 — broker 203.0.113.100 (network namespaces)");
    ip(&format!("-n {nat} link add pub0 type veth peer name up0 netns {broker}"))?;
    ip(&format!("-n {nat} link add lan0 type veth peer name up0 netns {client}"))?;
    for (ns, dev, addr) in [
        (nat, "pub0", "203.0.113.1/24"),
        (nat, "lan0", "192.0.2.1/24"),
        (broker, "up0", "203.0.113.100/24"),
        (client, "up0", "192.0.2.2/24"),
    ] {
        ip(&format!("-n {ns} addr add {addr} dev {dev}"))?;
        ip(&format!("-n {ns} link set {dev} up"))?;
    }
    ip(&format!("-n {client} route add default via 192.0.2.1"))?;
    cmd::run(&mut in_ns(client, "sysctl", &["-q", "-w", "net.ipv4.conf.all.promote_secondaries=1"]))?;
    cmd::run(&mut in_ns(client, "sysctl", &["-q", "-w", "net.ipv4.conf.up0.promote_secondaries=1"]))?;
    cmd::run(&mut in_ns(nat, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]))?;
    nat_rule("masquerade")?;

    println!("== FoU tunnels, as the README sets them up");
    ip(&format!("-n {broker} fou add port 42424 ipproto 4"))?;
    ip(&format!(
        "-n {broker} link add fou0 type ipip remote 192.0.2.99 local 203.0.113.100 ttl 64 encap fou encap-sport 42424 encap-dport 42424"
    ))?;
    ip(&format!("-n {broker} addr add 10.0.0.1/30 dev fou0"))?;
    ip(&format!("-n {broker} link set fou0 up"))?;
    ip(&format!("-n {client} fou add port 42424 ipproto 4"))?;
    ip(&format!(
        "-n {client} link add fou0 type ipip remote 203.0.113.100 ttl 64 encap fou encap-sport 42424 encap-dport 42424"
    ))?;
    ip(&format!("-n {client} addr add 10.0.0.2/30 dev fou0"))?;
    ip(&format!("-n {client} link set fou0 up"))?;

    println!("== footunnel broker fou0 SECRET   |   footunnel client 203.0.113.100 SECRET  (10 s heartbeats)");
    let log = |name: &str| std::fs::File::create(format!("/tmp/footunnel-demo/{name}.log"));
    let started = Instant::now();
    cleanup.0.push(
        footunnel(
            broker,
            &[
                "broker",
                "--pin-dir",
                "/sys/fs/bpf/footunnel-demo",
                "--state-dir",
                "/tmp/footunnel-demo/broker",
                "fou0",
                SECRET,
            ],
        )
        .stderr(log("broker")?)
        .spawn()
        .context("start the broker")?,
    );
    wait_for_log("broker", "broker running")?;
    cleanup.0.push(
        footunnel(client, &["client", "--state-dir", "/tmp/footunnel-demo/client", "203.0.113.100", SECRET])
            .stderr(log("client")?)
            .spawn()
            .context("start the client")?,
    );
    let first = failover(started)?;
    show("the tunnel is up")?;

    println!("\n== the client's address changes: 192.0.2.2 → 192.0.2.3");
    let t = Instant::now();
    ip(&format!("-n {client} addr add 192.0.2.3/24 dev up0"))?;
    ip(&format!("-n {client} addr del 192.0.2.2/24 dev up0"))?;
    ip(&format!("-n {client} route replace default via 192.0.2.1"))?;
    let address_change = failover(t)?;
    show("the NAT gave the new flow a new port; the broker followed")?;

    println!("\n== the NAT changes the port (new port range, mappings flushed; the client notices nothing)");
    let t = Instant::now();
    nat_rule("meta l4proto udp masquerade to :50000-50999")?;
    cmd::run(in_ns(nat, "conntrack", &["-F"]).stderr(Stdio::null()))?;
    let port_change = failover(t)?;
    show("challenged by the broker, the client answered at once")?;

    println!("\n== failover (event → first reply through the tunnel), heartbeat interval 10 s:");
    println!("   first contact            {:>7.3} s", first.as_secs_f64());
    println!("   client address change    {:>7.3} s", address_change.as_secs_f64());
    println!("   NAT port change          {:>7.3} s", port_change.as_secs_f64());
    println!(
        "   (the proof of concept needed up to one interval for an address change, and never recovered from a port change)"
    );
    println!("\n== cleaning up");
    Ok(())
}

fn nat_rule(how: &str) -> Result<()> {
    let rules = format!(
        "flush ruleset\ntable ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  oifname \"pub0\" {how}\n  oifname \"pub0\" masquerade\n }}\n}}\n"
    );
    std::fs::write("/tmp/footunnel-demo/nat.nft", rules)?;
    cmd::run(&mut in_ns(NS[1], "nft", &["-f", "/tmp/footunnel-demo/nat.nft"]))
}

fn wait_for_log(name: &str, needle: &str) -> Result<()> {
    let path = format!("/tmp/footunnel-demo/{name}.log");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::fs::read_to_string(&path).unwrap_or_default().contains(needle) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{name} did not start:\n{}", std::fs::read_to_string(&path).unwrap_or_default())
}
