//! `footunnel broker` against real FoU ipip links: re-pointing on hand-built
//! heartbeats, ACKs, CHALLENGEs, rejections, restarts, traffic.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::{Duration, Instant},
};

use footunnel::now_ns;
use footunnel::{os::link::TunnelLink, os::rawudp::RawUdp};
use footunnel_tests::{Netns, NsProcess, by_hand, footunnel_once, require_vm, veth};
use netlink_packet_route::link::TunnelEncapType;

pub const SECRET: &str = "vm test secret, long enough to pass";
pub const BROKER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLIENT_A: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const CLIENT_B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);

/// Reads a tunnel link the way the broker does, from inside `ns`.
pub fn read_link(ns: &Netns, name: &str) -> anyhow::Result<TunnelLink> {
    let name = name.to_owned();
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            footunnel::os::link::get(&handle, &name).await
        })
    })
}

/// A broker namespace with a FoU ipip link, and a client namespace whose
/// link comes from CLIENT_B:40001, connected by veth.
pub struct Topology {
    pub broker: Netns,
    pub client: Netns,
    pub pin_dir: String,
    pub state_dir: String,
}

impl Topology {
    pub fn new() -> Self {
        require_vm();
        let broker = Netns::new("broker");
        let client = Netns::new("client");
        veth(&broker, "up0", "198.51.100.1/24", &client, "up0", "198.51.100.2/24");
        client.ip("addr add 198.51.100.3/24 dev up0");
        broker.ip("fou add port 42424 ipproto 4");
        broker.ip("link add fou0 type ipip remote 198.51.100.2 local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
        broker.ip("addr add 10.0.0.1/30 dev fou0");
        broker.ip("link set fou0 up");
        client.ip("fou add port 40001 ipproto 4");
        client.ip("link add fou0 type ipip remote 198.51.100.1 local 198.51.100.3 ttl 64 encap fou encap-sport 40001 encap-dport 42424");
        client.ip("addr add 10.0.0.2/30 dev fou0");
        client.ip("link set fou0 up");
        let pin_dir = format!("/sys/fs/bpf/ft-{}", broker.name);
        let state_dir = format!("/tmp/ft-{}", broker.name);
        Topology { broker, client, pin_dir, state_dir }
    }

    pub fn start_broker(&self, extra: &[&str]) -> NsProcess {
        let mut args = vec!["broker", "-v", "--pin-dir", &self.pin_dir, "--state-dir", &self.state_dir];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["fou0", SECRET]);
        let mut p = NsProcess::footunnel(&self.broker, &args);
        p.wait_for("broker running", Duration::from_secs(20));
        p
    }

    /// Sends a UDP datagram from the client namespace.
    pub fn send(&self, src: Ipv4Addr, sport: u16, payload: &[u8]) {
        self.send_to(BROKER, src, sport, payload);
    }

    /// Sends a UDP datagram from the client namespace to `dst`'s FoU port.
    pub fn send_to(&self, dst: Ipv4Addr, src: Ipv4Addr, sport: u16, payload: &[u8]) {
        self.client.run(|| RawUdp::open().unwrap().send(src, sport, dst, 42424, payload).unwrap());
    }

    pub fn link(&self) -> TunnelLink {
        read_link(&self.broker, "fou0").expect("broker's fou0")
    }

    /// Waits until the broker's link points at `remote`:`dport`.
    pub fn wait_for_endpoint(&self, remote: Ipv4Addr, dport: u16, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let l = self.link();
            if l.remote() == Some(IpAddr::V4(remote)) && l.encap_dport() == Some(dport) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "link still at {:?}:{:?}, expected {remote}:{dport}",
                l.remote(),
                l.encap_dport()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One ping from the client's tunnel address to the broker's.
    pub fn ping(&self) -> bool {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client.name, "ping", "-c", "1", "-W", "2", "10.0.0.1"])
            .output()
            .expect("run ping");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("exec of"), "ping is missing: `cargo xtask setup` installs iputils-ping: {stderr}");
        out.status.success()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        footunnel_tests::unload(&self.pin_dir, &self.state_dir);
    }
}

/// Control messages from the broker's FoU port seen in the client namespace.
pub fn receive_from_broker(topo: &Topology, want_kind: u8, to_port: u16, timeout: Duration) -> Option<Vec<u8>> {
    receive_in(&topo.client, want_kind, to_port, timeout)
}

/// A control message of `want_kind` from the broker's FoU port to `to_port`,
/// seen in namespace `ns` within `timeout`.
pub fn receive_in(ns: &Netns, want_kind: u8, to_port: u16, timeout: Duration) -> Option<Vec<u8>> {
    receive_from(ns, BROKER, want_kind, to_port, timeout)
}

/// As [`receive_in`], from the broker at `broker`.
pub fn receive_from(ns: &Netns, broker: Ipv4Addr, want_kind: u8, to_port: u16, timeout: Duration) -> Option<Vec<u8>> {
    ns.run(|| {
        let sock = RawUdp::open().unwrap();
        sock.set_nonblocking().unwrap();
        let start = Instant::now();
        while start.elapsed() < timeout {
            while let Some(d) = sock.recv().unwrap() {
                if d.src == broker && d.sport == 42424 && d.dport == to_port && d.payload.get(2) == Some(&want_kind) {
                    return Some(d.payload);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

/// Seconds of the day at which the broker logged the line containing `needle`.
fn log_time(log: &str, needle: &str) -> f64 {
    footunnel_tests::log_seconds(log, 0, needle).unwrap_or_else(|| panic!("{needle:?} not logged:\n{log}"))
}

#[test]
fn a_heartbeat_from_a_new_address_and_port_repoints_the_link_and_traffic_flows() {
    let topo = Topology::new();
    let before = topo.link();
    let broker = topo.start_broker(&[]);
    assert!(!topo.ping(), "no traffic while the broker's link points at the wrong place");

    let ack = std::thread::scope(|s| {
        let listener = s.spawn(|| receive_from_broker(&topo, 2, 40001, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(200));
        topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
        listener.join().unwrap().unwrap_or_else(|| panic!("no ACK; broker log:\n{}", broker.log()))
    });
    let took = topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    println!("link re-pointed {took:?} after the ACK arrived");
    let after = topo.link();
    assert_eq!(after.local(), before.local(), "local unchanged");
    assert_eq!(after.ttl(), before.ttl(), "ttl unchanged");
    assert_eq!(after.encap_type(), Some(TunnelEncapType::Fou), "encap type unchanged");
    assert_eq!(after.encap_sport(), before.encap_sport(), "encap-sport unchanged");
    by_hand::verify(SECRET, &ack, 2).expect("the ACK is a valid broker message");
    assert_eq!(&ack[24..30], &[198, 51, 100, 3, 0x9c, 0x41], "ACK says where the broker saw us");
    assert!(topo.ping(), "traffic flows through the re-pointed tunnel");
}

#[test]
fn with_tc_ingress_a_port_change_repoints_the_link_too() {
    let topo = Topology::new();
    let broker = topo.start_broker(&["--attach", "tc"]);
    assert!(broker.log().contains("up0: TC ingress attached"), "{}", broker.log());
    let t0 = now_ns();
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, t0, [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    // Same address, new port: a NAT rebinding. It counts as much as an address change.
    topo.send(CLIENT_B, 40011, &by_hand::heartbeat(SECRET, t0 + 1_000_000, [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40011, Duration::from_secs(2));
}

#[test]
fn after_a_reboot_old_heartbeats_stay_rejected() {
    let topo = Topology::new();
    let captured;
    {
        let _broker = topo.start_broker(&[]);
        captured = by_hand::heartbeat(SECRET, now_ns(), [0; 8]);
        topo.send(CLIENT_B, 40001, &captured);
        topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    }
    // A reboot loses every pinned map: unload is the same loss.
    let (ok, out) =
        footunnel_once(&topo.broker, &["unload", "--pin-dir", &topo.pin_dir, "--state-dir", &topo.state_dir]);
    assert!(ok, "{out}");
    let _broker = topo.start_broker(&[]);
    topo.send(CLIENT_A, 40002, &captured);
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(topo.link().encap_dport(), Some(40001), "a heartbeat from before the reboot was accepted");
    let (_, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(show.contains("replay 1"), "{show}");
    // A fresh one is accepted.
    topo.send(CLIENT_A, 40002, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    topo.wait_for_endpoint(CLIENT_A, 40002, Duration::from_secs(2));
}

#[test]
fn forged_replayed_and_stale_heartbeats_change_nothing() {
    let topo = Topology::new();
    let _broker = topo.start_broker(&[]);
    let t0 = now_ns();
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, t0, [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));

    let mut forged = by_hand::heartbeat(SECRET, t0 + 1_000_000, [0; 8]);
    forged[39] ^= 1;
    let wrong_secret = by_hand::heartbeat("not the secret at all, no", t0 + 1_000_000, [0; 8]);
    let replayed = by_hand::heartbeat(SECRET, t0, [0; 8]);
    let stale = by_hand::heartbeat(SECRET, t0 - 300_000_000_000, [0; 8]);
    for (what, payload) in
        [("forged", forged), ("other secret", wrong_secret), ("replayed", replayed), ("stale", stale)]
    {
        topo.send(CLIENT_A, 40777, &payload);
        std::thread::sleep(Duration::from_millis(700));
        let l = topo.link();
        assert_eq!((l.remote(), l.encap_dport()), (Some(IpAddr::V4(CLIENT_B)), Some(40001)), "{what} changed the link");
    }
    assert!(topo.ping(), "the tunnel still works");
    let (ok, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(ok, "{show}");
    for want in ["endpoint: 198.51.100.3:40001", "bad_tag 1", "unknown_tunnel 1", "replay 1", "stale 1"] {
        assert!(show.contains(want), "{want:?} missing from `footunnel show`:\n{show}");
    }
}

/// An anycast node: the tunnel's local address is a service address the
/// broker holds on lo, as every node announcing it does. Without the uplink
/// named the start is refused with the fix; with it, heartbeats to the
/// service address are accepted, the ACK and a CHALLENGE leave from it, and
/// traffic flows.
#[test]
fn a_service_address_on_lo_is_served_on_the_uplink_and_answered_from_itself() {
    const SERVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
    let topo = Topology::new();
    topo.broker.ip("addr add 192.0.2.53/32 dev lo");
    topo.client.ip("route add 192.0.2.53/32 via 198.51.100.1");
    // `ip link set … type ipip` would reset the encapsulation: both links anew.
    for (ns, ends, addr) in [
        (&topo.broker, "remote 198.51.100.2 local 192.0.2.53 encap-sport 42424", "10.0.0.1/30"),
        (&topo.client, "remote 192.0.2.53 local 198.51.100.3 encap-sport 40001", "10.0.0.2/30"),
    ] {
        ns.ip("link del fou0");
        ns.ip(&format!("link add fou0 type ipip {ends} ttl 64 encap fou encap-dport 42424"));
        ns.ip(&format!("addr add {addr} dev fou0"));
        ns.ip("link set fou0 up");
    }
    let state_flags = ["--pin-dir", &topo.pin_dir, "--state-dir", &topo.state_dir];
    let (ok, out) = footunnel_once(&topo.broker, &[&["broker"][..], &state_flags, &["fou0", SECRET]].concat());
    assert!(!ok && out.contains("192.0.2.53 is on lo") && out.contains("--interface"), "{out}");

    let broker = topo.start_broker(&["--interface", "up0"]);
    let ack = std::thread::scope(|s| {
        let listener = s.spawn(|| receive_from(&topo.client, SERVICE, 2, 40001, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(200));
        topo.send_to(SERVICE, CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
        listener.join().unwrap().unwrap_or_else(|| panic!("no ACK from {SERVICE}; broker log:\n{}", broker.log()))
    });
    by_hand::verify(SECRET, &ack, 2).expect("the ACK is a valid broker message");
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    assert!(topo.ping(), "no traffic through the service address:\n{}", broker.log());
    // FoU data from a new source: the CHALLENGE leaves from the service address too.
    let challenge = std::thread::scope(|s| {
        let listener = s.spawn(|| receive_from(&topo.client, SERVICE, 3, 40002, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(200));
        // 48 bytes: a CHALLENGE is never larger than what provoked it.
        let mut inner = vec![0x45, 0, 0, 48, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
        inner.resize(48, 0);
        topo.send_to(SERVICE, CLIENT_A, 40002, &inner);
        listener.join().unwrap()
    });
    assert!(challenge.is_some(), "no CHALLENGE from {SERVICE}:\n{}", broker.log());
}

/// `--trace` on this kernel: its verifier accepts the programs with the
/// trace on (XDP and TC), and each control message gets one line.
#[test]
fn with_trace_each_control_message_is_logged_with_its_verdict() {
    let topo = Topology::new();
    for attach in ["xdp", "tc"] {
        let mut broker = topo.start_broker(&["--trace", "--attach", attach]);
        let t0 = now_ns();
        topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, t0, [0; 8]));
        let mut forged = by_hand::heartbeat(SECRET, t0 + 1_000_000, [0; 8]);
        forged[39] ^= 1;
        topo.send(CLIENT_A, 40777, &forged);
        broker.wait_for(
            "198.51.100.2 port 40777 -> ::ffff:198.51.100.1 port 42424: dropped bad_tag",
            Duration::from_secs(3),
        );
        let log = broker.log();
        assert!(
            log.contains(
                "control message ::ffff:198.51.100.3 port 40001 -> ::ffff:198.51.100.1 port 42424: accepted heartbeat"
            ),
            "{attach}: the accepted heartbeat is not traced:\n{log}"
        );
        drop(broker);
        let unload = ["unload", "--pin-dir", &topo.pin_dir, "--state-dir", &topo.state_dir];
        let (ok, out) = footunnel_once(&topo.broker, &unload);
        assert!(ok, "{out}");
    }
    let broker = topo.start_broker(&[]);
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    assert!(!broker.log().contains("control message"), "traced without --trace:\n{}", broker.log());
}

#[test]
fn fou_data_from_a_new_source_draws_a_challenge_and_changes_nothing() {
    let topo = Topology::new();
    let broker = topo.start_broker(&[]);
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    // An inner IPv4 packet from the tunnel's peer address, 48 bytes.
    let mut inner = vec![0x45, 0, 0, 48, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1];
    inner.resize(48, 0);
    let challenge = std::thread::scope(|s| {
        let listener = s.spawn(|| receive_from_broker(&topo, 3, 40005, Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(200));
        topo.send(CLIENT_A, 40005, &inner);
        listener.join().unwrap().unwrap_or_else(|| {
            let (_, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
            panic!("no CHALLENGE; show:\n{show}\nbroker log:\n{}", broker.log())
        })
    });
    by_hand::verify(SECRET, &challenge, 3).expect("a valid CHALLENGE");
    std::thread::sleep(Duration::from_millis(500));
    let l = topo.link();
    assert_eq!((l.remote(), l.encap_dport()), (Some(IpAddr::V4(CLIENT_B)), Some(40001)), "data moved the link");
    let (_, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(show.contains("unexpected source: 198.51.100.2:40005"), "{show}");
    let (_, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("show --json is JSON");
    assert_eq!(v["broker"]["tunnels"][0]["endpoint"], "198.51.100.3:40001");
}

#[test]
fn after_kill_9_a_restart_applies_what_arrived_meanwhile_within_a_second() {
    let topo = Topology::new();
    let mut broker = topo.start_broker(&[]);
    let t0 = now_ns();
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, t0, [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    broker.kill9();

    // While the controller is down the data plane still verifies and records.
    topo.send(CLIENT_A, 40002, &by_hand::heartbeat(SECRET, t0 + 1_000_000, [0; 8]));
    topo.send(CLIENT_A, 40003, &by_hand::heartbeat(SECRET, t0, [0; 8])); // a replay, still rejected
    std::thread::sleep(Duration::from_millis(300));
    let l = topo.link();
    assert_eq!(l.encap_dport(), Some(40001), "nothing changes the link while the controller is down");

    let started = Instant::now();
    let mut restarted = NsProcess::footunnel(
        &topo.broker,
        &["broker", "-v", "--pin-dir", &topo.pin_dir, "--state-dir", &topo.state_dir, "fou0", SECRET],
    );
    topo.wait_for_endpoint(CLIENT_A, 40002, Duration::from_secs(10));
    restarted.wait_for("continuing from the pinned state", Duration::from_secs(5));
    let log = restarted.log();
    let startup = started.elapsed();
    let repointed = log_time(&log, "now points at 198.51.100.2:40002");
    let applied = repointed - log_time(&log, "broker starting");
    println!(
        "restart: {applied:.3} s from the broker's start to the re-pointed link ({startup:?} including exec in the VM)"
    );
    footunnel_tests::bench_out("restart", &serde_json::json!({ "start_to_repointed_s": startup.as_secs_f64() }));
    // What arrived meanwhile is applied before the slow part of a start,
    // loading the program (under TCG a busy VM stretches the whole start).
    assert!(repointed < log_time(&log, "eBPF object loaded"), "applied only after loading the program:\n{log}");
    assert!(applied <= 2.0, "took {applied} s:\n{log}");
    let (_, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(show.contains("replay 1"), "{show}");
}

#[test]
fn two_clients_behind_one_address_on_one_local_address_are_reported_not_merged() {
    require_vm();
    let broker = Netns::new("coll");
    let client = Netns::new("collc");
    veth(&broker, "up0", "198.51.100.1/24", &client, "up0", "198.51.100.2/24");
    broker.ip("fou add port 42424 ipproto 4");
    for (i, link) in ["fou0", "fou1"].iter().enumerate() {
        broker.ip(&format!(
            "link add {link} type ipip remote 192.0.2.{} local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424",
            10 + i
        ));
        broker.ip(&format!("link set {link} up"));
    }
    let dir = format!("/tmp/ft-{}", broker.name);
    std::fs::create_dir_all(&dir).unwrap();
    let secret = |n: &str| format!("collision test secret of tunnel {n}");
    let mut toml = format!("pin_dir = \"/sys/fs/bpf/ft-{}\"\nstate_dir = \"{dir}/state\"\n", broker.name);
    for (n, link, prefix) in [("a", "fou0", "10.0.0.0/30"), ("b", "fou1", "10.0.0.4/30")] {
        toml += &format!(
            "\n[[tunnel]]\nname = \"{n}\"\nlink = \"{link}\"\nsecret = \"{}\"\npeer_prefixes = [\"{prefix}\"]\n",
            secret(n)
        );
    }
    std::fs::write(format!("{dir}/broker.toml"), toml).unwrap();
    let mut process = NsProcess::footunnel(&broker, &["broker", "-v", "--config", &format!("{dir}/broker.toml")]);
    process.wait_for("broker running", Duration::from_secs(20));
    let send = |n: &str, port: u16| {
        let hb = by_hand::heartbeat(&secret(n), now_ns(), [0; 8]);
        client.run(|| RawUdp::open().unwrap().send(CLIENT_A, port, BROKER, 42424, &hb).unwrap());
    };
    let ack_to = |port: u16| {
        std::thread::scope(|s| {
            let listener = s.spawn(|| receive_in(&client, 2, port, Duration::from_secs(3)));
            std::thread::sleep(Duration::from_millis(200));
            send(if port == 40001 { "a" } else { "b" }, port);
            listener.join().unwrap()
        })
    };
    assert!(ack_to(40001).is_some(), "tunnel a's client is ACKed:\n{}", process.log());
    process.wait_for("link fou0 now points at 198.51.100.2:40001", Duration::from_secs(5));
    // An ACK means "the link now points at you": b's link was not changed.
    assert!(ack_to(40002).is_none(), "the refused change was ACKed:\n{}", process.log());
    process.wait_for("the kernel's FoU receive cannot tell them apart", Duration::from_secs(5));
    let b = read_link(&broker, "fou1").unwrap();
    assert_eq!(
        (b.remote(), b.encap_dport()),
        (Some("192.0.2.11".parse().unwrap()), Some(42424)),
        "fou1 left as it was"
    );
    let a = read_link(&broker, "fou0").unwrap();
    assert_eq!(a.encap_dport(), Some(40001), "fou0 still serves tunnel a");
    // Where an operator looks: show names the refusal, --check fails on it,
    // and the metric says so (written by the next sweep tick, within 1 s).
    let state_dir = format!("{dir}/state");
    let start = std::time::Instant::now();
    let show = loop {
        let (_, show) = footunnel_once(&broker, &["show", "--state-dir", &state_dir]);
        if show.contains("ERROR: its client is now at") || start.elapsed() > Duration::from_secs(3) {
            break show;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(show.contains("ERROR: its client is now at 198.51.100.2:40002"), "show hides the refusal:\n{show}");
    let (healthy, check) = footunnel_once(&broker, &["show", "--check", "--state-dir", &state_dir]);
    assert!(
        !healthy && check.contains("tunnel \"b\": its client is now at"),
        "--check passes a refused tunnel:\n{check}"
    );
    drop(process);
    footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", broker.name), &format!("{dir}/state"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `announce_table`: a tunnel's prefix route is in the table (protocol 250)
/// from its first accepted heartbeat until it falls silent; a restart
/// clears what it finds there and announces what is fresh.
#[test]
fn an_announce_table_holds_the_routes_of_fresh_tunnels_only() {
    let topo = Topology::new();
    let config = format!("/tmp/ft-announce-{}.toml", topo.broker.name);
    std::fs::write(
        &config,
        format!(
            "pin_dir = \"{}\"\nstate_dir = \"{}\"\nannounce_table = 4242\nsilence_timeout = 3\n\
             [[tunnel]]\nname = \"fou0\"\nlink = \"fou0\"\nsecret = \"{SECRET}\"\n",
            topo.pin_dir, topo.state_dir
        ),
    )
    .unwrap();
    // A route left by an earlier run, of a tunnel no longer fresh.
    topo.broker.ip("route add 10.9.9.0/24 dev fou0 table 4242 proto 250");
    let table = || topo.broker.ip("route show table 4242");
    let mut broker = NsProcess::footunnel(&topo.broker, &["broker", "-v", "--config", &config]);
    broker.wait_for("broker running", Duration::from_secs(20));
    assert_eq!(table().trim(), "", "an earlier run's route stayed, or a tunnel never heard was announced");
    let mark = broker.mark();
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    broker.wait_for_since(mark, "10.0.0.0/30 announced (table 4242)", Duration::from_secs(3));
    let routes = table();
    assert!(routes.contains("10.0.0.0/30 dev fou0 proto 250 scope link"), "{routes}");
    broker.wait_for_since(mark, "10.0.0.0/30 withdrawn (table 4242)", Duration::from_secs(6));
    assert_eq!(table().trim(), "", "a silent tunnel's route stayed");
    // Fresh again, then a restart: the route is back at once.
    let mark = broker.mark();
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    broker.wait_for_since(mark, "10.0.0.0/30 announced (table 4242)", Duration::from_secs(3));
    drop(broker);
    let mut again = NsProcess::footunnel(&topo.broker, &["broker", "-v", "--config", &config]);
    again.wait_for("10.0.0.0/30 announced (table 4242)", Duration::from_secs(20));
    assert!(table().contains("10.0.0.0/30 dev fou0 proto 250"), "{}", table());
}
