//! 100,000+ mutated and random packets through the real program: no
//! endpoint entry changes without a valid tag.

use aya::maps::{HashMap, MapData};
use footunnel_ebpf::maps::{Counter, ENDPOINTS, Endpoint};
use footunnel_tests::{
    broker::{Broker, FOU_PORT, XDP_DROP, XDP_PASS, now_ns},
    frame::Udp4,
};

const PACKETS: usize = 120_000;

/// xorshift64*: deterministic, so a failure names a reproducible seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn endpoint_entries(broker: &Broker) -> Vec<(u64, Endpoint)> {
    let map: HashMap<&MapData, u64, Endpoint> = HashMap::try_from(broker.ebpf.map(ENDPOINTS).unwrap()).unwrap();
    map.iter().map(|r| r.unwrap()).collect()
}

#[test]
fn mutated_packets_never_move_an_endpoint() {
    let broker = Broker::new(false);
    let t0 = now_ns();
    let client = [203, 0, 113, 5];
    let broker_addr = [198, 51, 100, 1];
    let heartbeat = Udp4::new(client, 40001, broker_addr, FOU_PORT, &broker.heartbeat(t0));
    assert_eq!(broker.xdp(&heartbeat.build()), XDP_DROP);
    let baseline = endpoint_entries(&broker);
    assert_eq!(baseline.len(), 1);
    let accepted = broker.count(Counter::Accepted);

    // Every seed is either already accepted (so any copy is a replay unless
    // its tagged bytes change, which breaks the tag) or not a heartbeat.
    let seeds: Vec<Vec<u8>> = vec![
        heartbeat.build(),
        Udp4 { options: vec![1, 1, 1, 0], ..heartbeat.clone() }.build(),
        Udp4 { src: [192, 0, 2, 1], sport: 9, ..heartbeat.clone() }.build(),
        Udp4::new(
            client,
            40001,
            broker_addr,
            FOU_PORT,
            &[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1],
        )
        .build(),
    ];
    let seed = now_ns() | 1;
    let mut rng = Rng(seed);
    let (mut passed, mut dropped) = (0u64, 0u64);
    for n in 0..PACKETS {
        let mut packet = match rng.below(10) {
            0 => (0..14 + rng.below(120)).map(|_| rng.next() as u8).collect(),
            _ => seeds[rng.below(seeds.len())].clone(),
        };
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 if packet.len() > 14 => packet.truncate(14 + rng.below(packet.len() - 14)),
                1 => packet.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                _ => {
                    let i = rng.below(packet.len());
                    packet[i] = rng.next() as u8;
                }
            }
        }
        match broker.xdp(&packet) {
            XDP_PASS => passed += 1,
            XDP_DROP => dropped += 1,
            other => panic!("packet {n} (seed {seed}): verdict {other}"),
        }
        if n % 1000 == 999 || packet.len() >= 14 + 20 + 8 + 40 {
            assert_eq!(
                endpoint_entries(&broker),
                baseline,
                "packet {n} (seed {seed}) moved an endpoint: {packet:02x?}"
            );
        }
    }
    assert_eq!(broker.count(Counter::Accepted), accepted, "seed {seed}: nothing was accepted");
    assert_eq!(endpoint_entries(&broker), baseline);
    // The fuzz reached the verifier, not just the parser.
    let rejected: u64 = [Counter::BadTag, Counter::Replay, Counter::Malformed].iter().map(|c| broker.count(*c)).sum();
    assert!(rejected > 10_000, "only {rejected} packets reached the control-message checks");
    println!(
        "fuzz: {PACKETS} packets (seed {seed}): {passed} passed, {dropped} dropped, {rejected} rejected by verification"
    );
}
