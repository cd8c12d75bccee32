//! The views' tests, on one sample report.

use super::{render::render, *};

/// One tunnel with everything set, for the renderers' tests.
pub(crate) fn sample_report() -> Report {
    Report {
        controller: Controller { pid: Some(4242), problem: None },
        interfaces: vec!["up0".into()],
        attach: crate::config::Attach::Xdp,
        fou_ports: vec![42424],
        shared_device: None,
        shared_problem: None,
        tunnels: vec![TunnelReport {
            name: "alice".into(),
            link: "fou0".into(),
            id: "34298331bbfa8ae5".into(),
            legacy: false,
            next_id: Some("00000000000000aa".into()),
            key: Some(KeyRole::Next),
            peer_prefixes: vec!["10.0.0.0/30".into()],
            endpoint: Some("203.0.113.5:40001".into()),
            last_heartbeat_ns: Some(1_000_000_000),
            heartbeats: 3,
            changes: 1,
            last_change_ns: Some(0),
            unexpected_source: Some(UnexpectedSource { source: "192.0.2.9:5555".into(), packets: 4, last_seen_ns: 0 }),
            silence_timeout_ns: Some(60_000_000_000),
            silent_for_ns: Some(125_000_000_000),
            down_when_silent: true,
            link_points_at: Some("203.0.113.5:40001".into()),
            problem: None,
            link_up: Some(true),
            link_problem: None,
        }],
        counters: vec![("accepted".into(), 3), ("bad_tag".into(), 0)],
    }
}

#[test]
fn render_shows_endpoint_and_unexpected_source() {
    let report = sample_report();
    let text = render(&report, 4_000_000_000);
    for want in [
        "tunnel: alice",
        "endpoint: 203.0.113.5:40001",
        "latest heartbeat: 3 seconds ago",
        "unexpected source: 192.0.2.9:5555 (4 packets",
        "counters: accepted 3\n",
        "next id: 00000000000000aa",
        "client's key: next",
        "SILENT: no heartbeat for 2 minutes, 5 seconds (silence_timeout 60 s); its link is parked",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn render_says_when_the_shared_device_carries_nothing() {
    let mut report = sample_report();
    report.shared_device = Some("footunnel0".into());
    assert!(!render(&report, 0).contains("DOWN"), "a working device is reported down");
    report.shared_problem = Some("shared device footunnel0 is down: `ip link set footunnel0 up`".into());
    let text = render(&report, 0);
    for want in ["shared device: footunnel0", "DOWN: shared device footunnel0 is down", "no client is ACKed"] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn check_passes_only_when_the_kernel_does_what_the_endpoints_say() {
    let mut report = sample_report();
    report.tunnels[0].silent_for_ns = None;
    assert_eq!(problems(&report), Vec::<String>::new());
    assert!(render(&report, 0).contains("controller: running (pid 4242)"));
    assert!(!render(&report, 0).contains("link points at"), "a link that matches is reported");

    // The data plane recorded a new endpoint the link does not follow.
    report.tunnels[0].link_points_at = Some("203.0.113.5:39999".into());
    let found = problems(&report);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("fou0 points at 203.0.113.5:39999, but its client is at 203.0.113.5:40001"));
    assert!(render(&report, 0).contains("link points at: 203.0.113.5:39999 (NOT the endpoint"));

    report.controller.problem = Some("no process has pid 4242".into());
    report.tunnels[0].link_problem = Some("no link named \"fou0\"".into());
    let found = problems(&report);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found[0].contains("the controller is not running (no process has pid 4242)"));
    assert!(render(&report, 0).contains("controller: NOT RUNNING"));

    // No endpoint yet: the placeholder the link points at is no problem.
    let mut fresh = sample_report();
    fresh.tunnels[0].endpoint = None;
    fresh.tunnels[0].link_points_at = Some("192.0.2.1:42424".into());
    assert_eq!(problems(&fresh), Vec::<String>::new());

    // Parked while silent under `on_silence = "down"`: as intended.
    let mut parked = sample_report();
    parked.tunnels[0].link_points_at = Some("192.0.2.1:40001".into());
    assert_eq!(problems(&parked), Vec::<String>::new());
    assert!(render(&parked, 0).contains("link points at: 192.0.2.1:40001 (parked while silent"));
    parked.tunnels[0].down_when_silent = false;
    assert_eq!(problems(&parked).len(), 1, "only \"down\" parks a link");

    // A link set down (by hand, or by an older footunnel) carries nothing.
    let mut down = sample_report();
    down.tunnels[0].silent_for_ns = None;
    down.tunnels[0].link_up = Some(false);
    let found = problems(&down);
    assert!(found.len() == 1 && found[0].contains("fou0 is down"), "{found:?}");
    assert!(render(&down, 0).contains("link: DOWN"));

    // The controller's last error for the tunnel.
    let mut refused = sample_report();
    refused.tunnels[0].silent_for_ns = None;
    refused.tunnels[0].problem = Some("its client is now at …, the same public address as tunnel bob's".into());
    let found = problems(&refused);
    assert!(found.len() == 1 && found[0].contains("tunnel bob's"), "{found:?}");
    assert!(render(&refused, 0).contains("ERROR: its client is now at"));
}
