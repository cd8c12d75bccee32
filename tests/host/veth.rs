//! Real heartbeats from a client namespace over veth to the broker's uplink,
//! with the program attached by XDP and, separately, as TC ingress.

use std::{net::UdpSocket, time::Duration};

use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc};
use footunnel::broker::dataplane::{TC_PROGRAM, XDP_PROGRAM};
use footunnel_ebpf::maps::{Counter, EVENT_HEARTBEAT, EVENT_STALE};
use footunnel_tests::{
    Netns,
    broker::{Broker, FOU_PORT, now_ns},
    veth,
};

#[derive(Clone, Copy)]
enum Hook {
    Xdp,
    Tc,
}

fn heartbeats_over_veth(hook: Hook) {
    let mut broker = Broker::new(false);
    let client = Netns::new("client");
    let uplink = Netns::new("broker");
    veth(&client, "up0", "192.0.2.1/24", &uplink, "up0", "192.0.2.2/24");
    uplink.ip("link set up0 address 02:00:00:00:00:02");
    client.ip("neigh replace 192.0.2.2 lladdr 02:00:00:00:00:02 dev up0 nud permanent");
    uplink.run(|| match hook {
        Hook::Xdp => {
            let xdp: &mut Xdp = broker.ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
            xdp.attach("up0", XdpMode::Default).or_else(|_| xdp.attach("up0", XdpMode::Skb)).expect("attach XDP");
        }
        Hook::Tc => {
            tc::qdisc_add_clsact("up0").expect("clsact qdisc");
            let tc: &mut SchedClassifier = broker.ebpf.program_mut(TC_PROGRAM).unwrap().try_into().unwrap();
            tc.attach("up0", TcAttachType::Ingress).expect("attach TC ingress");
        }
    });
    let t0 = now_ns();
    let mut forged = broker.heartbeat(t0 + 2);
    forged[35] ^= 1;
    let sends: [(u16, Vec<u8>); 4] = [
        (40001, broker.heartbeat(t0)),
        (40002, broker.heartbeat(t0 + 1)),
        (40003, forged),
        (40004, broker.heartbeat(t0)), // replay from a new port
    ];
    for (port, payload) in &sends {
        client
            .run(|| UdpSocket::bind(("192.0.2.1", *port)).unwrap().send_to(payload, ("192.0.2.2", FOU_PORT)).unwrap());
    }
    let settled = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        broker.count(Counter::Accepted) + broker.count(Counter::BadTag) + broker.count(Counter::Replay) == 4
    });
    assert!(settled, "all four datagrams reached the program");
    let ep = broker.endpoint().expect("endpoint recorded");
    assert_eq!(
        (ep.addr, ep.port, ep.heartbeats, ep.changes),
        (footunnel_ebpf::packet::mapped([192, 0, 2, 1]), 40002, 2, 2)
    );
    assert_eq!(ep.last_timestamp_ns, t0 + 1);
    assert_eq!((broker.count(Counter::BadTag), broker.count(Counter::Replay)), (1, 1));
    let kinds: Vec<u8> = broker.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EVENT_HEARTBEAT, EVENT_HEARTBEAT, EVENT_STALE],
        "one event per accepted heartbeat, a clock notice for the replay"
    );
}

#[test]
fn heartbeats_over_veth_reach_the_maps_through_xdp() {
    heartbeats_over_veth(Hook::Xdp);
}

#[test]
fn heartbeats_over_veth_reach_the_maps_through_tc_ingress() {
    heartbeats_over_veth(Hook::Tc);
}
