//! 100,000+ mutated and random packets through the real program: no
//! endpoint entry changes without a valid tag.

use aya::maps::{HashMap, MapData};
use footunnel_ebpf::maps::{Counter, ENDPOINTS, Endpoint};
use footunnel_tests::{
    broker::{Broker, FOU_PORT, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS, now_ns},
    frame::{Udp4, Udp6},
};

const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const BROKER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

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

/// A TC verdict in XDP terms, so both entry points are judged alike.
fn tc_as_xdp(verdict: u32) -> u32 {
    match verdict {
        TC_ACT_OK => XDP_PASS,
        TC_ACT_SHOT => XDP_DROP,
        other => panic!("TC verdict {other}"),
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
        // IPv6: a heartbeat (a replay of the accepted one, from elsewhere)
        // bare and behind extension headers, and data.
        Udp6::new(CLIENT6, 40001, BROKER6, FOU_PORT, &broker.heartbeat(t0)).build(),
        Udp6 {
            extensions: vec![Udp6::destination_options(); 3],
            ..Udp6::new(CLIENT6, 7, BROKER6, FOU_PORT, &broker.heartbeat(t0))
        }
        .build(),
        Udp6::new(
            CLIENT6,
            40001,
            BROKER6,
            FOU_PORT,
            &[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1],
        )
        .build(),
    ];
    let seed = now_ns() | 1;
    let mut rng = Rng(seed);
    let (mut passed, mut dropped, mut fresh_sent, mut tc_runs) = (0u64, 0u64, 0u64, 0u64);
    let payload_at = heartbeat.build().len() - 40;
    for n in 0..PACKETS {
        // Fresh heartbeats (never accepted, newer than the last) with 1–3
        // payload bytes changed: only the tag (or the header checks) stands
        // between these and the endpoint, so they exercise SipHash itself.
        if rng.below(3) == 0 {
            let mut packet = heartbeat.clone();
            let signed = broker.heartbeat(t0 + 1 + n as u64);
            packet.payload = signed.clone();
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(40);
                packet.payload[i] ^= 1 + rng.below(255) as u8;
            }
            if packet.payload == signed {
                packet.payload[39] ^= 1; // two changes undid each other
            }
            // Every third one over IPv6, behind a destination-options header.
            let frame = if n % 3 == 0 {
                let mut six = Udp6::new(CLIENT6, 40001, BROKER6, FOU_PORT, &packet.payload);
                six.extensions.push(Udp6::destination_options());
                six.build()
            } else {
                packet.build()
            };
            assert_eq!(frame.len() - 40, if n % 3 == 0 { 14 + 40 + 8 + 8 } else { payload_at });
            let verdict = if n % 2 == 0 {
                broker.xdp(&frame)
            } else {
                tc_runs += 1;
                tc_as_xdp(broker.tc(&frame))
            };
            match verdict {
                XDP_PASS => passed += 1,
                _ => dropped += 1,
            }
            fresh_sent += 1;
            continue;
        }
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
        // A part of the run goes through the TC entry point.
        let tc = if n % 5 == 0 { broker.try_tc(&packet) } else { None };
        tc_runs += u64::from(tc.is_some());
        let verdict = tc.map_or_else(|| broker.xdp(&packet), tc_as_xdp);
        match verdict {
            XDP_PASS => passed += 1,
            XDP_DROP => dropped += 1,
            other => panic!("packet {n} (seed {seed}): verdict {other}"),
        }
        // Long enough to carry a heartbeat (over IPv4; IPv6 is longer).
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
    assert!(tc_runs as usize > PACKETS / 10, "only {tc_runs} packets went through the TC entry point");
    let bad_tags = broker.count(Counter::BadTag);
    // Bytes 24..40 (detail, tag) and the timestamp's low bytes can only fail
    // at the tag: 40 % of single-byte changes; the rest fail cheaper checks.
    assert!(
        bad_tags * 10 > fresh_sent * 3,
        "only {bad_tags} of {fresh_sent} altered fresh heartbeats reached the tag check (seed {seed})"
    );
    println!(
        "fuzz: {PACKETS} packets (seed {seed}), {fresh_sent} altered fresh heartbeats: {passed} passed, {dropped} dropped, \
         {rejected} rejected by verification, {bad_tags} by the tag, {tc_runs} through TC"
    );
}
