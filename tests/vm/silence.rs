//! Silence policy: a tunnel whose client stops is reported silent (log,
//! show) and, with `on_silence = down`, its link goes down until the next
//! accepted heartbeat brings it back.

use std::time::{Duration, Instant};

use footunnel_tests::{NsProcess, footunnel_once};

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

#[test]
fn a_silent_tunnel_is_reported_and_its_link_set_down_until_the_next_heartbeat() {
    let topo = Topology::new();
    let mut broker =
        topo.start_broker(&["--silence-timeout", "2", "--on-silence", "down", "--metrics", "127.0.0.1:9586"]);
    let silent_metric = || {
        let (_, page) = crate::metrics::http_get(&topo.broker, "127.0.0.1:9586", "/metrics");
        crate::metrics::sample(&page, "footunnel_tunnel_silent{tunnel=\"fou0\"}")
    };
    let mut client = start_client(&topo);
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(10));
    assert!(topo.ping());
    assert!(show_tunnel(&topo)["silent_for_ns"].is_null(), "a tunnel with a live client is reported silent");
    assert_eq!(silent_metric(), Some(0.0));

    // Under a slow VM the tunnel may have been silent once already, before
    // the client's first heartbeat: only what follows the kill counts.
    let mark = broker.mark();
    client.kill9();
    let stopped = Instant::now();
    broker.wait_for_since(mark, "tunnel fou0: silent: no accepted heartbeat for 2 s", Duration::from_secs(5));
    println!("reported silent {:?} after the client stopped", stopped.elapsed());
    broker.wait_for_since(mark, "tunnel fou0: link fou0 set down", Duration::from_secs(1));
    let link = read_link(&topo.broker, "fou0").unwrap();
    assert!(!link.up, "the silent tunnel's link is still up:\n{}", broker.log());
    assert_eq!(link.encap_dport(), Some(40001), "setting the link down changed its parameters");
    let t = show_tunnel(&topo);
    assert!(t["silent_for_ns"].as_u64().is_some_and(|n| n >= 2_000_000_000), "show does not say silent: {t}");
    let (_, text) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(text.contains("SILENT: no heartbeat for") && text.contains("set down"), "{text}");
    assert_eq!(silent_metric(), Some(1.0), "the metric does not say silent");

    let mark = broker.mark();
    let client = start_client(&topo);
    broker.wait_for_since(mark, "tunnel fou0: heard from again", Duration::from_secs(5));
    // Logged once the kernel has taken the change.
    broker.wait_for_since(mark, "tunnel fou0: link fou0 set up", Duration::from_secs(1));
    // Read until up, at most a second (once, under a loaded 6.1 VM, a single
    // read right after the log line still saw it down).
    let start = Instant::now();
    while !read_link(&topo.broker, "fou0").unwrap().up {
        assert!(start.elapsed() < Duration::from_secs(1), "the link stayed down after a heartbeat:\n{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    while !topo.ping() {
        assert!(start.elapsed() < Duration::from_secs(5), "no traffic after the client came back:\n{}", client.log());
    }
    assert!(show_tunnel(&topo)["silent_for_ns"].is_null());
}
