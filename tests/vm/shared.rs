//! Shared-device mode under a carrier-grade NAT: 20 clients behind one
//! public address, one broker address, one external-mode device. Each
//! client's FoU link sends from port 40001, so the NAT maps all but one of
//! them to other ports: the kernel's per-link receive could not tell them
//! apart, the data plane does.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use footunnel_tests::{Netns, NsProcess, footunnel_once, require_vm, veth};

use crate::e2e::sysctl;

const CLIENTS: usize = 20;
const BROKER: &str = "198.51.100.1";
const PUBLIC: &str = "198.51.100.2";

fn secret(i: usize) -> String {
    format!("shared-device secret of client {i:02}")
}

fn inner(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 2 + i as u8)
}

fn lan(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, 10 + i as u8)
}

struct Lab {
    broker: Netns,
    nat: Netns,
    clients: Vec<Netns>,
    dir: String,
    pin_dir: String,
}

impl Lab {
    fn new() -> Self {
        Lab::with(CLIENTS)
    }

    /// `n` clients behind the NAT, each with its tunnel.
    fn with(n: usize) -> Self {
        require_vm();
        let broker = Netns::new("broker");
        let nat = Netns::new("nat");
        let dir = format!("/tmp/ft-shared-{}", broker.name);
        std::fs::create_dir_all(&dir).unwrap();
        veth(&nat, "pub0", &format!("{PUBLIC}/24"), &broker, "up0", &format!("{BROKER}/24"));
        nat.ip("link add br0 type bridge");
        nat.ip("addr add 192.168.0.1/24 dev br0");
        nat.ip("link set br0 up");
        sysctl(&nat, "net.ipv4.ip_forward=1");
        nat_rules(&nat, "");
        let clients: Vec<Netns> = (0..n).map(|i| Netns::new(&format!("c{i}"))).collect();
        for (i, c) in clients.iter().enumerate() {
            nat.ip(&format!("link add lan{i} type veth peer name up0 netns {}", c.name));
            nat.ip(&format!("link set lan{i} master br0 up"));
            c.ip(&format!("addr add {}/24 dev up0", lan(i)));
            c.ip("link set up0 up");
            c.ip("route add default via 192.168.0.1");
            // Every client's tunnel sends from port 40001, as a fleet of
            // identical routers would.
            c.ip("fou add port 40001 ipproto 4");
            c.ip(&format!(
                "link add fou0 type ipip remote {BROKER} local {} ttl 64 encap fou encap-sport 40001 encap-dport 42424",
                lan(i)
            ));
            c.ip(&format!("addr add {}/32 dev fou0", inner(i)));
            c.ip("link set fou0 up");
            c.ip("route add 10.0.0.1/32 dev fou0");
        }
        let lab = Lab { pin_dir: format!("/sys/fs/bpf/ft-{}", broker.name), broker, nat, clients, dir };
        let mut toml = format!(
            "pin_dir = \"{}\"\nstate_dir = \"{}/broker\"\nmode = \"shared\"\n\n[shared]\nlocal = \"{BROKER}\"\naddress = \"10.0.0.1/32\"\n",
            lab.pin_dir, lab.dir
        );
        for i in 0..n {
            toml += &format!(
                "\n[[tunnel]]\nname = \"c{i:02}\"\nsecret = \"{}\"\npeer_prefixes = [\"{}/32\"]\n",
                secret(i),
                inner(i)
            );
        }
        std::fs::write(format!("{}/broker.toml", lab.dir), toml).unwrap();
        lab
    }

    fn start_broker(&self) -> NsProcess {
        let config = format!("{}/broker.toml", self.dir);
        let mut p = NsProcess::footunnel(&self.broker, &["broker", "-v", "--config", &config]);
        p.wait_for("broker running", Duration::from_secs(30));
        p
    }

    fn start_client(&self, i: usize) -> NsProcess {
        let state = format!("{}/client{i}", self.dir);
        NsProcess::footunnel(
            &self.clients[i],
            &["client", "-v", "--interval", "2", "--state-dir", &state, BROKER, &secret(i)],
        )
    }

    fn show(&self) -> String {
        let (ok, show) = footunnel_once(&self.broker, &["show", "--state-dir", &format!("{}/broker", self.dir)]);
        assert!(ok, "{show}");
        show
    }

    /// Each tunnel's endpoint as `show` reports it.
    fn endpoints(&self) -> HashMap<String, String> {
        let show = self.show();
        let mut tunnel = None;
        let mut out = HashMap::new();
        for line in show.lines() {
            if let Some(name) = line.strip_prefix("tunnel: ") {
                tunnel = Some(name.to_owned());
            } else if let (Some(t), Some(e)) = (&tunnel, line.trim().strip_prefix("endpoint: ")) {
                out.insert(t.clone(), e.to_owned());
            }
        }
        out
    }

    fn counter(&self, name: &str) -> u64 {
        let show = self.show();
        let counters = show.lines().find_map(|l| l.strip_prefix("counters: ")).unwrap_or("");
        counters.split(", ").find_map(|c| c.strip_prefix(&format!("{name} "))).map_or(0, |n| n.parse().unwrap())
    }

    /// One ping from the broker to client `i`'s inner address, answered
    /// within 200 ms: out through the egress program, back through the
    /// strict source check.
    fn ping(&self, i: usize) -> bool {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.broker.name, "ping", "-n", "-c", "1", "-W", "0.2"])
            .arg(inner(i).to_string())
            .output()
            .expect("run ping");
        out.status.success()
    }

    fn device_rx_packets(&self) -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.broker.name, "cat", "/sys/class/net/footunnel0/statistics/rx_packets"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

/// The NAT's ruleset: `first` (a rule of its own), then masquerade for
/// everything else leaving by the public side.
fn nat_rules(nat: &Netns, first: &str) {
    let ruleset = format!(
        "flush ruleset\ntable ip nat {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  {first}\n  oifname \"pub0\" masquerade\n }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{}.nft", nat.name));
    std::fs::write(&file, ruleset).unwrap();
    footunnel_tests::sh("ip", &["netns", "exec", &nat.name, "nft", "-f", file.to_str().unwrap()]);
}

impl Drop for Lab {
    fn drop(&mut self) {
        footunnel_tests::unload(&self.pin_dir, &format!("{}/broker", self.dir));
    }
}

/// What the kernel says about the path, for a failure message.
fn debug_paths(lab: &Lab) -> String {
    let run = |ns: &Netns, cmd: &str| {
        let out = std::process::Command::new("ip").args(["netns", "exec", &ns.name, "sh", "-c", cmd]).output().unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    format!(
        "broker:\n{}\nnat:\n{}\nclient 0:\n{}",
        run(
            &lab.broker,
            "ip -s -d link show footunnel0; ip -s link show up0; ip route; ip neigh; tc filter show dev footunnel0 egress; nstat -az | grep -iE 'udp|ip(in|out)|noroute|discard' "
        ),
        run(
            &lab.nat,
            "conntrack -L 2>/dev/null | head -5; ip -s link show pub0; nstat -az | grep -iE 'udp|ip(in|out)|noroute|discard'"
        ),
        run(
            &lab.clients[0],
            "ip -s -d link show fou0; ip -s link show up0; nstat -az | grep -iE 'udp|ip(in|out)|noroute|discard'"
        )
    )
}

/// An ICMP echo request from `src` to 10.0.0.1, as an inner IPv4 packet.
fn echo_request(src: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&[10, 0, 0, 1]);
    let sum = footunnel_tests::frame::checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let sum = footunnel_tests::frame::checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&icmp);
    p
}

#[test]
fn twenty_clients_behind_one_nat_address_share_one_device_and_move_one_at_a_time() {
    let lab = Lab::new();
    let broker = lab.start_broker();
    let mut clients: Vec<NsProcess> = (0..CLIENTS).map(|i| lab.start_client(i)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let start = Instant::now();
        while !c.log().contains(&format!("the broker sees this end at {PUBLIC}:")) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "client {i}: no ACK:\n{}\nbroker:\n{}\nclient:\n{}",
                lab.show(),
                broker.log(),
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            lab.ping(i) || lab.ping(i),
            "client {i}: no reply:\n{}\n{}\nbroker:\n{}\nclient:\n{}",
            lab.show().lines().last().unwrap_or(""),
            debug_paths(&lab),
            broker.log(),
            c.log()
        );
    }
    let before = lab.endpoints();
    let ports: std::collections::HashSet<&str> = before.values().map(|e| e.rsplit(':').next().unwrap()).collect();
    assert_eq!(before.len(), CLIENTS, "{before:?}");
    assert!(before.values().all(|e| e.starts_with(&format!("{PUBLIC}:"))), "one public address: {before:?}");
    assert_eq!(ports.len(), CLIENTS, "twenty distinct NAT ports: {before:?}");

    // Full-size packets: 1472 bytes inside (the default MTU), 1500 outside
    // (kernels before 5.12 capped a program's growth at the device's MTU).
    let big = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.broker.name, "ping", "-n", "-c", "2", "-W", "1", "-M", "do", "-s", "1444"])
        .arg(inner(0).to_string())
        .output()
        .unwrap();
    assert!(
        big.status.success(),
        "full-size packets do not get through:\n{}\n{}",
        String::from_utf8_lossy(&big.stdout),
        lab.show()
    );

    // All at once: a ping to every client in parallel.
    let all_at_once: Vec<bool> = std::thread::scope(|s| {
        let lab = &lab;
        let pings: Vec<_> = (0..CLIENTS).map(|i| s.spawn(move || lab.ping(i) || lab.ping(i))).collect();
        pings.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert!(all_at_once.iter().all(|ok| *ok), "replies at once: {all_at_once:?}\n{}", broker.log());

    // The NAT maps client 7's flow to a new port: only tunnel c07 moves.
    let moved = 7;
    nat_rules(&lab.nat, &format!("oifname \"pub0\" ip saddr {} udp sport 40001 masquerade to :55555", lan(moved)));
    // Its mapping goes; the other clients' stay.
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.nat.name, "conntrack", "-D", "-s"])
        .arg(lan(moved).to_string())
        .output();
    let start = Instant::now();
    loop {
        if lab.endpoints()[&format!("c{moved:02}")] == format!("{PUBLIC}:55555") && lab.ping(moved) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "c{moved:02} did not move:\n{:?}\n{}",
            lab.endpoints(),
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = lab.endpoints();
    for (name, endpoint) in &before {
        if name != &format!("c{moved:02}") {
            assert_eq!(&after[name], endpoint, "{name} moved with c{moved:02}");
        }
    }
    for i in (0..CLIENTS).filter(|i| *i != moved) {
        assert!(lab.ping(i) || lab.ping(i), "client {i} lost its tunnel when client {moved} moved");
    }

    // Client 3 claims client 7's inner address from its own flow: the same
    // public address, the wrong port. It must not enter the device.
    let spoofed_before = lab.counter("spoofed");
    let rx_before = lab.device_rx_packets();
    lab.clients[3].run(|| {
        let sock = UdpSocket::bind((lan(3), 40500)).unwrap();
        for _ in 0..5 {
            sock.send_to(&echo_request(inner(moved)), (BROKER, 42424)).unwrap();
        }
    });
    let start = Instant::now();
    while lab.counter("spoofed") < spoofed_before + 5 {
        assert!(start.elapsed() < Duration::from_secs(2), "spoofed packets not counted:\n{}", lab.show());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.device_rx_packets(), rx_before, "a spoofed packet entered the shared device");
    assert!(lab.ping(moved), "client {moved} is still served");

    // The device set down by hand: the broker says so at once and ACKs
    // nothing (an ACK would claim a tunnel that carries nothing), until it is up.
    let mut broker = broker;
    lab.broker.ip("link set footunnel0 down");
    broker.wait_for("shared device footunnel0 is down", Duration::from_secs(2));
    assert!(lab.show().contains("DOWN: shared device footunnel0 is down"), "show looks healthy:\n{}", lab.show());
    let acks = |c: &NsProcess| c.log().matches("ACK after").count();
    let before_down = acks(&clients[0]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(acks(&clients[0]), before_down, "ACKed while the device was down:\n{}", clients[0].log());
    lab.broker.ip("link set footunnel0 up");
    broker.wait_for("shared device footunnel0 carries the tunnels again", Duration::from_secs(2));
    assert!(!lab.show().contains("DOWN"), "show still says down:\n{}", lab.show());
    let start = Instant::now();
    while acks(&clients[0]) == before_down {
        assert!(start.elapsed() < Duration::from_secs(6), "no ACK after the device came back:\n{}", clients[0].log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its routes went with the link state; they are back, and so is traffic.
    assert!(lab.ping(0) || lab.ping(0), "no traffic after the device came back:\n{}", broker.log());

    // Killed (no goodbye) and started again: traffic flows while no
    // controller runs, the restart leaves the device as it is, and ACKs
    // still come from the FoU port (a client takes no other).
    broker.kill9();
    assert!(lab.ping(5) || lab.ping(5), "no traffic while the controller is down");
    let before_restart = acks(&clients[0]);
    let broker = lab.start_broker();
    let start = Instant::now();
    while acks(&clients[0]) == before_restart {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "no ACK after a restart:\nbroker:\n{}\nclient:\n{}",
            broker.log(),
            clients[0].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let device = lab.broker.ip("-d link show footunnel0");
    assert!(device.contains("ipip external"), "the restart changed the device:\n{device}");
    assert!(lab.ping(0) || lab.ping(0), "no traffic after the restart:\n{}", broker.log());
    drop(clients);
}

/// Client 1's inner flow, a ping from its inner address through its own
/// tunnel, sent `n` times; the broker's counters say where it went.
fn client_pings(lab: &Lab, i: usize, n: usize) {
    for _ in 0..n {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.clients[i].name, "ping", "-n", "-c", "1", "-W", "0.2", "-I"])
            .arg(inner(i).to_string())
            .arg("10.0.0.1")
            .output()
            .expect("run ping");
    }
}

#[test]
fn a_tunnel_removed_by_a_reload_loses_its_flow_and_its_route_at_once() {
    let lab = Lab::with(2);
    // The device made by hand, as an operator may: unload leaves it.
    lab.broker.ip("link add footunnel0 type ipip external");
    lab.broker.ip("link set footunnel0 up");
    let mut broker = lab.start_broker();
    let clients: Vec<NsProcess> = (0..2).map(|i| lab.start_client(i)).collect();
    for (i, c) in clients.iter().enumerate() {
        let start = Instant::now();
        while !(c.log().contains("the broker sees this end at") && lab.ping(i)) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "client {i}: no traffic:\n{}\n{}",
                broker.log(),
                c.log()
            );
        }
    }
    // Client 1's flow is served from the endpoint cache.
    let (data, rx) = (lab.counter("fou_data"), lab.device_rx_packets());
    client_pings(&lab, 1, 5);
    assert!(lab.counter("fou_data") >= data + 5 && lab.device_rx_packets() >= rx + 5, "client 1's flow did not pass");

    // Revoked: the tunnel leaves the configuration. Its client keeps sending.
    let config = format!("{}/broker.toml", lab.dir);
    let text = std::fs::read_to_string(&config).unwrap();
    let (kept, _) = text.split_once("\n[[tunnel]]\nname = \"c01\"").expect("c01 in the configuration");
    std::fs::write(&config, format!("{kept}\n")).unwrap();
    let (ok, out) = footunnel_once(&lab.broker, &["reload", "--state-dir", &format!("{}/broker", lab.dir)]);
    assert!(ok && out.contains("removed: c01"), "{out}");

    let (spoofed, data, rx) = (lab.counter("spoofed"), lab.counter("fou_data"), lab.device_rx_packets());
    client_pings(&lab, 1, 5);
    let (spoofed_after, data_after, rx_after) =
        (lab.counter("spoofed"), lab.counter("fou_data"), lab.device_rx_packets());
    assert!(
        spoofed_after >= spoofed + 5,
        "the removed tunnel's flow was not dropped as spoofed ({spoofed} → {spoofed_after}; fou_data {data} → \
         {data_after}; device rx {rx} → {rx_after})"
    );
    assert!(rx_after < rx + 5, "the removed tunnel's flow reached the device ({rx} → {rx_after})");
    let routes = lab.broker.ip("route show dev footunnel0");
    assert!(!routes.contains(&inner(1).to_string()), "the removed tunnel's route stays:\n{routes}");
    assert!(routes.contains(&inner(0).to_string()), "the kept tunnel's route went:\n{routes}");
    assert!(lab.ping(0) || lab.ping(0), "the kept tunnel lost its traffic:\n{}", broker.log());

    // Unload takes the egress program off the device it leaves, also where
    // it is a netlink filter (kernels before 6.6).
    broker.kill9();
    let (ok, out) = footunnel_once(
        &lab.broker,
        &["unload", "--pin-dir", &lab.pin_dir, "--state-dir", &format!("{}/broker", lab.dir)],
    );
    assert!(ok, "{out}");
    let filters = lab.broker.ip("-d link show footunnel0")
        + &footunnel_tests::sh(
            "ip",
            &["netns", "exec", &lab.broker.name, "tc", "filter", "show", "dev", "footunnel0", "egress"],
        );
    assert!(filters.contains("footunnel0"), "unload removed a device made by hand:\n{filters}");
    assert!(!filters.contains("footunnel_egress"), "unload left the egress program attached:\n{filters}");
}

/// Echo requests the broker's kernel answered (`Icmp: InEchos`).
fn in_echos(ns: &Netns) -> u64 {
    let snmp = footunnel_tests::sh("ip", &["netns", "exec", &ns.name, "cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let i = names.split_whitespace().position(|n| n == "InEchos").unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Sends `bytes` on a raw IPv4 socket of `protocol` to `to`, from inside `ns`;
/// with IPPROTO_RAW, `bytes` is the whole IP packet.
fn raw_send(ns: &Netns, protocol: i32, to: Ipv4Addr, bytes: &[u8]) {
    ns.run(|| {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, protocol);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.octets()) },
                sin_zero: [0; 8],
            };
            let n = libc::sendto(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(n, bytes.len() as isize, "sendto: {}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    });
}

/// A FoU datagram carrying `inner`, split into two IPv4 fragments (the
/// first with the UDP header and 16 bytes), as raw IP packets from `src`.
fn fou_fragments(src: Ipv4Addr, inner: &[u8]) -> [Vec<u8>; 2] {
    let mut udp = Vec::new();
    udp.extend_from_slice(&40001u16.to_be_bytes());
    udp.extend_from_slice(&42424u16.to_be_bytes());
    udp.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(inner);
    let ip = |frag: u16, payload: &[u8]| {
        let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34];
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, 17, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&BROKER.parse::<Ipv4Addr>().unwrap().octets());
        let total = (20 + payload.len()) as u16;
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h.extend_from_slice(payload);
        h
    };
    [ip(0x2000, &udp[..24]), ip(3, &udp[24..])]
}

#[test]
fn no_way_into_the_shared_device_skips_the_source_check() {
    let lab = Lab::with(1);
    let broker = lab.start_broker();
    let client = lab.start_client(0);
    let start = Instant::now();
    while !(client.log().contains("the broker sees this end at") && lab.ping(0)) {
        assert!(start.elapsed() < Duration::from_secs(30), "no traffic:\n{}\n{}", broker.log(), client.log());
    }
    // A host on another interface of the broker.
    let side = Netns::new("side");
    veth(&lab.broker, "side0", "192.0.2.1/24", &side, "eth0", "192.0.2.2/24");
    side.ip("route add default via 192.0.2.1");
    // Each carries an echo request from client 0's inner address: let in,
    // the broker's kernel would answer it.
    let forged = echo_request(inner(0));
    type Way<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let ways: [Way; 4] = [
        // From the NAT's public address, client 0's own: the strongest case.
        ("plain IP-in-IP", Box::new(|| raw_send(&lab.nat, libc::IPPROTO_IPIP, BROKER.parse().unwrap(), &forged))),
        (
            "FoU in two IPv4 fragments",
            Box::new(|| {
                for f in fou_fragments(PUBLIC.parse().unwrap(), &forged) {
                    raw_send(&lab.nat, libc::IPPROTO_RAW, BROKER.parse().unwrap(), &f);
                }
            }),
        ),
        (
            "FoU from a local process over loopback",
            Box::new(|| {
                lab.broker.run(|| {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.send_to(&forged, format!("{BROKER}:42424")).unwrap();
                })
            }),
        ),
        (
            "FoU arriving on another interface",
            Box::new(|| {
                side.run(|| {
                    let s = UdpSocket::bind("0.0.0.0:40001").unwrap();
                    s.send_to(&forged, format!("{BROKER}:42424")).unwrap();
                })
            }),
        ),
    ];
    let mut got_in = Vec::new();
    for (what, send) in &ways {
        let (echos, spoofed) = (in_echos(&lab.broker), lab.counter("spoofed"));
        for _ in 0..3 {
            send();
        }
        std::thread::sleep(Duration::from_millis(300));
        let (echos_after, spoofed_after) = (in_echos(&lab.broker), lab.counter("spoofed"));
        if echos_after != echos || spoofed_after < spoofed + 3 {
            got_in.push(format!("{what}: {} of 3 answered, spoofed {spoofed} → {spoofed_after}", echos_after - echos));
        }
    }
    assert!(got_in.is_empty(), "forged packets got into the shared device:\n{}", got_in.join("\n"));
    assert!(lab.ping(0) || lab.ping(0), "the client's own traffic stopped:\n{}", broker.log());
    // Proof that the test's packets would be answered: the same echo
    // request through the real tunnel is (the client's own inner address).
    let answered = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.clients[0].name, "ping", "-n", "-c", "1", "-W", "1", "-I"])
        .arg(inner(0).to_string())
        .arg("10.0.0.1")
        .output()
        .unwrap();
    assert!(answered.status.success(), "the real client's echo request is not answered either");
}

#[test]
fn udp_gso_leaves_whole_and_an_mtu_the_uplink_cannot_carry_is_refused() {
    let lab = Lab::with(1);
    let config = format!("{}/broker.toml", lab.dir);
    // PPPoE-sized uplink with the default shared.mtu (1472): refused, the fix named.
    lab.broker.ip("link set up0 mtu 1400");
    let mut refused = NsProcess::footunnel(&lab.broker, &["broker", "--config", &config]);
    let start = Instant::now();
    while refused.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "started with a device MTU the uplink cannot carry");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = refused.log();
    assert!(log.contains("set shared.mtu = 1372"), "{log}");
    assert!(!lab.broker.ip("link show").contains("footunnel0"), "the refused start left its device behind");
    lab.broker.ip("link set up0 mtu 1500");

    let broker = lab.start_broker();
    let client = lab.start_client(0);
    let start = Instant::now();
    while !(client.log().contains("the broker sees this end at") && lab.ping(0)) {
        assert!(start.elapsed() < Duration::from_secs(30), "no traffic:\n{}\n{}", broker.log(), client.log());
    }
    // One send of four 1000-byte segments (UDP_SEGMENT, as QUIC stacks do).
    let receiver = lab.clients[0].run(|| UdpSocket::bind("0.0.0.0:5000").unwrap());
    receiver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let failed = lab.counter("egress_failed");
    lab.broker.run(|| {
        use std::os::fd::AsRawFd;
        let s = UdpSocket::bind("10.0.0.1:0").unwrap();
        let segment: libc::c_int = 1000;
        // SAFETY: setsockopt on a socket this closure owns, with an int value.
        let rc =
            unsafe { libc::setsockopt(s.as_raw_fd(), libc::SOL_UDP, 103, (&segment as *const libc::c_int).cast(), 4) };
        assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        s.send_to(&[7u8; 4000], (inner(0), 5000)).unwrap();
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 2000];
    while let Ok(n) = receiver.recv(&mut buf) {
        got.push(n);
        if got.len() == 4 {
            break;
        }
    }
    assert_eq!(
        got,
        [1000; 4],
        "a UDP GSO send did not arrive whole (egress_failed {failed} → {})",
        lab.counter("egress_failed")
    );
}

/// The MTU a client discovers (or is given) becomes the route MTU of its
/// tunnel's prefixes in shared mode: per tunnel, kept across a reload.
#[test]
fn each_clients_mtu_becomes_its_prefixes_route_mtu_and_survives_a_reload() {
    let lab = Lab::with(2);
    let broker = lab.start_broker();
    let state = |i: usize| format!("{}/client{i}", lab.dir);
    let mut fixed = NsProcess::footunnel(
        &lab.clients[0],
        &["client", "-v", "--mtu", "1400", "--state-dir", &state(0), BROKER, &secret(0)],
    );
    let mut found =
        NsProcess::footunnel(&lab.clients[1], &["client", "-v", "--state-dir", &state(1), BROKER, &secret(1)]);
    fixed.wait_for("the broker set its end of the tunnel to MTU 1400", Duration::from_secs(20));
    found.wait_for("the broker set its end of the tunnel to MTU 1472", Duration::from_secs(20));
    let route_mtu = |i: usize| {
        let routes = lab.broker.ip("route show dev footunnel0");
        let line = routes.lines().find(|l| l.starts_with(&format!("{} ", inner(i)))).map(str::to_owned);
        line.and_then(|l| l.split_whitespace().skip_while(|w| *w != "mtu").nth(1).map(str::to_owned))
            .unwrap_or_else(|| panic!("no route MTU for client {i}:\n{routes}\n{}", broker.log()))
    };
    assert_eq!((route_mtu(0), route_mtu(1)), ("1400".to_owned(), "1472".to_owned()));
    // The route MTU is what the broker's own packets get: 1400 leaves, 1401 cannot.
    let df_ping = |size: u32| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &lab.broker.name, "ping", "-n", "-c", "1", "-W", "1", "-M", "do", "-s"])
            .arg((size - 28).to_string())
            .arg(inner(0).to_string())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(df_ping(1400) && !df_ping(1401), "the route MTU 1400 does not hold");
    let (ok, out) = footunnel_once(&lab.broker, &["reload", "--state-dir", &format!("{}/broker", lab.dir)]);
    assert!(ok, "{out}");
    assert_eq!((route_mtu(0), route_mtu(1)), ("1400".to_owned(), "1472".to_owned()), "after a reload");
}

/// `announce_table` in shared-device mode: a tunnel's prefix route through
/// the device is in the table while its client heartbeats here, and goes
/// when it falls silent; a client never heard is never announced.
#[test]
fn in_shared_mode_the_announce_table_holds_the_routes_of_fresh_tunnels_only() {
    let lab = Lab::with(2);
    let config = format!("{}/broker.toml", lab.dir);
    let toml = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("announce_table = 4242\nsilence_timeout = 5\n{toml}")).unwrap();
    let mut broker = lab.start_broker();
    // An empty table does not exist for `ip`: nothing in it either.
    let table = || {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.broker.name, "route", "show", "table", "4242"])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(table().trim(), "", "announced before any heartbeat");
    let mut client = lab.start_client(0);
    client.wait_for("the broker sees this end at", Duration::from_secs(20));
    broker.wait_for("10.1.0.2/32 announced (table 4242)", Duration::from_secs(5));
    let routes = table();
    assert!(routes.contains("10.1.0.2 dev footunnel0 proto 250 scope link"), "{routes}");
    assert!(!routes.contains("10.1.0.3"), "a client never heard is announced: {routes}");
    let mark = broker.mark();
    drop(client);
    broker.wait_for_since(mark, "10.1.0.2/32 withdrawn (table 4242)", Duration::from_secs(10));
    assert_eq!(table().trim(), "", "a silent tunnel's route stayed");
}
