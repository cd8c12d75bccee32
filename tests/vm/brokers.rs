//! A client with two brokers at two addresses (no anycast): broker A's
//! machine goes away, the client moves to broker B after three unanswered
//! heartbeats and traffic flows through B; when A is back and its hold is
//! over, a PROBE finds it and the client returns. The default 10 s
//! heartbeat interval, so the times are what an operator gets.

use std::time::{Duration, Instant};

use footunnel_tests::{Netns, NsProcess, footunnel_once, require_vm, sh, veth};

use crate::broker::read_link;
use crate::e2e::sysctl;

const SECRET: &str = "two brokers, one tunnel, long enough";
const A: &str = "203.0.113.100";
const B: &str = "198.51.100.100";

struct Broker {
    ns: Netns,
    pin_dir: String,
    state_dir: String,
}

impl Broker {
    fn new(nat: &Netns, nat_if: &str, net: &str, addr: &str) -> Self {
        let ns = Netns::new("broker");
        veth(nat, nat_if, &format!("{net}.1/24"), &ns, "up0", &format!("{addr}/24"));
        ns.ip(&format!("route add default via {net}.1"));
        ns.ip("fou add port 42424 ipproto 4");
        ns.ip(&format!(
            "link add fou0 type ipip remote 192.0.2.200 local {addr} ttl 64 encap fou encap-sport 42424 encap-dport 42424"
        ));
        ns.ip("addr add 10.0.0.1/30 dev fou0");
        ns.ip("link set fou0 up");
        Broker { pin_dir: format!("/sys/fs/bpf/ft-{}", ns.name), state_dir: format!("/tmp/ft-{}", ns.name), ns }
    }

    fn start(&self) -> NsProcess {
        let mut p = NsProcess::footunnel(
            &self.ns,
            &["broker", "-v", "--pin-dir", &self.pin_dir, "--state-dir", &self.state_dir, "fou0", SECRET],
        );
        p.wait_for("broker running", Duration::from_secs(20));
        p
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        footunnel_tests::unload(&self.pin_dir, &self.state_dir);
    }
}

fn ping(ns: &Netns) -> bool {
    std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "ping", "-n", "-c", "1", "-W", "0.3", "10.0.0.1"])
        .output()
        .expect("run ping")
        .status
        .success()
}

/// Pings 10.0.0.1 through the tunnel until one answers; the time since `since`.
fn traffic_within(ns: &Netns, since: Instant, limit: Duration, what: &str, logs: &[&NsProcess]) -> Duration {
    while since.elapsed() < limit {
        if ping(ns) {
            return since.elapsed();
        }
    }
    let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
    panic!("{what}: no traffic through the tunnel within {limit:?}\n{}", logs.join("\n----\n"));
}

#[test]
fn a_client_moves_to_its_second_broker_when_the_first_dies_and_returns_when_it_is_back() {
    require_vm();
    let nat = Netns::new("nat");
    let client = Netns::new("client");
    veth(&client, "up0", "192.0.2.2/29", &nat, "lan0", "192.0.2.1/29");
    client.ip("route add default via 192.0.2.1");
    let a = Broker::new(&nat, "pub0", "203.0.113", A);
    let b = Broker::new(&nat, "pub1", "198.51.100", B);
    sysctl(&nat, "net.ipv4.ip_forward=1");
    let ruleset = "flush ruleset\ntable ip nat {\n chain post {\n  type nat hook postrouting priority srcnat;\n  \
                   oifname { \"pub0\", \"pub1\" } masquerade\n }\n}\n";
    let file = std::env::temp_dir().join(format!("{}.nft", nat.name));
    std::fs::write(&file, ruleset).unwrap();
    sh("ip", &["netns", "exec", &nat.name, "nft", "-f", file.to_str().unwrap()]);
    client.ip("fou add port 42424 ipproto 4");
    client.ip(&format!("link add fou0 type ipip remote {A} ttl 64 encap fou encap-sport 42424 encap-dport 42424"));
    client.ip("addr add 10.0.0.2/30 dev fou0");
    client.ip("link set fou0 up");

    let broker_a = a.start();
    let broker_b = b.start();
    let state = format!("{}-client", a.state_dir);
    let mut c = NsProcess::footunnel(&client, &["client", "-v", "--state-dir", &state, A, "--broker", B, SECRET]);
    c.wait_for("the broker sees this end at", Duration::from_secs(20));
    traffic_within(&client, Instant::now(), Duration::from_secs(5), "broker A", &[&broker_a, &c]);
    let (ok, show) = footunnel_once(&client, &["show", "--state-dir", &state]);
    assert!(ok && show.contains(&format!("brokers in order: {A}, {B}")), "{show}");

    // Broker A's machine goes away (its uplink down: no answer, no error).
    let mark = c.mark();
    a.ns.ip("link set up0 down");
    let died = Instant::now();
    let took = traffic_within(&client, died, Duration::from_secs(20), "failover to B", &[&broker_b, &c]);
    println!("two brokers: traffic through broker B {took:?} after broker A died");
    footunnel_tests::bench_times("client_failover", &[took.as_secs_f64()]);
    assert!(c.log()[mark..].contains(&format!("moving on to {B}")), "{}", c.log());
    assert_eq!(read_link(&client, "fou0").unwrap().remote(), Some(B.parse().unwrap()));
    let (ok, show) = footunnel_once(&b.ns, &["show", "--state-dir", &b.state_dir]);
    assert!(ok && show.contains("endpoint: 198.51.100.1:"), "broker B follows the client:\n{show}");
    let (ok, show) = footunnel_once(&client, &["show", "--state-dir", &state]);
    assert!(ok && show.contains("the brokers before it did not answer"), "{show}");

    // A is back; after its hold (30 s) a PROBE finds it and the client returns.
    a.ns.ip("link set up0 up");
    a.ns.ip("route replace default via 203.0.113.1");
    let mark = c.mark();
    c.wait_for_since(mark, &format!("broker {A} now (it answers again"), Duration::from_secs(60));
    println!("two brokers: back on broker A {:?} after it died", died.elapsed());
    assert_eq!(read_link(&client, "fou0").unwrap().remote(), Some(A.parse().unwrap()));
    traffic_within(&client, Instant::now(), Duration::from_secs(15), "back on A", &[&broker_a, &c]);
    let (ok, show) = footunnel_once(&a.ns, &["show", "--state-dir", &a.state_dir]);
    assert!(ok && show.contains("endpoint: 203.0.113.1:"), "broker A has the client again:\n{show}");
}

#[test]
fn brokers_the_forced_family_excludes_are_refused_with_the_fix() {
    require_vm();
    let client = Netns::new("client");
    let (ok, out) = footunnel_once(&client, &["client", "-6", A, "--broker", B, SECRET]);
    assert!(!ok && out.contains("-6 excludes every broker") && out.contains("drop -6"), "{out}");
}
