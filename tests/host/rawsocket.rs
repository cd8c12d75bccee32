//! The client's raw socket reads only the broker's control messages, not a
//! copy of every UDP datagram the host receives (the tunnel's data).

use std::{net::UdpSocket, time::Duration};

use footunnel::os::rawudp::RawUdp;
use footunnel_tests::{Netns, require_root};

#[test]
fn the_receive_filter_lets_through_only_control_messages_from_the_broker() {
    require_root();
    let ns = Netns::new("raw");
    ns.run(|| {
        let broker = UdpSocket::bind("127.0.0.1:42424").unwrap();
        let stranger = UdpSocket::bind("127.0.0.1:42999").unwrap();
        let _tunnel_port = UdpSocket::bind("127.0.0.1:40001").unwrap();
        let raw = RawUdp::open().unwrap();
        raw.only_control_messages("127.0.0.1".parse().unwrap(), 42424, 40001).unwrap();
        raw.set_nonblocking().unwrap();
        let mut control = vec![0xF7, 1, 2];
        control.resize(40, 0);
        let data = [0x45u8; 40];
        broker.send_to(&data, "127.0.0.1:40001").unwrap(); // tunnel data: not for us
        stranger.send_to(&control, "127.0.0.1:40001").unwrap(); // wrong source port
        broker.send_to(&control, "127.0.0.1:40002").unwrap(); // wrong destination port
        broker.send_to(&control, "127.0.0.1:40001").unwrap(); // the one
        std::thread::sleep(Duration::from_millis(100));
        let mut got = Vec::new();
        while let Some(d) = raw.recv().unwrap() {
            got.push((d.sport, d.dport, d.payload[0]));
        }
        assert_eq!(got, vec![(42424, 40001, 0xF7)], "the filter let through more (or less) than the control message");

        // Without the filter the same socket type sees everything: the test
        // would notice a filter that does nothing.
        let unfiltered = RawUdp::open().unwrap();
        unfiltered.set_nonblocking().unwrap();
        broker.send_to(&data, "127.0.0.1:40001").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(unfiltered.recv().unwrap().is_some());
    });
}
