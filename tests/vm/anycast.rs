//! Two brokers behind one anycast service address: a router running BIRD
//! learns the address from both over BGP with BFD and spreads clients over
//! them (ECMP on a layer-4 hash), clients behind NATs; each broker's BIRD announces the prefixes
//! of the tunnels that are fresh there (`announce_table`). One broker's
//! machine goes away: its clients' traffic from an internet host flows
//! through the other, and each prefix ends up announced by one broker.
//! The configurations are the ones docs/anycast.md shows.

use std::time::{Duration, Instant};

use footunnel_tests::{Netns, NsProcess, require_vm, sh, veth};

use crate::e2e::{nft, sysctl};

pub(crate) const SERVICE: &str = "192.0.2.53";
pub(crate) const INTERNET_HOST: &str = "203.0.113.130";
/// (tunnel, secret, broker's inner address, client's inner address, prefix).
pub(crate) const TUNNELS: [(&str, &str, &str, &str, &str); 2] = [
    ("c1", "anycast client one, long enough", "10.0.0.1", "10.0.0.2", "10.0.0.0/30"),
    ("c2", "anycast client two, long enough", "10.0.0.5", "10.0.0.6", "10.0.0.4/30"),
];

/// How the brokers carry the tunnels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Carrier {
    /// A link per tunnel.
    PerLink,
    /// One external-mode device for all (docs/shared-mode.md).
    Shared,
}

/// A broker node: footunnel and BIRD, the service address on lo.
struct Node {
    ns: Netns,
    dir: String,
    footunnel: Option<NsProcess>,
    bird: Option<NsProcess>,
    health_check: Option<NsProcess>,
}

impl Node {
    /// Node `i` (0 or 1), its uplink `198.51.100.(4i+2)/30` to the router.
    fn new(router: &Netns, i: u8, carrier: Carrier) -> Self {
        let ns = Netns::new("anyb");
        let (ours, theirs) = (4 * i + 2, 4 * i + 1);
        veth(
            router,
            &format!("b{i}"),
            &format!("198.51.100.{theirs}/30"),
            &ns,
            "up0",
            &format!("198.51.100.{ours}/30"),
        );
        ns.ip(&format!("route add default via 198.51.100.{theirs}"));
        ns.ip(&format!("addr add {SERVICE}/32 dev lo"));
        let peer = 4 * (1 - i) + 2;
        let settings = format!("announce_table = 4242\nsilence_timeout = 3\npeers = [\"198.51.100.{peer}\"]\n");
        let dir = match carrier {
            Carrier::PerLink => serve_tunnels(&ns, &settings),
            Carrier::Shared => serve_shared(&ns, &settings),
        };
        std::fs::write(format!("{dir}/bird.conf"), broker_bird(ours, theirs, 65001 + u32::from(i))).unwrap();
        Node { ns, dir, footunnel: None, bird: None, health_check: None }
    }

    fn start(&mut self, health_check: bool) {
        let mut bird = bird(&self.ns, &self.dir);
        bird.wait_for("Started", Duration::from_secs(20));
        self.bird = Some(bird);
        self.footunnel = Some(start_broker(&self.ns, &self.dir));
        if health_check {
            let script = health_check_script(&self.dir);
            self.health_check = Some(NsProcess::run_in(&self.ns, "sh", &["-c", &script]));
        }
    }

    fn log(&self) -> String {
        self.footunnel.as_ref().map(NsProcess::log).unwrap_or_default()
    }

    fn stop(&mut self) {
        self.health_check.take();
        self.footunnel.take();
        self.bird.take();
    }

    /// The machine stops: its processes die and nothing passes its uplink,
    /// whose link stays up (a switch in between): only BFD can tell.
    fn die(&mut self) {
        // Silent first: a killed BIRD's socket would close its session at once.
        silence_uplink(&self.ns, &self.dir);
        self.stop();
    }
}

/// Nothing passes `ns`'s uplink `up0` any more, which stays up (a switch in
/// between): a machine that stopped, as its neighbours see it.
pub(crate) fn silence_uplink(ns: &Netns, dir: &str) {
    let ruleset = "table netdev dead {\n chain in { type filter hook ingress device up0 priority 0; policy drop; }\n \
                   chain out { type filter hook egress device up0 priority 0; policy drop; }\n}\n";
    let file = format!("{dir}/dead.nft");
    std::fs::write(&file, ruleset).unwrap();
    sh("ip", &["netns", "exec", &ns.name, "nft", "-f", &file]);
}

/// The uplink passes traffic again (nothing to undo if it never went silent).
pub(crate) fn unsilence_uplink(ns: &Netns) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "delete", "table", "netdev", "dead"])
        .output();
}

impl Drop for Node {
    fn drop(&mut self) {
        footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", self.ns.name), &format!("{}/state", self.dir));
    }
}

/// A broker node's tunnels, served from the service address on uplink
/// `up0`: a link per tunnel and `broker.toml` (with `extra` settings) in
/// the node's directory, which is returned.
pub(crate) fn serve_tunnels(ns: &Netns, extra: &str) -> String {
    sysctl(ns, "net.ipv4.ip_forward=1");
    ns.ip("fou add port 42424 ipproto 4");
    for (n, (_, _, inner, _, _)) in TUNNELS.iter().enumerate() {
        ns.ip(&format!(
            "link add fou{n} type ipip remote 192.0.2.{} local {SERVICE} ttl 64 encap fou encap-sport 42424 \
             encap-dport 42424",
            200 + n
        ));
        ns.ip(&format!("addr add {inner}/30 dev fou{n}"));
        ns.ip(&format!("link set fou{n} up"));
    }
    let dir = format!("/tmp/ft-{}", ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!(
        "pin_dir = \"/sys/fs/bpf/ft-{}\"\nstate_dir = \"{dir}/state\"\ninterfaces = [\"up0\"]\n{extra}",
        ns.name
    );
    for (n, (name, secret, _, _, _)) in TUNNELS.iter().enumerate() {
        toml += &format!("[[tunnel]]\nname = \"{name}\"\nlink = \"fou{n}\"\nsecret = \"{secret}\"\n");
    }
    std::fs::write(format!("{dir}/broker.toml"), toml).unwrap();
    dir
}

/// Like [`serve_tunnels`], in shared-device mode: one device for both
/// tunnels, each routed by its prefix.
pub(crate) fn serve_shared(ns: &Netns, extra: &str) -> String {
    sysctl(ns, "net.ipv4.ip_forward=1");
    let dir = format!("/tmp/ft-{}", ns.name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!(
        "pin_dir = \"/sys/fs/bpf/ft-{}\"\nstate_dir = \"{dir}/state\"\ninterfaces = [\"up0\"]\n{extra}mode = \"shared\"\n\
         [shared]\nlocal = \"{SERVICE}\"\naddress = \"10.0.0.1/32\"\n",
        ns.name
    );
    for (name, secret, _, _, prefix) in TUNNELS {
        toml += &format!("[[tunnel]]\nname = \"{name}\"\nsecret = \"{secret}\"\npeer_prefixes = [\"{prefix}\"]\n");
    }
    std::fs::write(format!("{dir}/broker.toml"), toml).unwrap();
    dir
}

/// footunnel on a node [`serve_tunnels`] prepared, running.
pub(crate) fn start_broker(ns: &Netns, dir: &str) -> NsProcess {
    let config = format!("{dir}/broker.toml");
    let mut broker = NsProcess::footunnel(ns, &["broker", "-v", "--config", &config]);
    broker.wait_for("broker running", Duration::from_secs(30));
    broker
}

/// The code block after the first line of docs/anycast.md containing
/// `after`, with each `(documented, ours)` replaced (each must be there):
/// the tests run the configurations the documentation shows.
pub(crate) fn documented(after: &str, ours: &[(&str, String)]) -> String {
    let doc = include_str!("../../docs/anycast.md");
    let from = doc.find(after).unwrap_or_else(|| panic!("docs/anycast.md has no {after:?}"));
    let block = doc[from..].split("```").nth(1).expect("a code block after it");
    let block = block.split_once('\n').expect("a code block's first line").1;
    ours.iter().fold(block.to_owned(), |conf, (theirs, ours)| {
        assert!(conf.contains(theirs), "docs/anycast.md's block after {after:?} has no {theirs:?}:\n{conf}");
        conf.replace(theirs, ours)
    })
}

/// docs/anycast.md's broker BIRD configuration (the README shows it too):
/// the service address and the fresh tunnels' routes (table 4242,
/// protocol 250) to the router, BFD on the session.
fn broker_bird(ours: u8, router: u8, asn: u32) -> String {
    let documented_block = documented("`/etc/bird/bird.conf`", &[]);
    let readme = include_str!("../../README.md");
    assert!(readme.contains(&documented_block), "README.md's broker BIRD configuration differs from docs/anycast.md's");
    let conf = documented(
        "`/etc/bird/bird.conf`",
        &[
            ("router id 198.51.100.2;", format!("router id 198.51.100.{ours};")),
            ("\"eth0\"", "\"up0\"".to_owned()),
            ("local 198.51.100.2 as 65001;", format!("local 198.51.100.{ours} as {asn};")),
            ("neighbor 198.51.100.1 as", format!("neighbor 198.51.100.{router} as")),
        ],
    );
    format!("log stderr all;\n{conf}")
}

/// docs/anycast.md's router BIRD configuration: both brokers as BGP peers
/// with BFD, every path to the service address into the kernel (ECMP).
fn router_bird() -> String {
    format!("log stderr all;\n{}", documented("## The router", &[]))
}

/// docs/anycast.md's health check, every second: while `footunnel
/// show --check` passes the node announces the service address and its
/// tunnels' routes, otherwise neither.
fn health_check_script(dir: &str) -> String {
    let footunnel = footunnel_tests::footunnel_bin();
    let (state, socket) = (format!("{dir}/state"), format!("{dir}/bird.ctl"));
    format!(
        "while sleep 1; do \
           if {} show --check --state-dir {state} >/dev/null 2>&1; then how=enable; else how=disable; fi; \
           [ \"$how\" = \"$was\" ] || echo \"$(date +%T.%N) $how\"; was=$how; \
           birdc -s {socket} $how service >/dev/null; birdc -s {socket} $how tunnels >/dev/null; \
         done",
        footunnel.display()
    )
}

fn bird(ns: &Netns, dir: &str) -> NsProcess {
    let (conf, socket) = (format!("{dir}/bird.conf"), format!("{dir}/bird.ctl"));
    NsProcess::run_in(ns, "bird", &["-f", "-c", &conf, "-s", &socket, "-P", &format!("{dir}/bird.pid")])
}

/// The router's route to `prefix` as `ip route` shows it.
fn route(router: &Netns, prefix: &str) -> String {
    router.ip(&format!("route show {prefix}"))
}

pub(crate) fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: not within {limit:?}\n{}", logs());
}

pub(crate) fn pings(from: &Netns, target: &str) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", &from.name, "ping", "-n", "-c", "1", "-W", "0.2", target])
        .output()
        .expect("run ping")
        .status
        .success()
}

/// The router, two broker nodes, an internet host, two clients behind
/// NATs of their own, everything up and settled.
struct Lab {
    router: Netns,
    internet: Netns,
    nodes: [Node; 2],
    _router_bird: NsProcess,
    _nats: Vec<Netns>,
    /// (client namespace, client process) per tunnel.
    _clients: Vec<(Netns, NsProcess)>,
    /// The nodes run the health check (and so do they when revived).
    health_check: bool,
}

impl Lab {
    fn new(health_check: bool, carrier: Carrier) -> Self {
        require_vm();
        let router = Netns::new("anyr");
        let internet = Netns::new("anyi");
        let dir = format!("/tmp/ft-{}", router.name);
        std::fs::create_dir_all(&dir).unwrap();
        sysctl(&router, "net.ipv4.ip_forward=1");
        // Flows are spread by their ports too, not by addresses alone.
        sysctl(&router, "net.ipv4.fib_multipath_hash_policy=1");
        let mut nodes = [Node::new(&router, 0, carrier), Node::new(&router, 1, carrier)];
        veth(&router, "inet0", "203.0.113.129/25", &internet, "up0", &format!("{INTERNET_HOST}/25"));
        internet.ip("route add default via 203.0.113.129");
        std::fs::write(format!("{dir}/bird.conf"), router_bird()).unwrap();
        let router_bird = bird(&router, &dir);
        for node in &mut nodes {
            node.start(health_check);
        }
        let agreed = "peers 198.51.100.2 have the same prefixes for every tunnel";
        assert!(nodes[1].log().contains(agreed), "node 1 compared its prefixes with node 0's:\n{}", nodes[1].log());
        wait_until(
            "the router learns the service address from both brokers",
            Duration::from_secs(30),
            || route(&router, SERVICE).matches("nexthop").count() == 2,
            || format!("{}\n{}", route(&router, SERVICE), sh("ip", &["-n", &router.name, "route"])),
        );
        let (nats, clients) = clients(&router, carrier, &dir);
        let lab =
            Lab { router, internet, nodes, _router_bird: router_bird, _nats: nats, _clients: clients, health_check };
        lab.settle();
        lab
    }

    /// Each prefix announced by one broker, each client reached.
    fn settle(&self) {
        for (_, _, _, client_inner, prefix) in TUNNELS {
            wait_until(
                &format!("{prefix} announced by exactly one broker"),
                Duration::from_secs(10),
                || self.served_by(prefix).is_some(),
                || format!("{}\n{}", route(&self.router, prefix), self.logs()),
            );
            wait_until(
                &format!("the internet host reaches {client_inner}"),
                Duration::from_secs(5),
                || pings(&self.internet, client_inner),
                || self.logs(),
            );
        }
    }

    /// Brings node `n` back as it started, and waits until the router
    /// reaches the service address through both again.
    fn revive(&mut self, n: usize) {
        self.nodes[n].stop();
        unsilence_uplink(&self.nodes[n].ns);
        self.nodes[n].start(self.health_check);
        wait_until(
            "the router learns the service address from both brokers again",
            Duration::from_secs(30),
            || route(&self.router, SERVICE).matches("nexthop").count() == 2,
            || route(&self.router, SERVICE),
        );
        // The router's hash may send a client back to the revived broker:
        // for up to a silence_timeout both announce it, as both can carry it.
        std::thread::sleep(Duration::from_secs(4));
        self.settle();
    }

    /// Rounds of: node serving c1 stopped by `stop`, the takeover timed,
    /// the node brought back. The times; one round unless benchmarking.
    fn takeovers(&mut self, stop: fn(&mut Node), what: &str) -> Vec<f64> {
        let rounds = footunnel_tests::bench_rounds();
        let mut times = Vec::new();
        for round in 0..rounds {
            let before: Vec<Option<usize>> = TUNNELS.iter().map(|t| self.served_by(t.4)).collect();
            let gone = before[0].expect("c1 is served");
            if round == 0 {
                println!("anycast: c1 on broker {gone}, c2 on broker {:?}", before[1]);
            }
            // From the first thing `stop` does (the uplink silent, or footunnel gone).
            let since = Instant::now();
            stop(&mut self.nodes[gone]);
            times.push(self.takeover(gone, &before, since, what).as_secs_f64());
            if round + 1 < rounds {
                self.revive(gone);
            }
        }
        times
    }

    /// The node whose BGP session the router's one route to `prefix` uses.
    fn served_by(&self, prefix: &str) -> Option<usize> {
        let r = route(&self.router, prefix);
        if r.contains("nexthop") || !r.contains("via") {
            return None;
        }
        Some(if r.contains("via 198.51.100.2 ") { 0 } else { 1 })
    }

    /// What the router and node `n` say, for a failure's message.
    fn diagnosis(&self, prefix: &str, n: usize) -> String {
        let node = &self.nodes[n];
        let (_, check) = footunnel_tests::footunnel_once(
            &node.ns,
            &["show", "--check", "--state-dir", &format!("{}/state", node.dir)],
        );
        let socket = format!("{}/bird.ctl", node.dir);
        let bird = sh("ip", &["netns", "exec", &node.ns.name, "birdc", "-s", &socket, "show", "protocols"]);
        format!(
            "router: {}{}\nnode {n}: show --check: {check}\n{bird}\n{}\nhealth check: {}",
            route(&self.router, prefix),
            route(&self.router, SERVICE),
            node.log(),
            node.health_check.as_ref().map(NsProcess::log).unwrap_or_default()
        )
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(Node::log).collect::<Vec<_>>().join("\n----\n")
    }

    /// After node `gone` stopped serving: how long until the internet host
    /// reaches each of its clients through the other node, which then alone
    /// announces their prefixes; the other node's clients never stop.
    fn takeover(&self, gone: usize, before: &[Option<usize>], since: Instant, what: &str) -> Duration {
        let mut c1 = Duration::ZERO;
        for (n, (name, _, _, client_inner, prefix)) in TUNNELS.into_iter().enumerate() {
            let moved = before[n] == Some(gone);
            wait_until(
                &format!("{name}: the internet host reaches {client_inner} again"),
                Duration::from_secs(10),
                || pings(&self.internet, client_inner) && self.served_by(prefix) == Some(1 - gone),
                || self.diagnosis(prefix, 1 - gone),
            );
            if moved {
                println!(
                    "anycast: {what}: {name} reached through broker {} after {:.1} s",
                    1 - gone,
                    since.elapsed().as_secs_f64()
                );
            }
            if n == 0 {
                c1 = since.elapsed();
            }
        }
        let service = route(&self.router, SERVICE);
        assert!(!service.contains("nexthop") && service.contains("via"), "the service address: {service}");
        c1
    }
}

/// NAT `n` between the router and a LAN (bridge `br0`, 10.77.n.1/24),
/// masquerading behind 203.0.113.(16n+1).
pub(crate) fn nat(router: &Netns, n: usize) -> Netns {
    let nat = Netns::new("anyn");
    let net = 16 * n as u8;
    veth(
        router,
        &format!("nat{n}"),
        &format!("203.0.113.{}/28", net + 2),
        &nat,
        "pub0",
        &format!("203.0.113.{}/28", net + 1),
    );
    nat.ip(&format!("route add default via 203.0.113.{}", net + 2));
    sysctl(&nat, "net.ipv4.ip_forward=1");
    nft(&nat, "masquerade");
    nat.ip("link add br0 type bridge");
    nat.ip(&format!("addr add 10.77.{n}.1/24 dev br0"));
    nat.ip("link set br0 up");
    nat
}

/// The client of tunnel `t` on NAT `n`'s LAN at 10.77.n.`host`, heard by
/// its broker.
fn client_behind(nat: &Netns, n: usize, host: u8, t: usize, dir: &str) -> (Netns, NsProcess) {
    let (name, secret, _, client_inner, _) = TUNNELS[t];
    let ns = Netns::new("anyc");
    nat.ip(&format!("link add lan{t} type veth peer name up0 netns {}", ns.name));
    nat.ip(&format!("link set lan{t} master br0 up"));
    ns.ip(&format!("addr add 10.77.{n}.{host}/24 dev up0"));
    ns.ip("link set up0 up");
    ns.ip(&format!("route add default via 10.77.{n}.1"));
    ns.ip("fou add port 42424 ipproto 4");
    ns.ip(&format!("link add fou0 type ipip remote {SERVICE} ttl 64 encap fou encap-sport 42424 encap-dport 42424"));
    ns.ip(&format!("addr add {client_inner}/30 dev fou0"));
    ns.ip("link set fou0 up");
    ns.ip("route add 203.0.113.128/25 dev fou0");
    let state = format!("{dir}/{name}");
    let mut p = NsProcess::footunnel(&ns, &["client", "-v", "--interval", "1", "--state-dir", &state, SERVICE, secret]);
    p.wait_for("the broker sees this end at", Duration::from_secs(20));
    (ns, p)
}

/// Client `n` behind a NAT of its own (per-link mode tells two clients at
/// one public address apart only on distinct broker addresses), heard by
/// its broker.
pub(crate) fn client(router: &Netns, n: usize, dir: &str) -> (Netns, Netns, NsProcess) {
    let nat = nat(router, n);
    let (ns, p) = client_behind(&nat, n, 2, n, dir);
    (nat, ns, p)
}

/// The clients as each mode can have them: per-link mode a NAT each,
/// shared-device mode both behind one NAT address.
pub(crate) fn clients(router: &Netns, carrier: Carrier, dir: &str) -> (Vec<Netns>, Vec<(Netns, NsProcess)>) {
    match carrier {
        Carrier::PerLink => (0..TUNNELS.len()).map(|t| client(router, t, dir)).map(|(n, c, p)| (n, (c, p))).unzip(),
        Carrier::Shared => {
            let nat = nat(router, 0);
            let clients = (0..TUNNELS.len()).map(|t| client_behind(&nat, 0, 2 + t as u8, t, dir)).collect();
            (vec![nat], clients)
        }
    }
}

#[test]
fn when_one_anycast_brokers_machine_dies_its_clients_are_reached_through_the_other() {
    let mut lab = Lab::new(false, Carrier::PerLink);
    // Its processes die and its uplink goes silent.
    let times = lab.takeovers(Node::die, "its machine died");
    footunnel_tests::bench_times("anycast_machine", &times);
}

#[test]
fn when_one_anycast_brokers_footunnel_stops_its_health_check_withdraws_it() {
    let mut lab = Lab::new(true, Carrier::PerLink);
    // BIRD and the machine stay; `footunnel show --check` fails, and the
    // health check withdraws the service address and the tunnels' routes.
    let times = lab.takeovers(|node| drop(node.footunnel.take()), "its footunnel stopped");
    footunnel_tests::bench_times("anycast_footunnel", &times);
}

#[test]
fn in_shared_mode_two_clients_behind_one_nat_address_move_to_the_other_anycast_broker() {
    // Per-link mode could not tell these two apart behind one service address.
    let mut lab = Lab::new(false, Carrier::Shared);
    let times = lab.takeovers(Node::die, "shared-device mode, its machine died");
    footunnel_tests::bench_times("anycast_shared", &times);
}
