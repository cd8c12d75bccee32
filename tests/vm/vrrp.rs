//! Two brokers on one segment sharing the service address by VRRP
//! (keepalived): the master holds it while `footunnel show --check`
//! passes, the router sends the tunnels' prefixes to it by a static route
//! via the service address. The master goes away: the backup takes the
//! address, learns each client from its next heartbeat, and an internet
//! host reaches the clients through it. The configuration is the one
//! docs/anycast.md shows.

use std::time::{Duration, Instant};

use footunnel_tests::{Netns, NsProcess, require_vm};

use crate::anycast::{
    Carrier, INTERNET_HOST, SERVICE, TUNNELS, clients, documented, pings, serve_shared, serve_tunnels, silence_uplink,
    start_broker, unsilence_uplink, wait_until,
};
use crate::e2e::sysctl;

/// A broker machine on the segment: footunnel and keepalived.
struct Node {
    ns: Netns,
    dir: String,
    footunnel: Option<NsProcess>,
    keepalived: Option<NsProcess>,
}

impl Node {
    /// Node `i` (0, the preferred master, or 1) at `192.0.2.(2+i)/24` on
    /// the router's bridge.
    fn new(router: &Netns, i: u8, carrier: Carrier) -> Self {
        let ns = Netns::new("vrb");
        router.ip(&format!("link add seg{i} type veth peer name up0 netns {}", ns.name));
        router.ip(&format!("link set seg{i} master br0 up"));
        ns.ip(&format!("addr add 192.0.2.{}/24 dev up0", 2 + i));
        ns.ip("link set up0 up");
        ns.ip("route add default via 192.0.2.1");
        let peers = format!("peers = [\"192.0.2.{}\"]\n", 3 - i);
        let dir = match carrier {
            Carrier::PerLink => serve_tunnels(&ns, &peers),
            Carrier::Shared => serve_shared(&ns, &peers),
        };
        let priority = 100 - 10 * u32::from(i);
        std::fs::write(format!("{dir}/keepalived.conf"), keepalived_conf(&dir, priority)).unwrap();
        Node { ns, dir, footunnel: None, keepalived: None }
    }

    fn start(&mut self) {
        self.footunnel = Some(start_broker(&self.ns, &self.dir));
        let dir = &self.dir;
        let (conf, pid, vrrp_pid) = (format!("{dir}/keepalived.conf"), format!("{dir}/k.pid"), format!("{dir}/v.pid"));
        let mut keepalived = NsProcess::run_in(
            &self.ns,
            "keepalived",
            &["--dont-fork", "--log-console", "--no-syslog", "--vrrp", "-f", &conf, "-p", &pid, "-r", &vrrp_pid],
        );
        keepalived.wait_for("Entering BACKUP STATE", Duration::from_secs(20));
        self.keepalived = Some(keepalived);
    }

    fn holds_service_address(&self) -> bool {
        self.ns.ip("-4 addr show dev up0").contains(&format!("inet {SERVICE}/24"))
    }

    fn log(&self) -> String {
        let log = |p: &Option<NsProcess>| p.as_ref().map(NsProcess::log).unwrap_or_default();
        format!("{}\n{}", log(&self.footunnel), log(&self.keepalived))
    }

    fn stop(&mut self) {
        if let Some(mut k) = self.keepalived.take() {
            k.terminate();
        }
        self.footunnel.take();
    }

    /// The machine stops: nothing passes its uplink any more (VRRP
    /// adverts included, so only their absence tells the backup), then its
    /// processes die.
    fn die(&mut self) {
        silence_uplink(&self.ns, &self.dir);
        self.stop();
    }

    /// Back as a rebooted machine comes: no service address, its uplink
    /// passing traffic, footunnel and keepalived started.
    fn revive(&mut self) {
        self.stop();
        // Gone already if keepalived gave the address back.
        let _ = std::process::Command::new("ip")
            .args(["-n", &self.ns.name, "addr", "del", &format!("{SERVICE}/24"), "dev", "up0"])
            .output();
        unsilence_uplink(&self.ns);
        self.start();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", self.ns.name), &format!("{}/state", self.dir));
    }
}

/// The keepalived.conf docs/anycast.md shows (the README shows it too),
/// with this node's priority, uplink and paths.
fn keepalived_conf(dir: &str, priority: u32) -> String {
    let readme = include_str!("../../README.md");
    let documented_conf = documented("/etc/keepalived/keepalived.conf", &[]);
    assert!(readme.contains(&documented_conf), "README.md's keepalived.conf differs from docs/anycast.md's");
    let footunnel = footunnel_tests::footunnel_bin();
    documented(
        "/etc/keepalived/keepalived.conf",
        &[
            (
                "/usr/bin/footunnel show --check",
                format!("{} show --check --state-dir {dir}/state", footunnel.display()),
            ),
            ("eth0", "up0".to_owned()),
            ("priority 100", format!("priority {priority}")),
        ],
    )
}

/// The router (a bridge for the broker segment, a static route for the
/// tunnels' prefixes via the service address), the two nodes, an internet
/// host, two clients behind NATs of their own; node 0 master, every client
/// reached.
struct Lab {
    router: Netns,
    internet: Netns,
    nodes: [Node; 2],
    _nats: Vec<Netns>,
    _clients: Vec<(Netns, NsProcess)>,
}

impl Lab {
    fn new(carrier: Carrier) -> Self {
        require_vm();
        let router = Netns::new("vrr");
        let internet = Netns::new("vri");
        let dir = format!("/tmp/ft-{}", router.name);
        std::fs::create_dir_all(&dir).unwrap();
        sysctl(&router, "net.ipv4.ip_forward=1");
        router.ip("link add br0 type bridge");
        router.ip("addr add 192.0.2.1/24 dev br0");
        router.ip("link set br0 up");
        let mut nodes = [Node::new(&router, 0, carrier), Node::new(&router, 1, carrier)];
        footunnel_tests::veth(&router, "inet0", "203.0.113.129/25", &internet, "up0", &format!("{INTERNET_HOST}/25"));
        internet.ip("route add default via 203.0.113.129");
        router.ip(&format!("route add 10.0.0.0/29 via {SERVICE}"));
        for node in &mut nodes {
            node.start();
        }
        let agreed = "peers 192.0.2.2 have the same prefixes for every tunnel";
        assert!(nodes[1].log().contains(agreed), "node 1 compared its prefixes with node 0's:\n{}", nodes[1].log());
        let mut lab = Lab { router, internet, nodes, _nats: Vec::new(), _clients: Vec::new() };
        lab.wait_for_master(0, Instant::now(), "node 0 (priority 100) becomes master");
        (lab._nats, lab._clients) = clients(&lab.router, carrier, &dir);
        lab.reach_every_client(Instant::now(), Duration::from_secs(5));
        lab
    }

    /// Waits until node `n` alone holds the service address.
    fn wait_for_master(&self, n: usize, since: Instant, what: &str) {
        wait_until(
            what,
            Duration::from_secs(15).saturating_sub(since.elapsed()),
            || self.nodes[n].holds_service_address() && !self.nodes[1 - n].holds_service_address(),
            || self.logs(),
        );
    }

    /// Waits until the internet host reaches every client; the time since `since`.
    fn reach_every_client(&self, since: Instant, limit: Duration) -> Duration {
        for (name, _, _, client_inner, _) in TUNNELS {
            wait_until(
                &format!("{name}: the internet host reaches {client_inner}"),
                limit.saturating_sub(since.elapsed()),
                || pings(&self.internet, client_inner),
                || format!("{}\n{}", self.router.ip("neigh"), self.logs()),
            );
        }
        since.elapsed()
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(Node::log).collect::<Vec<_>>().join("\n----\n")
    }

    /// Rounds of: the master (node 0) stopped by `stop`, the time until node
    /// 1 holds the address and every client is reached through it, node 0
    /// revived (it takes the address back: it has the higher priority).
    fn takeovers(&mut self, stop: fn(&mut Node), what: &str) -> Vec<f64> {
        let mut times = Vec::new();
        for round in 0..footunnel_tests::bench_rounds() {
            if round > 0 {
                self.nodes[0].revive();
                self.wait_for_master(0, Instant::now(), "the revived node 0 takes the address back");
                self.reach_every_client(Instant::now(), Duration::from_secs(5));
            }
            // From the first thing `stop` does (the uplink silent, or footunnel gone),
            // not from its end: keepalived takes a while to exit.
            let since = Instant::now();
            stop(&mut self.nodes[0]);
            self.wait_for_master(1, since, "node 1 takes the service address over");
            // keepalived's master-down interval (3 adverts and a skew) is the floor; a
            // client then needs one heartbeat (1 s) to be learnt by node 1.
            let took = self.reach_every_client(since, Duration::from_secs(10));
            println!("vrrp: {what}: every client reached through node 1 after {:.1} s", took.as_secs_f64());
            times.push(took.as_secs_f64());
        }
        times
    }
}

#[test]
fn when_the_vrrp_masters_machine_dies_the_backup_takes_the_address_and_its_clients() {
    let mut lab = Lab::new(Carrier::PerLink);
    let times = lab.takeovers(Node::die, "the master's machine died");
    footunnel_tests::bench_times("vrrp_machine", &times);
}

#[test]
fn when_the_vrrp_masters_footunnel_stops_its_track_script_hands_the_address_over() {
    let mut lab = Lab::new(Carrier::PerLink);
    // keepalived and the machine stay; `footunnel show --check` fails, and
    // the master gives the address up (FAULT).
    let times = lab.takeovers(|node| drop(node.footunnel.take()), "the master's footunnel stopped");
    assert!(!lab.nodes[0].holds_service_address(), "node 0 kept the address:\n{}", lab.logs());
    let log = lab.nodes[0].keepalived.as_ref().unwrap().log();
    assert!(log.contains("Entering FAULT STATE"), "{log}");
    footunnel_tests::bench_times("vrrp_footunnel", &times);
}

#[test]
fn in_shared_mode_the_vrrp_backup_starts_without_the_address_and_takes_over() {
    // The backup holds no service address until it takes over: the uplink
    // packets leave by is the one `interfaces` names.
    let mut lab = Lab::new(Carrier::Shared);
    lab.takeovers(Node::die, "shared-device mode, the master's machine died");
}
