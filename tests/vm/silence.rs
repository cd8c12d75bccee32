//! Silence policy: a tunnel whose client stops is reported silent (log,
//! show) and, with `on_silence = down`, its link carries nothing until the
//! next accepted heartbeat brings it back, keeping its routes and addresses.

use std::time::{Duration, Instant};

use footunnel_tests::{Netns, NsProcess, footunnel_once, require_vm, veth};

use crate::broker::{CLIENT_B, SECRET, Topology, read_link};

fn show_tunnel(topo: &Topology) -> serde_json::Value {
    let (ok, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["broker"]["tunnels"][0].clone()
}

fn start_client(topo: &Topology) -> NsProcess {
    let state = format!("{}-client", topo.state_dir);
    NsProcess::footunnel(&topo.client, &["client", "--interval", "1", "--state-dir", &state, "198.51.100.1", SECRET])
}

/// Routes through `dev` in `ns`, as `ip route` lists them.
fn routes(ns: &Netns, family: &str, dev: &str) -> String {
    ns.ip(&format!("{family} route show dev {dev}"))
}

#[test]
fn a_silent_tunnel_is_parked_and_keeps_its_routes_until_the_next_heartbeat() {
    let topo = Topology::new();
    // A subnet routed behind the client, as an operator adds one.
    topo.broker.ip("route add 192.168.77.0/24 dev fou0");
    topo.client.ip("addr add 192.168.77.1/32 dev lo");
    let mut broker =
        topo.start_broker(&["--silence-timeout", "2", "--on-silence", "down", "--metrics", "127.0.0.1:9586"]);
    let silent_metric = || {
        let (_, page) = crate::metrics::http_get(&topo.broker, "127.0.0.1:9586", "/metrics");
        crate::metrics::sample(&page, "footunnel_tunnel_silent{tunnel=\"fou0\"}")
    };
    let mut client = start_client(&topo);
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(10));
    assert!(topo.ping());
    assert!(ping_from_broker(&topo, "192.168.77.1"), "the routed subnet is unreachable before the test");
    assert!(show_tunnel(&topo)["silent_for_ns"].is_null(), "a tunnel with a live client is reported silent");
    assert_eq!(silent_metric(), Some(0.0));

    // Under a slow VM the tunnel may have been silent once already, before
    // the client's first heartbeat: only what follows the kill counts.
    let mark = broker.mark();
    client.kill9();
    let stopped = Instant::now();
    broker.wait_for_since(mark, "tunnel fou0: silent: no accepted heartbeat for 2 s", Duration::from_secs(5));
    println!("reported silent {:?} after the client stopped", stopped.elapsed());
    let start = Instant::now();
    let parked = loop {
        let link = read_link(&topo.broker, "fou0").unwrap();
        if link.remote() != Some(CLIENT_B.into()) {
            break link;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the silent tunnel still sends to its client:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(parked.up, "the silent tunnel's link was set down");
    assert!(
        parked.remote().is_some_and(|r| r.to_string().starts_with("192.0.2.")),
        "parked on {:?}, not on a documentation address",
        parked.remote()
    );
    assert_eq!(parked.local(), Some(crate::broker::BROKER.into()), "parking changed the link's local");
    assert!(routes(&topo.broker, "-4", "fou0").contains("192.168.77.0/24"), "parking lost the routed subnet");
    assert!(!topo.ping(), "a parked tunnel still carries traffic");
    let t = show_tunnel(&topo);
    assert!(t["silent_for_ns"].as_u64().is_some_and(|n| n >= 2_000_000_000), "show does not say silent: {t}");
    let (_, text) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(text.contains("SILENT: no heartbeat for") && text.contains("parked while silent"), "{text}");
    let (healthy, check) = footunnel_once(&topo.broker, &["show", "--check", "--state-dir", &topo.state_dir]);
    assert!(healthy, "a tunnel parked as configured fails the health check:\n{check}");
    assert_eq!(silent_metric(), Some(1.0), "the metric does not say silent");

    let mark = broker.mark();
    let client = start_client(&topo);
    broker.wait_for_since(mark, "tunnel fou0: heard from again", Duration::from_secs(5));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(1));
    let start = Instant::now();
    while !topo.ping() {
        assert!(start.elapsed() < Duration::from_secs(5), "no traffic after the client came back:\n{}", client.log());
    }
    assert!(routes(&topo.broker, "-4", "fou0").contains("192.168.77.0/24"), "the routed subnet did not come back");
    assert!(ping_from_broker(&topo, "192.168.77.1"), "the routed subnet is unreachable after the client came back");
    assert!(show_tunnel(&topo)["silent_for_ns"].is_null());
}

fn ping_from_broker(topo: &Topology, to: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &topo.broker.name, "ping", "-c", "1", "-W", "2", to])
        .output()
        .expect("run ping");
    out.status.success()
}

/// IPv6 over sit: setting the link down would drop its address and the
/// routed /48; parking keeps both.
#[test]
fn a_silent_sit_tunnel_keeps_its_ipv6_address_and_routed_prefix() {
    require_vm();
    const SIT_SECRET: &str = "the silent sit tunnel's secret, long";
    let broker = Netns::new("qbroker");
    let client = Netns::new("qclient");
    veth(&broker, "up0", "198.51.100.1/24", &client, "up0", "198.51.100.2/24");
    for (ns, remote, local, addr) in [
        (&broker, "198.51.100.2", "198.51.100.1", "2001:db8:6::1/64"),
        (&client, "198.51.100.1", "198.51.100.2", "2001:db8:6::2/64"),
    ] {
        ns.ip("fou add port 42424 ipproto 41");
        ns.ip(&format!(
            "link add sit6 type sit remote {remote} local {local} ttl 64 encap fou encap-sport 42424 encap-dport 42424"
        ));
        ns.ip(&format!("addr add {addr} dev sit6 nodad"));
        ns.ip("link set sit6 up");
    }
    broker.ip("-6 route add 2001:db8:77::/48 dev sit6");
    client.ip("addr add 2001:db8:77::1/128 dev lo");
    let pin_dir = format!("/sys/fs/bpf/ft-{}", broker.name);
    let state_dir = format!("/tmp/ft-{}", broker.name);
    let mut broker_p = NsProcess::footunnel(
        &broker,
        &[
            "broker",
            "-v",
            "--pin-dir",
            &pin_dir,
            "--state-dir",
            &state_dir,
            "--silence-timeout",
            "2",
            "--on-silence",
            "down",
            "sit6",
            SIT_SECRET,
        ],
    );
    broker_p.wait_for("broker running", Duration::from_secs(30));
    let start_client = || {
        NsProcess::footunnel(
            &client,
            &[
                "client",
                "-v",
                "--interval",
                "1",
                "--state-dir",
                &format!("{state_dir}-client"),
                "198.51.100.1",
                SIT_SECRET,
            ],
        )
    };
    let ping6 = |to: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &broker.name, "ping", "-6", "-c", "1", "-W", "2", to])
            .output()
            .expect("run ping")
            .status
            .success()
    };
    let mut client_p = start_client();
    client_p.wait_for("the broker sees this end at", Duration::from_secs(20));
    assert!(ping6("2001:db8:77::1"), "the routed /48 is unreachable before the test");

    let mark = broker_p.mark();
    client_p.kill9();
    broker_p.wait_for_since(mark, "tunnel sit6: silent", Duration::from_secs(5));
    let start = Instant::now();
    while read_link(&broker, "sit6").unwrap().remote() == Some("198.51.100.2".parse().unwrap()) {
        assert!(start.elapsed() < Duration::from_secs(1), "the silent sit tunnel was not parked:\n{}", broker_p.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let addresses = broker.ip("-6 addr show dev sit6");
    assert!(addresses.contains("2001:db8:6::1/64"), "parking lost the link's IPv6 address:\n{addresses}");
    assert!(routes(&broker, "-6", "sit6").contains("2001:db8:77::/48"), "parking lost the routed /48");
    assert!(!ping6("2001:db8:77::1"), "a parked sit tunnel still carries traffic");

    let mark = broker_p.mark();
    let client_p = start_client();
    broker_p.wait_for_since(mark, "tunnel sit6: heard from again", Duration::from_secs(5));
    let start = Instant::now();
    while !ping6("2001:db8:77::1") {
        assert!(start.elapsed() < Duration::from_secs(5), "the routed /48 did not come back:\n{}", client_p.log());
    }
    assert!(broker.ip("-6 addr show dev sit6").contains("2001:db8:6::1/64"));
    drop(client_p);
    footunnel_tests::unload(&pin_dir, &state_dir);
}
