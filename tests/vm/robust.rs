//! The ways a tunnel used to break while footunnel said it was fine: a TC
//! data plane lost with its controller, links edited or re-created by hand,
//! ACKs for links that were not changed, links the kernel cannot re-point,
//! and parameters lost in a re-point.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use footunnel::now_ns;
use footunnel_tests::{by_hand, footunnel_once, veth};

use crate::broker::{CLIENT_A, CLIENT_B, SECRET, Topology, read_link, receive_from_broker};

/// footunnel's TC programs on `iface`'s ingress in the broker namespace:
/// TCX attachments (kernels ≥ 6.6) and netlink filters alike.
fn tc_programs(topo: &Topology, iface: &str) -> usize {
    let tcx = topo.broker.run(|| match SchedClassifier::query_tcx(iface, TcAttachType::Ingress) {
        Ok((_, programs)) => programs.iter().filter(|p| p.name_as_str() == Some("footunnel_tc")).count(),
        Err(_) => 0, // no TCX on this kernel
    });
    let netlink = footunnel_tests::sh("tc", &["-n", &topo.broker.name, "filter", "show", "dev", iface, "ingress"])
        .lines()
        .filter(|l| l.contains("footunnel_tc")) // `… footunnel_tc direct-action … name footunnel_tc …`
        .count();
    tcx + netlink
}

#[test]
fn in_tc_mode_the_data_plane_outlives_the_controller_and_unload_removes_it() {
    let topo = Topology::new();
    let mut broker = topo.start_broker(&["--attach", "tc"]);
    assert_eq!(tc_programs(&topo, "up0"), 1, "one TC program attached:\n{}", broker.log());
    broker.kill9();
    assert_eq!(tc_programs(&topo, "up0"), 1, "the TC program died with the controller");

    // With no controller, a heartbeat must still be verified and recorded.
    topo.send(CLIENT_A, 40002, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    std::thread::sleep(Duration::from_millis(500));
    let (ok, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(ok, "{show}");
    assert!(
        show.contains("endpoint: 198.51.100.2:40002") && show.contains("heartbeats: 1,"),
        "the heartbeat sent while the controller was down was not recorded:\n{show}"
    );

    // A restart swaps the program in place (still exactly one) and applies it.
    let restarted = topo.start_broker(&["--attach", "tc"]);
    topo.wait_for_endpoint(CLIENT_A, 40002, Duration::from_secs(2));
    assert_eq!(tc_programs(&topo, "up0"), 1, "a restart must replace, not add:\n{}", restarted.log());
    drop(restarted);

    let (ok, out) =
        footunnel_once(&topo.broker, &["unload", "--pin-dir", &topo.pin_dir, "--state-dir", &topo.state_dir]);
    assert!(ok, "{out}");
    assert_eq!(tc_programs(&topo, "up0"), 0, "unload left a TC program attached");
}

#[test]
fn a_link_re_created_or_edited_by_hand_is_put_back_within_a_second() {
    let topo = Topology::new();
    let mut broker = topo.start_broker(&[]);
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));

    // Deleted: a heartbeat now cannot be applied, so it must not be ACKed.
    topo.broker.ip("link del fou0");
    let ack = std::thread::scope(|s| {
        let listener = s.spawn(|| receive_from_broker(&topo, 2, 40002, Duration::from_millis(1500)));
        std::thread::sleep(Duration::from_millis(200));
        topo.send(CLIENT_A, 40002, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
        listener.join().unwrap()
    });
    assert!(ack.is_none(), "a heartbeat was ACKed while its link did not exist:\n{}", broker.log());
    broker.wait_for("no ACK to 198.51.100.2:40002", Duration::from_secs(2));

    // Re-created as docs/broker.md says, pointing at a placeholder.
    topo.broker.ip("link add fou0 type ipip remote 192.0.2.1 local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    let recreated = Instant::now();
    topo.broker.ip("addr add 10.0.0.1/30 dev fou0");
    topo.broker.ip("link set fou0 up");
    let took = topo.wait_for_endpoint(CLIENT_A, 40002, Duration::from_secs(1));
    println!("re-created link put back on its endpoint in {:?}", recreated.elapsed().max(took));
    broker.wait_for("was re-created", Duration::from_secs(1));

    // Edited in place by a tool that knows nothing of footunnel.
    topo.broker.ip("link change fou0 type ipip remote 192.0.2.9 local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    topo.wait_for_endpoint(CLIENT_A, 40002, Duration::from_secs(1));
    broker.wait_for("changed outside footunnel", Duration::from_secs(1));

    // The real client's address again: traffic flows through the new link.
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    assert!(topo.ping(), "no traffic through the re-created link");
}

#[test]
fn a_link_with_remote_any_is_refused_at_start_with_the_fix() {
    let topo = Topology::new();
    topo.broker.ip(
        "link add fou1 type ipip remote any local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424",
    );
    topo.broker.ip("addr add 10.0.1.1/30 dev fou1");
    let out = refused_start(&topo, "fou1");
    assert!(out.contains("remote any") && out.contains("placeholder remote"), "{out}");
}

/// The data plane parses Ethernet frames: an uplink without them (wg0, ppp0,
/// tun) must be refused at start, not served with nothing ever recognised.
#[test]
fn a_non_ethernet_uplink_is_refused_with_the_fix() {
    let topo = Topology::new();
    topo.broker.ip("link add wg9 type wireguard");
    topo.broker.ip("link set wg9 up");
    let (ok, out) = footunnel_once(
        &topo.broker,
        &["broker", "--pin-dir", &topo.pin_dir, "--state-dir", &topo.state_dir, "--interface", "wg9", "fou0", SECRET],
    );
    assert!(!ok, "a broker on wg9 started:\n{out}");
    assert!(out.contains("uplink interface \"wg9\" is not Ethernet") && out.contains("--interface eth0"), "{out}");
    assert!(!std::path::Path::new(&topo.pin_dir).exists(), "the refused start changed state: {}", topo.pin_dir);
}

/// Starts a broker for `link` that must refuse to start and change nothing;
/// its output.
fn refused_start(topo: &Topology, link: &str) -> String {
    let (ok, out) = footunnel_once(
        &topo.broker,
        &["broker", "--pin-dir", &topo.pin_dir, "--state-dir", &topo.state_dir, link, SECRET],
    );
    assert!(!ok, "a broker for {link} started:\n{out}");
    assert!(!std::path::Path::new(&topo.pin_dir).exists(), "the refused start changed state: {}", topo.pin_dir);
    out
}

#[test]
fn a_sit_link_behind_an_ipip_listener_is_refused() {
    let topo = Topology::new();
    topo.broker.ip("link add sit1 type sit remote 192.0.2.1 local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    topo.broker.ip("addr add 2001:db8:1::1/64 dev sit1");
    let out = refused_start(&topo, "sit1");
    assert!(out.contains("delivers protocol 4") && out.contains("ipproto 41"), "{out}");
}

#[test]
fn a_re_point_keeps_every_non_default_parameter() {
    let topo = Topology::new();
    topo.broker.ip("link del fou0");
    // Values that differ from every default: a re-point that rebuilt the
    // link from a partial message would reset one of them.
    topo.broker
        .ip("link add fou0 type ipip remote 192.0.2.1 local 198.51.100.1 ttl inherit tos 0x10 nopmtudisc dev up0 \
         encap fou encap-sport 42424 encap-dport 42424 encap-csum");
    topo.broker.ip("link set fou0 mtu 1400 up");
    topo.broker.ip("addr add 10.0.0.1/30 dev fou0");
    let before = read_link(&topo.broker, "fou0").unwrap();
    let _broker = topo.start_broker(&[]);
    topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    let after = read_link(&topo.broker, "fou0").unwrap();
    let others = |l: &footunnel::os::link::TunnelLink| {
        let mut v = l.params_but_endpoint();
        v.sort_by_key(|p| format!("{p:?}"));
        v
    };
    assert_eq!(others(&after), others(&before), "a parameter other than remote/encap-dport changed");
    assert_eq!(after.remote(), Some(IpAddr::V4(CLIENT_B)));
    let show = topo.broker.ip("-d link show fou0");
    for want in ["mtu 1400", "tos 0x10", "nopmtudisc", "encap-csum", "fou0@up0"] {
        assert!(show.contains(want), "{want:?} lost:\n{show}");
    }
}

/// An ip6tnl changelink recomputes the link's MTU: a re-point must keep the
/// one the operator set (issue 21, item 10).
#[test]
fn an_ip6tnl_re_point_keeps_an_operator_set_mtu() {
    let topo = Topology::new();
    topo.broker.ip("addr add 2001:db8:100::100/64 dev up0 nodad");
    // The kernel recomputes the MTU from the route to the new remote.
    topo.broker.ip("-6 route add 2001:db8:300::/48 dev up0");
    topo.broker.ip("link add fou6 type ip6tnl mode ipip6 remote 2001:db8::1 local 2001:db8:100::100 ttl 64 \
         encap fou encap-sport 42424 encap-dport 42424");
    topo.broker.ip("link set fou6 mtu 1400 up");
    let after = topo.broker.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let link = footunnel::os::link::get(&handle, "fou6").await?;
            assert_eq!(link.mtu, Some(1400), "the MTU was not read");
            footunnel::os::link::repoint(&handle, &link, "2001:db8:300::7".parse().unwrap(), 40001).await?;
            footunnel::os::link::get(&handle, "fou6").await
        })
    });
    let after = after.unwrap();
    assert_eq!(after.remote(), Some("2001:db8:300::7".parse().unwrap()));
    let show = topo.broker.ip("-d link show fou6");
    assert!(show.contains("mtu 1400"), "the re-point reset the MTU:\n{show}");
}

/// The data plane records heartbeats whether or not a controller acts on
/// them: with the controller gone, `show` must say where the link really
/// points, and `show --check` must fail (issue 21, item 2).
#[test]
fn show_tells_where_the_link_points_and_check_fails_without_a_controller() {
    let topo = Topology::new();
    let mut broker = topo.start_broker(&[]);
    topo.send(CLIENT_A, 40001, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    topo.wait_for_endpoint(CLIENT_A, 40001, Duration::from_secs(5));
    let (ok, check) = footunnel_once(&topo.broker, &["show", "--check", "--state-dir", &topo.state_dir]);
    assert!(ok && check.contains("ok: the controller runs"), "a healthy broker fails --check:\n{check}");

    broker.kill9();
    topo.send(CLIENT_A, 40002, &by_hand::heartbeat(SECRET, now_ns(), [0; 8]));
    std::thread::sleep(Duration::from_millis(500));
    let (ok, show) = footunnel_once(&topo.broker, &["show", "--state-dir", &topo.state_dir]);
    assert!(ok, "{show}");
    for want in [
        "controller: NOT RUNNING (no process has pid",
        "endpoint: 198.51.100.2:40002",
        "link points at: 198.51.100.2:40001 (NOT the endpoint",
    ] {
        assert!(show.contains(want), "{want:?} missing from show:\n{show}");
    }
    let (ok, check) = footunnel_once(&topo.broker, &["show", "--check", "--state-dir", &topo.state_dir]);
    assert!(!ok, "--check passed with the controller dead and the link elsewhere:\n{check}");
    for want in
        ["the controller is not running", "points at 198.51.100.2:40001, but its client is at 198.51.100.2:40002"]
    {
        assert!(check.contains(want), "{want:?} missing from --check:\n{check}");
    }

    // A controller again: it applies the endpoint, and the check passes.
    let _broker = topo.start_broker(&[]);
    topo.wait_for_endpoint(CLIENT_A, 40002, Duration::from_secs(5));
    let (ok, check) = footunnel_once(&topo.broker, &["show", "--check", "--state-dir", &topo.state_dir]);
    assert!(ok, "--check fails once the controller has caught up:\n{check}");
}

#[test]
fn an_uplink_deleted_and_re_created_gets_its_program_back() {
    for attach in ["xdp", "tc"] {
        let topo = Topology::new();
        let broker = topo.start_broker(&["--attach", attach]);
        let t0 = now_ns();
        topo.send(CLIENT_B, 40001, &by_hand::heartbeat(SECRET, t0, [0; 8]));
        topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
        // ifdown/ifup of a VLAN or bond: the interface goes, and one of the
        // same name and addresses comes back with a new ifindex.
        topo.broker.ip("link del up0");
        veth(&topo.broker, "up0", "198.51.100.1/24", &topo.client, "up0", "198.51.100.2/24");
        topo.client.ip("addr add 198.51.100.3/24 dev up0");
        // The client's NAT mapping moved meanwhile: only the data plane on
        // the new interface can see it.
        std::thread::sleep(Duration::from_millis(300));
        topo.send(CLIENT_B, 40005, &by_hand::heartbeat(SECRET, t0 + 1_000_000, [0; 8]));
        let start = Instant::now();
        while topo.link().encap_dport() != Some(40005) {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{attach}: a heartbeat on the re-created uplink changed nothing:\n{}",
                broker.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(broker.log().contains("uplink up0 was re-created"), "{}", broker.log());
    }
}

#[test]
fn on_a_policy_routed_broker_an_ack_leaves_by_the_uplink_of_its_source() {
    let topo = Topology::new();
    // A second uplink, the main table's default; the tunnel's address is
    // routed by policy through up0, as on a multi-homed broker.
    let other = footunnel_tests::Netns::new("isp2");
    veth(&topo.broker, "up1", "203.0.113.1/24", &other, "eth0", "203.0.113.2/24");
    topo.broker.ip("route add default via 203.0.113.2");
    topo.broker.ip("route add default via 198.51.100.2 dev up0 table 100");
    topo.broker.ip("rule add from 198.51.100.1 table 100");
    // The client at an address only the default routes reach; the other
    // uplink's side holds it too, so an ACK sent that way is seen there.
    topo.client.ip("addr add 192.0.2.7/32 dev lo");
    other.ip("addr add 192.0.2.7/32 dev lo");
    let broker = topo.start_broker(&[]);
    let ack = std::thread::scope(|s| {
        let right = s.spawn(|| crate::broker::receive_in(&topo.client, 2, 40001, Duration::from_secs(3)));
        let wrong = s.spawn(|| crate::broker::receive_in(&other, 2, 40001, Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(200));
        topo.client.run(|| {
            footunnel::os::rawudp::RawUdp::open()
                .unwrap()
                .send(
                    std::net::Ipv4Addr::new(192, 0, 2, 7),
                    40001,
                    crate::broker::BROKER,
                    42424,
                    &by_hand::heartbeat(SECRET, now_ns(), [0; 8]),
                )
                .unwrap()
        });
        (right.join().unwrap(), wrong.join().unwrap())
    });
    match ack {
        (Some(_), None) => {}
        (None, Some(_)) => panic!("the ACK from 198.51.100.1 left by the main table's uplink:\n{}", broker.log()),
        other => {
            panic!("ACK seen (client, other uplink) = {:?}:\n{}", (other.0.is_some(), other.1.is_some()), broker.log())
        }
    }
}
