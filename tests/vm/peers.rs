//! Brokers with the same tunnels' secrets (`peers`) compare each tunnel's
//! prefixes: one with other prefixes for a secret is refused at start and
//! at reload, with the fix, and the broker it asked says so too.

use std::time::Duration;

use footunnel_tests::{Netns, NsProcess, footunnel_once, require_vm, veth};

use crate::anycast::{SERVICE, serve_tunnels, start_broker};

/// Two broker machines on one link, each with both tunnels and the other as its peer.
fn pair() -> [(Netns, String); 2] {
    let (a, b) = (Netns::new("peera"), Netns::new("peerb"));
    veth(&a, "up0", "198.51.100.2/24", &b, "up0", "198.51.100.6/24");
    [(a, "198.51.100.6"), (b, "198.51.100.2")].map(|(ns, peer)| {
        ns.ip(&format!("addr add {SERVICE}/32 dev lo"));
        let dir = serve_tunnels(&ns, &format!("peers = [\"{peer}\"]\n"));
        (ns, dir)
    })
}

/// The node's broker.toml with tunnel c1 routed to `prefix` instead.
fn with_c1_prefix(dir: &str, prefix: &str) -> String {
    let toml = std::fs::read_to_string(format!("{dir}/broker.toml")).unwrap();
    let changed = toml.replace("name = \"c1\"\n", &format!("name = \"c1\"\npeer_prefixes = [\"{prefix}\"]\n"));
    assert_ne!(toml, changed);
    changed
}

#[test]
fn a_broker_with_a_tunnels_secret_and_other_prefixes_than_its_peer_is_refused() {
    require_vm();
    let [(a, a_dir), (b, b_dir)] = pair();
    let mut broker_a = start_broker(&a, &a_dir);
    assert!(broker_a.log().contains("peer 198.51.100.6 did not answer"), "{}", broker_a.log());

    // B's c1 has other prefixes: refused, naming the tunnel, the peer and the fix; nothing left behind.
    let bad = format!("{b_dir}/bad.toml");
    std::fs::write(&bad, with_c1_prefix(&b_dir, "10.0.8.0/30")).unwrap();
    let mark = broker_a.mark();
    let (ok, out) = footunnel_once(&b, &["broker", "--config", &bad]);
    assert!(!ok, "{out}");
    for expected in [
        "tunnel \"c1\": the broker at 198.51.100.2 has its secret with other prefixes than this broker's (10.0.8.0/30)",
        "give every broker with a tunnel's secret the same peer_prefixes",
    ] {
        assert!(out.contains(expected), "{expected:?} not in:\n{out}");
    }
    assert!(!std::path::Path::new(&format!("/sys/fs/bpf/ft-{}", b.name)).exists(), "no data plane was loaded:\n{out}");
    broker_a.wait_for_since(
        mark,
        "the broker at 198.51.100.6 has its secret with other prefixes",
        Duration::from_secs(5),
    );

    // The same prefixes: B starts and says it agrees with A.
    let mut broker_b = start_broker(&b, &b_dir);
    broker_b.wait_for("peers 198.51.100.2 have the same prefixes for every tunnel", Duration::from_secs(1));

    // A reload that would make them differ is refused; B keeps running as it was.
    std::fs::write(format!("{b_dir}/broker.toml"), with_c1_prefix(&b_dir, "10.0.8.0/30")).unwrap();
    let state = format!("{b_dir}/state");
    let (ok, out) = footunnel_once(&b, &["reload", "--state-dir", &state]);
    assert!(
        !ok && out.contains("tunnel \"c1\": the broker at 198.51.100.2 has its secret with other prefixes"),
        "{out}"
    );
    let (_, show) = footunnel_once(&b, &["show", "--state-dir", &state]);
    assert!(show.contains("peer prefixes: 10.0.0.0/30"), "{show}");
    drop(broker_b);
    footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", b.name), &state);
    drop::<NsProcess>(broker_a);
    footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", a.name), &format!("{a_dir}/state"));
}
