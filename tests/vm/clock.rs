//! A client whose clock is days off (a router without a real-time clock,
//! before NTP answers): the broker refuses its heartbeats as stale and
//! answers with TIME; the client heartbeats again on the broker's time and
//! is ACKed at once. faketime shifts the client's CLOCK_REALTIME only, so
//! it runs the dynamically linked build, not the static router one.

use std::time::Duration;

use footunnel_tests::{NsProcess, footunnel_bin, footunnel_once, log_seconds};

use crate::broker::{SECRET, Topology};

fn a_client_clock_off_by(shift: &str, says: &str) {
    let topo = Topology::new();
    let broker = topo.start_broker(&[]);
    let client_state = format!("{}-client", topo.state_dir);
    let bin = footunnel_bin();
    let mut client = NsProcess::run_in(
        &topo.client,
        "env",
        &[
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
            "faketime",
            "-f",
            shift,
            bin.to_str().unwrap(),
            "client",
            "-v",
            "--state-dir",
            &client_state,
            "198.51.100.1",
            SECRET,
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = client.log();
    assert!(!log.contains("'faketime': No such file"), "faketime is missing (Debian's faketime): {log}");
    client.wait_for("the broker sees this end at 198.51.100.3:40001", Duration::from_secs(20));
    let log = client.log();
    assert!(log.contains(&format!("this host's clock {says} the broker's")), "{log}");
    // One refused heartbeat, its TIME, the corrected heartbeat, its ACK: no
    // retry timer (the first is a second) is waited for.
    let first = log_seconds(&log, 0, "heartbeat from").expect("a heartbeat in the log");
    let acked = log_seconds(&log, 0, "the broker sees this end").unwrap();
    assert!(acked - first < 0.9, "ACKed {:.3} s after the first heartbeat:\n{log}", acked - first);
    println!("clock {shift}: ACKed {:.0} ms after the first heartbeat", (acked - first) * 1e3);
    let broker_log = broker.log();
    assert!(broker_log.contains("answering with TIME"), "{broker_log}");

    let (ok, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    assert!(ok, "{json}");
    let show: serde_json::Value = serde_json::from_str(&json).unwrap();
    let stale = show["broker"]["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == "stale")
        .and_then(|c| c[1].as_u64())
        .unwrap();
    assert!(stale >= 1, "the first heartbeat was refused as stale: {json}");
    let (ok, show) = footunnel_once(&topo.client, &["show", "--state-dir", &client_state]);
    assert!(ok && show.contains(&format!("clock: this host's {says} the broker's")), "{show}");
    // Heartbeats keep being ACKed on the broker's time.
    let mark = client.mark();
    assert!(topo.ping(), "traffic through the tunnel");
    assert!(!client.log()[mark..].contains("refused a heartbeat"), "{}", client.log());
}

#[test]
fn a_client_two_days_behind_is_acked_on_the_brokers_time() {
    a_client_clock_off_by("-2d", "is 2 days behind");
}

#[test]
fn a_client_three_days_ahead_is_acked_on_the_brokers_time() {
    a_client_clock_off_by("+3d", "is 3 days ahead of");
}
