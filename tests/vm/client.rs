//! `footunnel client` against a broker: heartbeats take the tunnel's own
//! path, and a wall clock stepped back does not silence them.

use std::time::Duration;

use footunnel_tests::{NsProcess, footunnel_once, sh};

use crate::broker::{CLIENT_B, SECRET, Topology};

fn start_client(topo: &Topology, extra: &[&str]) -> NsProcess {
    let state = format!("{}-client", topo.state_dir);
    let mut args = vec!["client", "-v", "--state-dir", &state];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["198.51.100.1", SECRET]);
    NsProcess::footunnel(&topo.client, &args)
}

/// Heartbeats the broker accepted, from `footunnel show`.
fn accepted(topo: &Topology) -> u64 {
    let (ok, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(ok, "{show}");
    show.lines()
        .find_map(|l| l.trim().strip_prefix("heartbeats: "))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no heartbeat count in:\n{show}"))
}

#[test]
fn heartbeats_leave_from_the_links_local_address_not_the_primary_one() {
    // The client's uplink has 198.51.100.2 (primary) and .3; its link sends
    // from .3. A heartbeat from .2 would point the broker at the wrong place.
    let topo = Topology::new();
    let broker = topo.start_broker(&[]);
    let client = start_client(&topo, &[]);
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(10));
    assert!(topo.ping(), "no traffic:\nbroker:\n{}\nclient:\n{}", broker.log(), client.log());
}

/// Steps the VM's wall clock by `seconds` (the VM has a clock of its own).
fn step_clock(seconds: i64) {
    let now: i64 = sh("date", &["+%s"]).trim().parse().unwrap();
    sh("date", &["-s", &format!("@{}", now + seconds)]);
}

#[test]
fn a_wall_clock_stepped_back_does_not_silence_the_client() {
    let topo = Topology::new();
    let _broker = topo.start_broker(&[]);
    let mut client = start_client(&topo, &["--interval", "1"]);
    client.wait_for("the broker sees this end at", Duration::from_secs(10));
    step_clock(-30);
    let before = accepted(&topo);
    std::thread::sleep(Duration::from_secs(4));
    let after = accepted(&topo);
    step_clock(30);
    assert!(
        after >= before + 2,
        "{} heartbeat(s) in 4 s at a 1 s interval after the clock stepped back 30 s:\n{}",
        after - before,
        client.log()
    );
}

#[test]
fn a_broker_given_by_name_is_waited_for_then_followed_when_it_moves() {
    let topo = Topology::new();
    let _broker = topo.start_broker(&[]);
    let hosts = std::env::temp_dir().join(format!("hosts-{}", topo.broker.name));
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let state = format!("{}-client", topo.state_dir);
    let mut client = NsProcess::footunnel_with_hosts(
        &topo.client,
        &hosts,
        &["client", "-v", "--interval", "1", "--state-dir", &state, "broker.test", SECRET],
    );
    // Not resolvable yet (DNS not up at boot, say): retried, not fatal.
    client.wait_for("cannot resolve broker name broker.test", Duration::from_secs(10));
    std::fs::write(&hosts, "127.0.0.1 localhost\n198.51.100.1 broker.test\n").unwrap();
    client.wait_for("broker broker.test resolves to 198.51.100.1", Duration::from_secs(10));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(5));
    assert!(topo.ping(), "no traffic to the broker found by name:\n{}", client.log());

    // The broker moves to another address; its name follows.
    topo.broker.ip("addr add 198.51.100.9/24 dev up0");
    topo.broker.ip("link set fou0 type ipip local 198.51.100.9");
    std::fs::write(&hosts, "127.0.0.1 localhost\n198.51.100.9 broker.test\n").unwrap();
    client.wait_for("now resolves to 198.51.100.9 (was 198.51.100.1)", Duration::from_secs(5));
    let client_link = crate::broker::read_link(&topo.client, "fou0").unwrap();
    assert_eq!(client_link.remote(), Some("198.51.100.9".parse().unwrap()), "the client's link did not follow");
    assert_eq!(client_link.encap_sport(), Some(40001), "re-pointing the client's link kept its other parameters");
    let start = std::time::Instant::now();
    while !topo.ping() {
        assert!(start.elapsed() < Duration::from_secs(5), "no traffic after the broker moved:\n{}", client.log());
    }
    let (ok, show) = footunnel_once(&topo.client, &["show", "--state-dir", &state]);
    assert!(ok && show.contains("broker.test (198.51.100.9)"), "{show}");
}
