//! Reload (SIGHUP, `footunnel reload`): the difference is applied, an
//! unchanged tunnel is not touched (its traffic flows on through the
//! reload), and a bad configuration changes nothing.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use footunnel_tests::{NsProcess, footunnel_once};

use crate::broker::{CLIENT_B, SECRET, Topology, read_link};

fn tunnel_a() -> String {
    format!("[[tunnel]]\nname = \"a\"\nlink = \"fou0\"\nsecret = \"{SECRET}\"\n")
}

fn tunnel_b(secret: &str) -> String {
    format!(
        "[[tunnel]]\nname = \"b\"\nlink = \"fou1\"\nsecret = \"{secret}\"\n\
         manage = {{ local = \"198.51.100.1\", address = \"10.0.1.1/30\" }}\n"
    )
}

/// `footunnel show --json` of the broker.
fn show(topo: &Topology) -> serde_json::Value {
    let (ok, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    assert!(ok, "{json}");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn tunnel<'a>(show: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    show["broker"]["tunnels"].as_array().unwrap().iter().find(|t| t["name"] == name)
}

fn reload(topo: &Topology) -> (bool, String) {
    footunnel_once(&topo.broker, &["reload", "--state-dir", &topo.state_dir])
}

#[test]
fn a_reload_applies_the_difference_without_touching_an_unchanged_tunnel() {
    let topo = Topology::new();
    let config = format!("{}/broker.toml", topo.state_dir);
    std::fs::create_dir_all(&topo.state_dir).unwrap();
    let header = format!("pin_dir = \"{}\"\nstate_dir = \"{}\"\n", topo.pin_dir, topo.state_dir);
    std::fs::write(&config, format!("{header}{}", tunnel_a())).unwrap();
    let mut broker = NsProcess::footunnel(&topo.broker, &["broker", "-v", "--config", &config]);
    broker.wait_for("broker running", Duration::from_secs(20));
    let client_state = format!("{}-client", topo.state_dir);
    let client = NsProcess::footunnel(
        &topo.client,
        &["client", "--interval", "1", "--state-dir", &client_state, "198.51.100.1", SECRET],
    );
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(10));
    assert!(topo.ping(), "no traffic before the reload:\n{}", client.log());
    let index_before = topo.link().index;
    let heartbeats_before = tunnel(&show(&topo), "a").unwrap()["heartbeats"].as_u64().unwrap();

    // Pings through tunnel a all through three reloads: one adds tunnel b
    // (with a link footunnel creates), one is refused, one removes b again.
    let pings = Command::new("ip")
        .args(["netns", "exec", &topo.client.name, "ping", "-q", "-c", "80", "-i", "0.05", "-W", "1", "10.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    std::fs::write(&config, format!("{header}{}{}", tunnel_a(), tunnel_b("tunnel b's secret, long enough"))).unwrap();
    let (ok, out) = reload(&topo);
    assert!(ok && out.contains("added: b") && out.contains("unchanged: 1"), "{out}\n{}", broker.log());
    assert!(read_link(&topo.broker, "fou1").is_ok(), "tunnel b's managed link was not created");
    let with_b = show(&topo);
    let b_id = tunnel(&with_b, "b").expect("b runs after the reload")["id"].clone();

    // A bad file: refused, reported, nothing changes (b stays, with its secret).
    std::fs::write(&config, format!("{header}{}{}typo = 1\n", tunnel_a(), tunnel_b("another secret for b, long")))
        .unwrap();
    let (ok, out) = reload(&topo);
    assert!(!ok && out.contains("unknown field `typo`") && out.contains("running configuration stays"), "{out}");
    broker.wait_for("reload refused, the running configuration stays", Duration::from_secs(2));
    assert_eq!(tunnel(&show(&topo), "b").expect("b still runs")["id"], b_id, "a refused reload changed tunnel b");
    // Also refused: a setting only a restart can change.
    std::fs::write(&config, format!("{header}attach = \"tc\"\n{}", tunnel_a())).unwrap();
    let (ok, out) = reload(&topo);
    assert!(!ok && out.contains("attach changed") && out.contains("restart the broker"), "{out}");
    assert!(read_link(&topo.broker, "fou1").is_ok(), "a refused reload removed tunnel b's link");

    std::fs::write(&config, format!("{header}{}", tunnel_a())).unwrap();
    let (ok, out) = reload(&topo);
    assert!(ok && out.contains("removed: b"), "{out}");
    assert!(read_link(&topo.broker, "fou1").is_err(), "the link footunnel created for b outlived b");
    assert!(tunnel(&show(&topo), "b").is_none(), "b is still reported");

    let out = pings.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 0% packet loss"), "pings through tunnel a were lost during the reloads:\n{summary}");
    let link = topo.link();
    assert_eq!(link.index, index_before, "tunnel a's link was re-created");
    assert_eq!((link.remote(), link.encap_dport()), (Some(CLIENT_B.into()), Some(40001)), "tunnel a's link moved");
    let heartbeats_after = tunnel(&show(&topo), "a").unwrap()["heartbeats"].as_u64().unwrap();
    assert!(
        heartbeats_after > heartbeats_before,
        "tunnel a's counters were reset: {heartbeats_before} → {heartbeats_after}"
    );
    let log = broker.log();
    let since_reload = &log[log.find("SIGHUP").unwrap()..];
    assert!(!since_reload.contains("link fou0"), "the reloads touched tunnel a's link:\n{log}");
}
