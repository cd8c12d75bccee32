//! End to end under real kernel NATs: clients — NAT — broker as network
//! namespaces, real FoU tunnels, `footunnel broker` and `footunnel client`
//! with the default 10 s heartbeat interval. After each event traffic
//! through the tunnel must resume; the failover time (event → first reply
//! through the tunnel) is printed per scenario.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use footunnel_tests::{Netns, NsProcess, footunnel_once, log_seconds, require_vm, sh, veth};

const INTERVAL_S: u64 = 10;

fn secret(tunnel: &str) -> String {
    format!("end-to-end secret of tunnel {tunnel}")
}

/// A client host: its namespace, its tunnel's broker address, its inner address.
struct Client {
    ns: Netns,
    broker_addr: &'static str,
    inner_broker: &'static str,
}

struct Lab {
    broker: Netns,
    nat: Netns,
    a: Client,
    b: Client,
    c: Client,
    poc: Client,
    dir: String,
}

impl Lab {
    fn new() -> Self {
        require_vm();
        let broker = Netns::new("broker");
        let nat = Netns::new("nat");
        let client = |role: &str, broker_addr, inner_broker| Client { ns: Netns::new(role), broker_addr, inner_broker };
        let lab = Lab {
            a: client("a", "203.0.113.100", "10.0.0.1"),
            b: client("b", "203.0.113.101", "10.0.0.5"),
            c: client("c", "198.51.100.1", "10.0.0.9"),
            poc: client("poc", "203.0.113.102", "10.0.0.13"),
            dir: format!("/tmp/ft-e2e-{}", broker.name),
            broker,
            nat,
        };
        std::fs::create_dir_all(&lab.dir).unwrap();

        // The NAT: a LAN segment per client behind it, one public uplink.
        veth(&lab.nat, "pub0", "203.0.113.1/24", &lab.broker, "up0", "203.0.113.100/24");
        lab.broker.ip("addr add 203.0.113.101/24 dev up0");
        lab.broker.ip("addr add 203.0.113.102/24 dev up0");
        for (i, cl) in [&lab.a, &lab.b, &lab.poc].into_iter().enumerate() {
            let net = 8 * i as u8;
            let lan = format!("lan{i}");
            veth(&lab.nat, &lan, &format!("192.0.2.{}/29", net + 1), &cl.ns, "up0", &format!("192.0.2.{}/29", net + 2));
            cl.ns.ip(&format!("route add default via 192.0.2.{}", net + 1));
            sysctl(&cl.ns, "net.ipv4.conf.all.promote_secondaries=1");
            sysctl(&cl.ns, "net.ipv4.conf.up0.promote_secondaries=1");
        }
        sysctl(&lab.nat, "net.ipv4.ip_forward=1");
        // Deleting a primary address must not take the new secondary with it.
        sysctl(&lab.nat, "net.ipv4.conf.all.promote_secondaries=1");
        sysctl(&lab.nat, "net.ipv4.conf.pub0.promote_secondaries=1");
        nft(&lab.nat, "masquerade");
        // Tunnel c's client sits on a second uplink of the broker, no NAT.
        veth(&lab.broker, "up1", "198.51.100.1/24", &lab.c.ns, "up0", "198.51.100.2/24");

        // FoU tunnels, set up as the READMEs say. The broker's remotes are
        // placeholders the broker corrects; clients leave `local` unset.
        lab.broker.ip("fou add port 42424 ipproto 4");
        for (i, cl) in [&lab.a, &lab.b, &lab.c, &lab.poc].into_iter().enumerate() {
            let link = format!("fou{i}");
            lab.broker.ip(&format!(
                "link add {link} type ipip remote 192.0.2.{} local {} ttl 64 encap fou encap-sport 42424 encap-dport 42424",
                200 + i,
                cl.broker_addr
            ));
            lab.broker.ip(&format!("addr add {}/30 dev {link}", cl.inner_broker));
            lab.broker.ip(&format!("link set {link} up"));
            cl.ns.ip("fou add port 42424 ipproto 4");
            cl.ns.ip(&format!(
                "link add fou0 type ipip remote {} ttl 64 encap fou encap-sport 42424 encap-dport 42424",
                cl.broker_addr
            ));
            let inner_broker: std::net::Ipv4Addr = cl.inner_broker.parse().unwrap();
            let inner_client = std::net::Ipv4Addr::from(u32::from(inner_broker) + 1);
            cl.ns.ip(&format!("addr add {inner_client}/30 dev fou0"));
            cl.ns.ip("link set fou0 up");
        }
        // The proof of concept's client needs this SNAT rule (its README says so).
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &lab.poc.ns.name,
                "iptables",
                "-t",
                "nat",
                "-I",
                "POSTROUTING",
                "-o",
                "up0",
                "-p",
                "udp",
                "--sport",
                "42425",
                "-j",
                "SNAT",
                "--to-source",
                "192.0.2.18:42424",
            ],
        );
        lab
    }

    fn write_config(&self) -> String {
        let mut toml =
            format!("pin_dir = \"/sys/fs/bpf/ft-{}\"\nstate_dir = \"{}/broker\"\n", self.broker.name, self.dir);
        for (i, (name, prefix, legacy)) in [
            ("a", "10.0.0.0/30", false),
            ("b", "10.0.0.4/30", false),
            ("c", "10.0.0.8/30", false),
            ("poc", "10.0.0.12/30", true),
        ]
        .into_iter()
        .enumerate()
        {
            toml += &format!(
                "\n[[tunnel]]\nname = \"{name}\"\nlink = \"fou{i}\"\nsecret = \"{}\"\npeer_prefixes = [\"{prefix}\"]\nlegacy = {legacy}\n",
                secret(name)
            );
        }
        let path = format!("{}/broker.toml", self.dir);
        std::fs::write(&path, toml).unwrap();
        path
    }

    fn start_client(&self, name: &str, cl: &Client) -> NsProcess {
        let state = format!("{}/{name}", self.dir);
        let mut p = NsProcess::footunnel(
            &cl.ns,
            &[
                "client",
                "-v",
                "--interval",
                &INTERVAL_S.to_string(),
                "--state-dir",
                &state,
                cl.broker_addr,
                &secret(name),
            ],
        );
        p.wait_for("the broker sees this end at", Duration::from_secs(20));
        p
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", self.broker.name), &format!("{}/broker", self.dir));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn sysctl(ns: &Netns, setting: &str) {
    sh("ip", &["netns", "exec", &ns.name, "sysctl", "-q", "-w", setting]);
}

/// Replaces the NAT's source NAT rule; `how` is the masquerade statement's tail.
pub fn nft(nat: &Netns, how: &str) {
    let ruleset = format!(
        "flush ruleset\ntable ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  oifname \"pub0\" {how}\n  oifname \"pub0\" masquerade\n }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{}.nft", nat.name));
    std::fs::write(&file, ruleset).unwrap();
    sh("ip", &["netns", "exec", &nat.name, "nft", "-f", file.to_str().unwrap()]);
}

/// Pings `target` (IPv4 or IPv6) from `client` until one answers; the time
/// since `since`, at most half the 10 s heartbeat interval, else a panic
/// with the logs of `logs`.
pub fn ping_within(
    client: &Netns,
    target: &str,
    since: std::time::Instant,
    what: &str,
    logs: &[&footunnel_tests::NsProcess],
) -> Duration {
    let family = if target.contains(':') { "-6" } else { "-4" };
    while since.elapsed() < Duration::from_secs(5) {
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &client.name, "ping", family, "-n", "-c", "1", "-W", "0.2", target])
            .output()
            .expect("run ping")
            .status
            .success();
        if ok {
            return since.elapsed();
        }
    }
    let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
    panic!("{what}: no reply from {target} through the tunnel within 5 s\n{}", logs.join("\n----\n"));
}

pub fn flush_conntrack(nat: &Netns) {
    // `conntrack -F` exits 0 also when the table was empty.
    sh("ip", &["netns", "exec", &nat.name, "conntrack", "-F"]);
}

/// One ping through the tunnel, waiting at most 100 ms.
fn ping(cl: &Client) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &cl.ns.name, "ping", "-n", "-c", "1", "-W", "0.1", cl.inner_broker])
        .output()
        .expect("run ping");
    out.status.success()
}

/// Pings until a reply comes back; the time since `since`. Failover must
/// take less than half a heartbeat interval: a periodic heartbeat would come
/// later on average, so a broken change or challenge path cannot pass here.
fn failover(cl: &Client, since: Instant, what: &str, logs: &[&NsProcess]) -> Duration {
    let deadline = Duration::from_secs(INTERVAL_S) / 2;
    while since.elapsed() < deadline {
        if ping(cl) {
            return since.elapsed();
        }
    }
    let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
    panic!("{what}: no traffic through the tunnel within {deadline:?}\n{}", logs.join("\n----\n"));
}

/// Asserts that the broker challenged and the client answered after log
/// line `from` of each: the way a change the client cannot see is found.
fn took_the_challenge_path(what: &str, broker: &NsProcess, broker_from: usize, client: &NsProcess, client_from: usize) {
    let (b, c) = (broker.log(), client.log());
    assert!(
        b.lines().skip(broker_from).any(|l| l.contains("challenging")),
        "{what}: the broker sent no CHALLENGE:\n{b}"
    );
    assert!(
        c.lines().skip(client_from).any(|l| l.contains("challenged by the broker")),
        "{what}: the client answered no CHALLENGE:\n{c}"
    );
}

fn lines(p: &NsProcess) -> usize {
    p.log().lines().count()
}

/// The public port the NAT currently maps tunnel a's flow to.
fn nat_mapping(nat: &Netns, client: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &nat.name,
            "conntrack",
            "-L",
            "-p",
            "udp",
            "--orig-src",
            client,
            "--orig-port-src",
            "42424",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().rfind(|w| w.starts_with("dport=")).unwrap_or("none").to_owned()
}

#[test]
fn seven_scenarios_under_real_nats() {
    let lab = Lab::new();
    let config = lab.write_config();
    let mut broker = NsProcess::footunnel(&lab.broker, &["broker", "-v", "--config", &config]);
    broker.wait_for("broker running", Duration::from_secs(30));
    let mut results: Vec<(&str, Duration)> = Vec::new();

    // 6. Three clients at once, two behind the same NAT (distinct broker local addresses).
    let start = Instant::now();
    let client_a = lab.start_client("a", &lab.a);
    let client_b = lab.start_client("b", &lab.b);
    let client_c = lab.start_client("c", &lab.c);
    for (name, cl) in [("a", &lab.a), ("b", &lab.b), ("c", &lab.c)] {
        results.push((
            Box::leak(format!("6. three clients at once: {name}").into_boxed_str()),
            failover(cl, start, name, &[&broker]),
        ));
    }
    let log = broker.log();
    assert!(!log.contains("cannot tell them apart"), "distinct local addresses do not collide:\n{log}");

    // 7. The proof of concept's client: plaintext secret to port 42425, SNATed to the FoU port.
    // Its heartbeats and data are two flows, so it needs an endpoint-independent NAT (it
    // had no answer to the others: that is what the challenge path is for).
    let t = Instant::now();
    lab.poc.ns.run(|| {
        let sock = UdpSocket::bind("0.0.0.0:42425").unwrap();
        sock.send_to(secret("poc").as_bytes(), (lab.poc.broker_addr, 42425)).unwrap();
    });
    results.push(("7. proof-of-concept client (legacy)", failover(&lab.poc, t, "legacy client", &[&broker])));
    assert!(broker.log().contains("legacy heartbeats enabled"), "the broker warns about plaintext secrets");

    // 1. The client's address changes (it notices: address monitor → heartbeat).
    let before = nat_mapping(&lab.nat, "192.0.2.2");
    let log_from = client_a.log().lines().count();
    let t = Instant::now();
    lab.a.ns.ip("addr add 192.0.2.3/29 dev up0");
    lab.a.ns.ip("addr del 192.0.2.2/29 dev up0");
    lab.a.ns.ip("route replace default via 192.0.2.1");
    results.push(("1. client address changes", failover(&lab.a, t, "client address change", &[&broker, &client_a])));
    // The mechanism alone, by the client's own clock: the kernel reports the
    // change → heartbeat → broker re-points → ACK back.
    let log = client_a.log();
    let logged =
        |needle| log_seconds(&log, log_from, needle).unwrap_or_else(|| panic!("{needle:?} not logged:\n{log}"));
    let (noticed, acked) = (logged("the path to the broker changed"), logged("the broker sees this end at"));
    let mechanism = Duration::from_secs_f64(acked - noticed);
    println!("   (client: change noticed → ACK in {:.3} s)", mechanism.as_secs_f64());
    println!("   (NAT mapping: {before} before, {} after)", nat_mapping(&lab.nat, "192.0.2.3"));

    // 2. The NAT's public address changes (the client notices nothing locally).
    let (bf, cf) = (lines(&broker), lines(&client_a));
    let t = Instant::now();
    lab.nat.ip("addr add 203.0.113.2/24 dev pub0");
    lab.nat.ip("addr del 203.0.113.1/24 dev pub0");
    flush_conntrack(&lab.nat);
    results.push(("2. NAT public address changes", failover(&lab.a, t, "NAT address change", &[&broker, &client_a])));
    took_the_challenge_path("NAT address change", &broker, bf, &client_a, cf);

    // 3. The NAT's port mapping changes: new port range, mappings flushed.
    let (bf, cf) = (lines(&broker), lines(&client_a));
    let t = Instant::now();
    nft(&lab.nat, "meta l4proto udp masquerade to :50000-50999");
    flush_conntrack(&lab.nat);
    results.push(("3. NAT port mapping changes", failover(&lab.a, t, "NAT port change", &[&broker, &client_a])));
    took_the_challenge_path("NAT port change", &broker, bf, &client_a, cf);
    let show = footunnel_once(&lab.broker, &["show", "--state-dir", &format!("{}/broker", lab.dir)]).1;
    assert!(show.contains("endpoint: 203.0.113.2:50"), "tunnel a follows the new port:\n{show}");

    // 4. An endpoint-dependent NAT: a random port for every new flow.
    let (bf, cf) = (lines(&broker), lines(&client_a));
    let t = Instant::now();
    nft(&lab.nat, "meta l4proto udp masquerade fully-random");
    flush_conntrack(&lab.nat);
    results.push(("4. endpoint-dependent NAT", failover(&lab.a, t, "symmetric NAT", &[&broker, &client_a])));
    took_the_challenge_path("symmetric NAT", &broker, bf, &client_a, cf);

    // 5. Silent rebinding: only this flow's mapping is dropped; the next packet gets a new random port.
    let mapped = nat_mapping(&lab.nat, "192.0.2.3");
    let (bf, cf) = (lines(&broker), lines(&client_a));
    let t = Instant::now();
    sh(
        "ip",
        &[
            "netns",
            "exec",
            &lab.nat.name,
            "conntrack",
            "-D",
            "-p",
            "udp",
            "--orig-port-src",
            "42424",
            "--orig-src",
            "192.0.2.3",
        ],
    );
    results.push(("5. silent NAT rebinding", failover(&lab.a, t, "silent rebinding", &[&broker, &client_a])));
    took_the_challenge_path("silent rebinding", &broker, bf, &client_a, cf);
    let remapped = nat_mapping(&lab.nat, "192.0.2.3");
    println!("   (rebinding: {mapped} → {remapped})");
    assert_ne!(mapped, remapped, "the NAT picked a new port");

    // All three tunnels still work after all that.
    for cl in [&lab.a, &lab.b, &lab.c] {
        assert!(ping(cl) || ping(cl), "tunnel to {} broken after the scenarios", cl.broker_addr);
    }

    println!("\nfailover with a {INTERVAL_S} s heartbeat interval (event → first reply through the tunnel):");
    for (what, took) in &results {
        println!(
            "  {what:<40} {:>8.3} s  ({:.1} % of the interval)",
            took.as_secs_f64(),
            100.0 * took.as_secs_f64() / INTERVAL_S as f64
        );
    }
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|(what, took)| {
            serde_json::json!({ "scenario": what, "seconds": took.as_secs_f64(), "of_interval": took.as_secs_f64() / INTERVAL_S as f64 })
        })
        .collect();
    footunnel_tests::bench_out(
        "failover",
        &serde_json::json!({
            "interval_s": INTERVAL_S,
            "rows": rows,
            "client_change_noticed_to_ack_s": mechanism.as_secs_f64(),
        }),
    );
    drop((client_a, client_b, client_c));
}
