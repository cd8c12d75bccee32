//! Key rotation (docs/protocol.md): broker first, then client, then the old
//! secret goes, with traffic through the tunnel the whole time.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use footunnel_tests::{NsProcess, by_hand, footunnel_once};

use crate::broker::{CLIENT_B, Topology};

const OLD: &str = "the tunnel's old secret, long enough";
const NEW: &str = "the tunnel's new secret, long enough";

fn show(topo: &Topology) -> serde_json::Value {
    let (ok, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    assert!(ok, "{json}");
    serde_json::from_str::<serde_json::Value>(&json).unwrap()["broker"]["tunnels"][0].clone()
}

/// The broker's configuration file for tunnel "a" on fou0, and its text
/// but for the tunnel's secrets.
fn config_for(topo: &Topology) -> (String, String) {
    std::fs::create_dir_all(&topo.state_dir).unwrap();
    let config = format!("{}/broker.toml", topo.state_dir);
    let header = format!(
        "pin_dir = \"{}\"\nstate_dir = \"{}\"\n[[tunnel]]\nname = \"a\"\nlink = \"fou0\"\n",
        topo.pin_dir, topo.state_dir
    );
    (config, header)
}

#[test]
fn a_secret_is_rotated_broker_first_then_client_with_no_ping_lost() {
    let topo = Topology::new();
    let (config, header) = config_for(&topo);
    std::fs::write(&config, format!("{header}secret = \"{OLD}\"\n")).unwrap();
    let broker = NsProcess::footunnel(&topo.broker, &["broker", "-v", "--config", &config]);
    let client_state = format!("{}-client", topo.state_dir);
    let client = |secret: &str| {
        NsProcess::footunnel(
            &topo.client,
            &["client", "--interval", "1", "--state-dir", &client_state, "198.51.100.1", secret],
        )
    };
    let mut old_client = client(OLD);
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(20));
    assert!(topo.ping(), "no traffic before the rotation:\n{}", broker.log());
    let index = topo.link().index;
    let before = show(&topo);
    assert_eq!(before["key"], "current");

    let pings = Command::new("ip")
        .args(["netns", "exec", &topo.client.name, "ping", "-q", "-c", "160", "-i", "0.05", "-W", "1", "10.0.0.1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // 1. The broker learns the next secret beside the current one.
    std::fs::write(&config, format!("{header}secret = \"{OLD}\"\nnext_secret = \"{NEW}\"\n")).unwrap();
    let (ok, out) = footunnel_once(&topo.broker, &["reload", "--state-dir", &topo.state_dir]);
    assert!(ok && out.contains("changed: a"), "{out}");
    assert!(show(&topo)["next_id"].is_string());

    // 2. The client moves to it; the broker answers under the new key.
    old_client.kill9();
    let mut new_client = client(NEW);
    new_client.wait_for("the broker sees this end at 198.51.100.3:40001", Duration::from_secs(10));
    let during = show(&topo);
    assert_eq!(during["key"], "next", "show does not say the client uses the next key: {during}");

    // 3. The old secret goes; the new one is the current one.
    std::fs::write(&config, format!("{header}secret = \"{NEW}\"\n")).unwrap();
    let (ok, out) = footunnel_once(&topo.broker, &["reload", "--state-dir", &topo.state_dir]);
    assert!(ok, "{out}");
    let after = show(&topo);
    assert!(after["next_id"].is_null());
    assert_eq!(after["endpoint"], "198.51.100.3:40001");
    assert!(
        after["heartbeats"].as_u64() > before["heartbeats"].as_u64(),
        "the endpoint's record was lost in the rotation: {before} → {after}"
    );
    // Heartbeats under the old secret are now unknown.
    let unknown = |v: &serde_json::Value| {
        v["counters"].as_array().unwrap().iter().find(|c| c[0] == "unknown_tunnel").unwrap()[1].as_u64().unwrap()
    };
    let (_, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    let was = unknown(&serde_json::from_str::<serde_json::Value>(&json).unwrap()["broker"]);
    topo.send(CLIENT_B, 40009, &by_hand::heartbeat(OLD, footunnel::now_ns(), [0; 8]));
    std::thread::sleep(Duration::from_millis(300));
    let (_, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    assert_eq!(unknown(&serde_json::from_str::<serde_json::Value>(&json).unwrap()["broker"]), was + 1);
    assert_eq!(topo.link().encap_dport(), Some(40001), "a heartbeat under the retired secret moved the link");

    let out = pings.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 0% packet loss"), "pings lost during the rotation:\n{summary}\n{}", broker.log());
    assert_eq!(topo.link().index, index);
    new_client.kill9();
}

/// Waits until the broker's link no longer points at the client.
fn wait_parked(topo: &Topology, log: &NsProcess, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let link = topo.link();
        if link.remote() != Some(CLIENT_B.into()) {
            let remote = link.remote().map(|r| r.to_string()).unwrap_or_default();
            assert!(remote.starts_with("192.0.2."), "{what}: parked on {remote}, not on a placeholder");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{what}: the link still serves the holder of the replaced secret:\n{}",
            log.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_replaced_secret_stops_serving_its_holder_on_reload_and_on_restart() {
    const THIRD: &str = "the tunnel's third secret, long enough";
    let topo = Topology::new();
    let (config, header) = config_for(&topo);
    let write = |secret: &str| std::fs::write(&config, format!("{header}secret = \"{secret}\"\n")).unwrap();
    write(OLD);
    let mut broker = NsProcess::footunnel(&topo.broker, &["broker", "-v", "--config", &config]);
    broker.wait_for("broker running", Duration::from_secs(20));
    let client_state = format!("{}-client", topo.state_dir);
    let client = |secret: &str| {
        NsProcess::footunnel(
            &topo.client,
            &["client", "--interval", "1", "--state-dir", &client_state, "198.51.100.1", secret],
        )
    };
    let holder = client(OLD);
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(10));
    assert!(topo.ping(), "no traffic before the secret is replaced:\n{}", holder.log());

    // Compromised: replaced outright, no rotation. The old secret's holder
    // keeps sending heartbeats under it.
    write(NEW);
    let (ok, out) = footunnel_once(&topo.broker, &["reload", "--state-dir", &topo.state_dir]);
    assert!(ok, "{out}");
    wait_parked(&topo, &broker, "after the reload");
    assert!(broker.log().contains("recorded under a secret the tunnel no longer has"), "{}", broker.log());
    assert!(show(&topo)["endpoint"].is_null(), "show still names the old holder: {}", show(&topo));
    std::thread::sleep(Duration::from_secs(2));
    wait_parked(&topo, &broker, "two heartbeats of the holder later");
    assert!(!topo.ping(), "the holder of the replaced secret still has the tunnel");
    drop(holder);

    let rightful = client(NEW);
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(5));
    assert!(topo.ping(), "the new secret's client gets no traffic:\n{}", rightful.log());

    // Replaced while the broker is stopped: the start forgets the holder.
    broker.kill9();
    write(THIRD);
    let mut broker = NsProcess::footunnel(&topo.broker, &["broker", "-v", "--config", &config]);
    broker.wait_for("broker running", Duration::from_secs(20));
    wait_parked(&topo, &broker, "after a restart with a replaced secret");
    assert!(show(&topo)["endpoint"].is_null(), "{}", show(&topo));
    drop(rightful);
    let third = client(THIRD);
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(5));
    assert!(topo.ping(), "no traffic under the third secret:\n{}", third.log());
}
