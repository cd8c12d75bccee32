//! Path MTU discovery (PROBE) on a path smaller than 1500 that black-holes
//! what does not fit: client — NAT — mid — broker, the mid router's link
//! toward the broker of 1492 (PPPoE) or 1452 bytes, and no ICMP from it.
//! Offloads are off on every veth: a GSO packet crosses a veth without the
//! receiver's MTU check, which would hide the small MTU. (Measured on 6.1:
//! this topology black-holes with offloads on too; they stay off so that no
//! kernel's offload choices can make the failing-first test pass.)

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use footunnel_tests::{Netns, NsProcess, footunnel_once, log_seconds, require_vm, sh, veth};

use crate::broker::read_link;
use crate::e2e::{nft, sysctl};

const SECRET: &str = "path mtu test secret, long enough to pass";
const BROKER: &str = "203.0.113.100";
/// The README's fixed MTU: what fits a 1500-byte path.
const README_MTU: u32 = 1472;
const BYTES: usize = 10 << 20;
/// No progress for this long is a stall (the transfer itself takes about a
/// second in the VM; a black hole never recovers).
const STALL: Duration = Duration::from_secs(5);

struct Lab {
    broker: Netns,
    mid: Netns,
    nat: Netns,
    client: Netns,
    pin_dir: String,
    state_dir: String,
}

fn offloads_off(ns: &Netns, dev: &str) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"])
        .output()
        .expect("run ethtool");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("exec of"), "ethtool is missing: `cargo xtask setup` installs it: {stderr}");
    assert!(out.status.success(), "ethtool -K {dev} in {}: {stderr}", ns.name);
}

impl Lab {
    /// `path`: the MTU of the mid router's link toward the broker.
    fn new(path: u32) -> Self {
        require_vm();
        let broker = Netns::new("broker");
        let lab = Lab {
            pin_dir: format!("/sys/fs/bpf/ft-{}", broker.name),
            state_dir: format!("/tmp/ft-{}", broker.name),
            broker,
            mid: Netns::new("mid"),
            nat: Netns::new("nat"),
            client: Netns::new("client"),
        };
        veth(&lab.client, "up0", "192.0.2.2/29", &lab.nat, "lan0", "192.0.2.1/29");
        veth(&lab.nat, "pub0", "198.51.100.1/30", &lab.mid, "in0", "198.51.100.2/30");
        veth(&lab.mid, "out0", "203.0.113.1/24", &lab.broker, "up0", "203.0.113.100/24");
        // Only the mid router's end is small: neither end host can see it.
        // A frame from the broker larger than it is dropped on receipt; one
        // from the NAT, when forwarded, with the ICMP error dropped below.
        lab.mid.ip(&format!("link set out0 mtu {path}"));
        for (ns, dev) in [
            (&lab.client, "up0"),
            (&lab.nat, "lan0"),
            (&lab.nat, "pub0"),
            (&lab.mid, "in0"),
            (&lab.mid, "out0"),
            (&lab.broker, "up0"),
        ] {
            offloads_off(ns, dev);
        }
        lab.client.ip("route add default via 192.0.2.1");
        lab.nat.ip("route add default via 198.51.100.2");
        lab.broker.ip("route add default via 203.0.113.1");
        sysctl(&lab.nat, "net.ipv4.ip_forward=1");
        sysctl(&lab.mid, "net.ipv4.ip_forward=1");
        nft(&lab.nat, "masquerade");
        let ruleset = "flush ruleset\ntable inet filter {\n chain out {\n  type filter hook output priority 0;\n  \
                       icmp type destination-unreachable drop\n }\n}\n";
        let file = std::env::temp_dir().join(format!("{}.nft", lab.mid.name));
        std::fs::write(&file, ruleset).unwrap();
        sh("ip", &["netns", "exec", &lab.mid.name, "nft", "-f", file.to_str().unwrap()]);

        lab.broker.ip("fou add port 42424 ipproto 4");
        lab.broker.ip(&format!(
            "link add fou0 mtu {README_MTU} type ipip remote 192.0.2.200 local {BROKER} ttl 64 \
             encap fou encap-sport 42424 encap-dport 42424"
        ));
        lab.broker.ip("addr add 10.0.0.1/30 dev fou0");
        lab.broker.ip("link set fou0 up");
        lab.client.ip("fou add port 42424 ipproto 4");
        lab.client.ip(&format!(
            "link add fou0 mtu {README_MTU} type ipip remote {BROKER} ttl 64 encap fou encap-sport 42424 \
             encap-dport 42424"
        ));
        lab.client.ip("addr add 10.0.0.2/30 dev fou0");
        lab.client.ip("link set fou0 up");
        lab
    }

    fn start(&self, mtu: &str) -> (NsProcess, NsProcess, Instant) {
        let mut broker = NsProcess::footunnel(
            &self.broker,
            &["broker", "-v", "--pin-dir", &self.pin_dir, "--state-dir", &self.state_dir, "fou0", SECRET],
        );
        broker.wait_for("broker running", Duration::from_secs(20));
        let state = format!("{}-client", self.state_dir);
        let mut client =
            NsProcess::footunnel(&self.client, &["client", "-v", "--mtu", mtu, "--state-dir", &state, BROKER, SECRET]);
        client.wait_for("the broker sees this end at 198.51.100.1:", Duration::from_secs(20));
        let acked = Instant::now();
        (broker, client, acked)
    }

    fn mtu(&self, ns: &Netns) -> u32 {
        read_link(ns, "fou0").unwrap().mtu.expect("an MTU")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        footunnel_tests::unload(&self.pin_dir, &self.state_dir);
    }
}

/// Whether one ping of `size` bytes in all (IPv4 header included) with
/// don't-fragment set gets through the tunnel from `ns` to `to`.
fn ping_df(ns: &Netns, to: &str, size: u32) -> bool {
    let payload = (size - 28).to_string();
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s", &payload, to])
        .output()
        .expect("run ping")
        .status
        .success()
}

/// Moves [`BYTES`] from the client to the broker and back over TCP through
/// the tunnel; the time each direction took, or where it stalled.
fn tcp_both_ways(lab: &Lab) -> Result<(Duration, Duration), String> {
    let listener = lab.broker.run(|| TcpListener::bind("10.0.0.1:5201").unwrap());
    std::thread::scope(|s| {
        let server = s.spawn(|| -> Result<(), String> {
            let (mut conn, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
            conn.set_read_timeout(Some(STALL)).unwrap();
            conn.set_write_timeout(Some(STALL)).unwrap();
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0;
            while got < BYTES {
                let n = conn.read(&mut buf).map_err(|e| format!("upload stalled at {got} bytes: {e}"))?;
                if n == 0 {
                    return Err(format!("upload closed at {got} bytes"));
                }
                got += n;
            }
            conn.write_all(&vec![7u8; BYTES]).map_err(|e| format!("download stalled: {e}"))
        });
        let result = lab.client.run(|| -> Result<(Duration, Duration), String> {
            let to: SocketAddr = (Ipv4Addr::new(10, 0, 0, 1), 5201).into();
            let mut conn = TcpStream::connect_timeout(&to, STALL).map_err(|e| format!("connect: {e}"))?;
            conn.set_read_timeout(Some(STALL)).unwrap();
            conn.set_write_timeout(Some(STALL)).unwrap();
            let start = Instant::now();
            conn.write_all(&vec![9u8; BYTES]).map_err(|e| format!("upload stalled: {e}"))?;
            let mut buf = vec![0u8; 64 << 10];
            let mut got = 0;
            let mut up = None;
            while got < BYTES {
                let n = conn.read(&mut buf).map_err(|e| format!("download stalled at {got} bytes: {e}"))?;
                if n == 0 {
                    return Err(format!("download closed at {got} bytes"));
                }
                up.get_or_insert_with(|| start.elapsed());
                got += n;
            }
            let up = up.unwrap_or_default();
            Ok((up, start.elapsed() - up))
        });
        let served = server.join().unwrap();
        match (result, served) {
            (Ok(times), Ok(())) => Ok(times),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    })
}

fn discovery_fits_the_path(path: u32) {
    let lab = Lab::new(path);
    let (broker, mut client, acked) = lab.start("auto");
    let inner = path - 28;
    client.wait_for("the broker set its end of the tunnel to MTU", Duration::from_secs(10));
    let log = client.log();
    let first_ack = log_seconds(&log, 0, "the broker sees this end").unwrap();
    let found = log_seconds(&log, 0, "tunnel MTU").expect("the MTU found is logged");
    println!("path {path}: tunnel MTU {inner} found {:.2} s after the first ACK", found - first_ack);
    assert!(found - first_ack < 3.0, "discovery took {:.2} s:\n{log}", found - first_ack);
    assert!(acked.elapsed() < Duration::from_secs(10));
    assert_eq!(lab.mtu(&lab.client), inner, "the client's link MTU:\n{log}");
    assert_eq!(lab.mtu(&lab.broker), inner, "the broker's link MTU:\n{}", broker.log());
    assert!(broker.log().contains(&format!("MTU {inner}, as its client discovered, on link fou0")), "{}", broker.log());

    // Exactly the MTU passes both ways with don't-fragment; one byte more
    // cannot leave either end (the link refuses it locally).
    for (from, to) in [(&lab.client, "10.0.0.1"), (&lab.broker, "10.0.0.2")] {
        assert!(ping_df(from, to, inner), "a {inner}-byte ping from {} is lost", from.name);
        assert!(!ping_df(from, to, inner + 1), "a {}-byte ping left {}", inner + 1, from.name);
    }
    let (up, down) = tcp_both_ways(&lab).unwrap_or_else(|e| panic!("path {path}: {e}"));
    println!("path {path}: 10 MB up in {up:?}, down in {down:?}");

    let (ok, show) = footunnel_once(&lab.client, &["show", "--state-dir", &format!("{}-client", lab.state_dir)]);
    assert!(
        ok && show.contains(&format!(
            "tunnel MTU: {inner} (the largest the path carries, discovered; the broker's end has it too)"
        )),
        "{show}"
    );
    let (ok, json) = footunnel_once(&lab.broker, &["show", "--json", "--state-dir", &lab.state_dir]);
    assert!(ok, "{json}");
    let show: serde_json::Value = serde_json::from_str(&json).unwrap();
    let counter = |name: &str| {
        show["broker"]["counters"].as_array().unwrap().iter().find(|c| c[0] == name).and_then(|c| c[1].as_u64())
    };
    let probes = counter("probe").expect("a probe counter");
    assert!((2..=30).contains(&probes), "the search's PROBEs, and the announcement: {probes}");
    assert_eq!(counter("probe_limited"), Some(0), "the client keeps within the broker's budget");
}

#[test]
fn on_a_pppoe_path_discovery_sets_both_ends_and_tcp_flows() {
    discovery_fits_the_path(1492);
}

#[test]
fn on_a_1452_byte_path_discovery_sets_both_ends_and_tcp_flows() {
    discovery_fits_the_path(1452);
}

/// The failing-first check: with the README's fixed MTU (no discovery) the
/// same path black-holes large packets: small pings pass, TCP stalls. If
/// this passed, the topology would hide the small MTU and prove nothing.
#[test]
fn with_the_readme_mtu_a_small_path_stalls_tcp() {
    let lab = Lab::new(1492);
    let (_broker, client, _) = lab.start("off");
    assert!(ping_df(&lab.client, "10.0.0.1", 100), "small packets pass: {}", client.log());
    assert!(!ping_df(&lab.client, "10.0.0.1", README_MTU), "a full-size packet passed a 1492-byte path");
    assert_eq!(lab.mtu(&lab.client), README_MTU, "--mtu off leaves the link alone");
    let e = tcp_both_ways(&lab).expect_err("10 MB crossed a path that black-holes 1472-byte packets");
    assert!(e.contains("stalled"), "{e}");
    assert!(!client.log().contains("PROBE"), "--mtu off sends no PROBE: {}", client.log());
}

/// `--mtu N`: no discovery; the link and the broker's end get N. The
/// broker refuses an MTU its uplink cannot carry, and changes nothing.
#[test]
fn a_fixed_mtu_is_set_on_both_ends_and_one_the_broker_cannot_carry_is_refused() {
    let lab = Lab::new(1492);
    {
        let (broker, mut client, _) = lab.start("1400");
        client.wait_for("the broker set its end of the tunnel to MTU 1400", Duration::from_secs(10));
        assert_eq!((lab.mtu(&lab.client), lab.mtu(&lab.broker)), (1400, 1400), "{}", broker.log());
        assert!(!client.log().contains("PROBE of"), "a fixed MTU needs no search: {}", client.log());
    }
    let (broker, mut client, _) = lab.start("1490");
    client.wait_for("the broker did not apply MTU 1490", Duration::from_secs(10));
    assert!(broker.log().contains("MTU 1490 is above 1472"), "{}", broker.log());
    assert_eq!(lab.mtu(&lab.broker), 1400, "a refused MTU changes nothing");
    let (ok, out) = footunnel_once(&lab.client, &["client", "--mtu", "500", BROKER, SECRET]);
    assert!(!ok && out.contains("500 is below 576"), "{out}");
}

/// A new route to the broker is a new path: the client discovers again,
/// within the route's own MTU, and both ends follow.
#[test]
fn after_a_route_change_the_client_discovers_again() {
    let lab = Lab::new(1492);
    let (broker, mut client, _) = lab.start("auto");
    client.wait_for("the broker set its end of the tunnel to MTU 1464", Duration::from_secs(10));
    let mark = client.mark();
    lab.mid.ip("link set out0 mtu 1452");
    lab.client.ip("route replace default via 192.0.2.1 mtu 1480");
    client.wait_for_since(mark, "the broker set its end of the tunnel to MTU 1424", Duration::from_secs(20));
    assert_eq!((lab.mtu(&lab.client), lab.mtu(&lab.broker)), (1424, 1424), "{}", broker.log());
    let log = client.log();
    let probes: Vec<&str> = log[mark..].lines().filter(|l| l.contains("PROBE of")).collect();
    assert!(
        probes.iter().all(|l| !l.contains("PROBE of 1453 ") && !l.contains("PROBE of 1464 ")),
        "the search stays within the route's MTU (1480 - 28):\n{}",
        probes.join("\n")
    );
    assert!(probes.first().is_some_and(|l| l.ends_with("PROBE of 1452 bytes")), "{log}");
}
