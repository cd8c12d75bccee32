use std::{net::UdpSocket, time::Duration};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};
use footunnel::dataplane::{self, XDP_PROGRAM};
use footunnel_ebpf::maps::Counter;
use footunnel_tests::{Netns, frame::Udp4, require_root, veth};

const FOU_PORT: u16 = 42424;
const XDP_PASS: u32 = 2;

fn loaded() -> Ebpf {
    require_root();
    let mut ebpf = dataplane::open().expect("load the eBPF object");
    dataplane::watch_port(&mut ebpf, FOU_PORT).unwrap();
    let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).expect("XDP entry point").try_into().unwrap();
    xdp.load().expect("the verifier accepts the XDP program");
    ebpf
}

fn run(ebpf: &Ebpf, frame: &[u8]) -> u32 {
    let xdp: &Xdp = ebpf.program(XDP_PROGRAM).unwrap().try_into().unwrap();
    xdp.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).expect("BPF_PROG_TEST_RUN").return_value
}

fn fou_count(ebpf: &Ebpf) -> u64 {
    dataplane::counter(ebpf, Counter::FouPort).unwrap()
}

#[test]
fn test_run_counts_only_ipv4_udp_to_a_watched_port() {
    let ebpf = loaded();
    let to_fou = Udp4::new([192, 0, 2, 7], 40000, [198, 51, 100, 1], FOU_PORT, b"\x45 inner");
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("UDP to the FoU port", to_fou.build(), 1),
        ("UDP to another port", Udp4 { dport: 53, ..to_fou.clone() }.build(), 0),
        ("TCP to the FoU port", Udp4 { protocol: 6, ..to_fou.clone() }.build(), 0),
        ("a fragment", Udp4 { frag: 0x2000, ..to_fou.clone() }.build(), 0),
        ("IPv4 options", Udp4 { options: vec![1, 1, 1, 0], ..to_fou.clone() }.build(), 1),
        ("truncated UDP header", to_fou.build()[..14 + 20 + 4].to_vec(), 0),
    ];
    for (what, frame, counted) in cases {
        let before = fou_count(&ebpf);
        assert_eq!(run(&ebpf, &frame), XDP_PASS, "{what}: verdict");
        assert_eq!(fou_count(&ebpf) - before, counted, "{what}: count");
    }
}

#[test]
fn xdp_on_veth_counts_real_packets_to_the_watched_port() {
    let mut ebpf = loaded();
    let client = Netns::new("client");
    let broker = Netns::new("broker");
    veth(&client, "up0", "192.0.2.1/24", &broker, "up0", "192.0.2.2/24");
    broker.run(|| {
        let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.attach("up0", XdpMode::Default).or_else(|_| xdp.attach("up0", XdpMode::Skb)).expect("attach XDP to up0");
    });
    // Resolve the neighbour first so no datagram waits in (or falls out of) the ARP queue.
    client.ip("neigh replace 192.0.2.2 lladdr 02:00:00:00:00:02 dev up0 nud permanent");
    broker.ip("link set up0 address 02:00:00:00:00:02");
    client.run(|| {
        let sock = UdpSocket::bind("192.0.2.1:0").unwrap();
        for _ in 0..5 {
            sock.send_to(b"\x45fou", ("192.0.2.2", FOU_PORT)).unwrap();
        }
        for _ in 0..3 {
            sock.send_to(b"other", ("192.0.2.2", 9)).unwrap();
        }
    });
    let mut count = 0;
    for _ in 0..50 {
        count = fou_count(&ebpf);
        if count >= 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count, 5, "packets to the FoU port seen by XDP on the broker's uplink");
}
