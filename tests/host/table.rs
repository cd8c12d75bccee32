//! A table of crafted packets through BPF_PROG_TEST_RUN: verdict, endpoint,
//! counters, events.

use footunnel_ebpf::{
    maps::{Counter, EVENT_HEARTBEAT, EVENT_LEGACY, EVENT_OBSERVED, EVENT_PROBE, EVENT_STALE},
    packet::mapped,
    wire::{ControlMessage, Kind, Probe},
};
use footunnel_tests::{
    broker::{Broker, FOU_PORT, LEGACY_PORT, TC_ACT_OK, TC_ACT_SHOT, WINDOW_NS, XDP_DROP, XDP_PASS, now_ns},
    frame::{Udp4, Udp6},
};

const CLIENT: [u8; 4] = [203, 0, 113, 5];
const BROKER: [u8; 4] = [198, 51, 100, 1];

fn to_fou(src: [u8; 4], sport: u16, payload: &[u8]) -> Udp4 {
    Udp4::new(src, sport, BROKER, FOU_PORT, payload)
}

/// Inner IPv4 header from `src` (the tunnel's peer side is 10.0.0.0/30).
fn inner(src: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&[10, 0, 0, 1]);
    p
}

/// Inner IPv6 header from 2001:db8:SUBNET::2 (the peer side is 2001:db8:f0::/64).
fn inner_v6(subnet: u8) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0, 0, 0, 59, 64];
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, subnet, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, subnet, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    p
}

/// Sends `frame`, checks the verdict and that exactly `counter` moved.
fn expect(broker: &Broker, what: &str, frame: &[u8], verdict: u32, counter: Option<Counter>) {
    let before: Vec<u64> = Counter::ALL.iter().map(|c| broker.count(*c)).collect();
    assert_eq!(broker.xdp(frame), verdict, "{what}: verdict");
    for (c, was) in Counter::ALL.iter().zip(before) {
        let expected = was + u64::from(Some(*c) == counter);
        assert_eq!(broker.count(*c), expected, "{what}: counter {}", c.name());
    }
}

#[test]
fn control_messages_are_verified_by_every_rule() {
    let mut broker = Broker::new(false);
    let t0 = now_ns();
    let valid = to_fou(CLIENT, 40001, &broker.heartbeat(t0));

    expect(&broker, "valid heartbeat", &valid.build(), XDP_DROP, Some(Counter::Accepted));
    let ep = broker.endpoint().expect("endpoint recorded");
    assert_eq!((ep.addr, ep.port, ep.last_timestamp_ns, ep.heartbeats, ep.changes), (mapped(CLIENT), 40001, t0, 1, 1));
    let events = broker.events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind, events[0].record_id, events[0].addr, events[0].port),
        (EVENT_HEARTBEAT, broker.tunnel.id, mapped(CLIENT), 40001)
    );

    let mut rejected: Vec<(&str, Vec<u8>, u32, Counter)> = Vec::new();
    let mut forged = broker.heartbeat(t0 + 1);
    forged[39] ^= 0x40;
    rejected.push(("wrong tag", to_fou(CLIENT, 40002, &forged).build(), XDP_DROP, Counter::BadTag));
    let mut other_id = broker.heartbeat(t0 + 1);
    other_id[8] ^= 1;
    rejected.push(("unknown key id", to_fou(CLIENT, 40002, &other_id).build(), XDP_DROP, Counter::UnknownTunnel));
    rejected.push(("replayed", to_fou(CLIENT, 40002, &broker.heartbeat(t0)).build(), XDP_DROP, Counter::Replay));
    rejected.push(("older", to_fou(CLIENT, 40002, &broker.heartbeat(t0 - 5)).build(), XDP_DROP, Counter::Replay));
    let stale = broker.heartbeat(t0 - WINDOW_NS - 1_000_000_000);
    rejected.push(("stale", to_fou(CLIENT, 40002, &stale).build(), XDP_DROP, Counter::Stale));
    let future = broker.heartbeat(t0 + WINDOW_NS + 5_000_000_000);
    rejected.push(("from the future", to_fou(CLIENT, 40002, &future).build(), XDP_DROP, Counter::Stale));
    for (i, value, what, counter) in [
        (0, 0xF6, "wrong marker", Counter::Malformed),
        (1, 2, "wrong version", Counter::BadVersion),
        (2, 2, "ACK sent to the broker", Counter::BadType),
        (2, 3, "CHALLENGE sent to the broker", Counter::BadType),
        (2, 0, "type 0", Counter::BadType),
    ] {
        let mut p = broker.heartbeat(t0 + 1);
        p[i] = value;
        rejected.push((what, to_fou(CLIENT, 40002, &p).build(), XDP_DROP, counter));
    }
    let mut long = broker.heartbeat(t0 + 1);
    long.push(0);
    rejected.push(("41 bytes", to_fou(CLIENT, 40002, &long).build(), XDP_DROP, Counter::Malformed));
    let mut not_ours = broker.heartbeat(t0 + 1);
    not_ours[0] = 0x57;
    rejected.push(("first nibble 5", to_fou(CLIENT, 40002, &not_ours).build(), XDP_PASS, Counter::NotFou));
    for (what, frame, verdict, counter) in &rejected {
        expect(&broker, what, frame, *verdict, Some(*counter));
        assert_eq!(broker.endpoint(), Some(ep), "{what}: endpoint unchanged");
    }
    // The correctly tagged refusals (replayed, older, stale, from the
    // future) draw one clock notice within the second, for TIME; the rest none.
    let events = broker.events();
    let kinds: Vec<u8> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EVENT_STALE], "one clock notice, no other event");
    assert_eq!((events[0].timestamp_ns, events[0].key_id()), (t0, broker.tunnel.id), "it echoes the replay");

    // Truncated at every length: never accepted, never panics the verifier's trust.
    let full = to_fou(CLIENT, 40002, &broker.heartbeat(t0 + 1)).build();
    let payload_at = full.len() - 40;
    for len in 14..full.len() {
        let verdict = broker.xdp(&full[..len]);
        let expected = if len > payload_at { XDP_DROP } else { XDP_PASS };
        assert_eq!(verdict, expected, "truncated to {len} bytes");
        assert_eq!(broker.endpoint(), Some(ep), "truncated to {len} bytes: endpoint unchanged");
    }

    // Not ours at all.
    let hb = broker.heartbeat(t0 + 2);
    for (what, frame, counter) in [
        ("other port", Udp4 { dport: 53, ..to_fou(CLIENT, 40002, &hb) }.build(), None),
        ("TCP", Udp4 { protocol: 6, ..to_fou(CLIENT, 40002, &hb) }.build(), None),
        // Passed on to reassembly, but counted: its UDP header names our port.
        ("first fragment", Udp4 { frag: 0x2000, ..to_fou(CLIENT, 40002, &hb) }.build(), Some(Counter::Fragment)),
        ("later fragment", Udp4 { frag: 0x0005, ..to_fou(CLIENT, 40002, &hb) }.build(), None),
        ("legacy port while legacy is off", Udp4 { dport: LEGACY_PORT, ..to_fou(CLIENT, 40002, b"x") }.build(), None),
    ] {
        expect(&broker, what, &frame, XDP_PASS, counter);
        assert_eq!(broker.endpoint(), Some(ep), "{what}: endpoint unchanged");
    }

    // IPv4 options move the UDP header; the heartbeat still verifies.
    let with_options =
        Udp4 { options: vec![1, 1, 1, 0, 7, 3, 4, 0], ..to_fou(CLIENT, 40003, &broker.heartbeat(t0 + 3)) };
    expect(&broker, "heartbeat with IPv4 options", &with_options.build(), XDP_DROP, Some(Counter::Accepted));
    let moved = broker.endpoint().unwrap();
    assert_eq!((moved.port, moved.changes, moved.heartbeats, moved.last_timestamp_ns), (40003, 2, 2, t0 + 3));

    // Flags set: receivers ignore them, but the tag covers them, and it is
    // computed from the key (the per-tunnel state covers plain headers only).
    let flagged = |ts, tag_flip: u8| {
        let mut m = ControlMessage::from_bytes(&broker.heartbeat(ts).try_into().unwrap());
        m.flags = 0x80;
        let mut m = m.sign(broker.tunnel.sip_key()).to_bytes();
        m[39] ^= tag_flip;
        to_fou(CLIENT, 40004, &m).build()
    };
    expect(&broker, "heartbeat with flags, forged", &flagged(t0 + 4, 1), XDP_DROP, Some(Counter::BadTag));
    assert_eq!(broker.endpoint(), Some(moved), "a forged flagged heartbeat changes nothing");
    expect(&broker, "heartbeat with flags", &flagged(t0 + 4, 0), XDP_DROP, Some(Counter::Accepted));
    assert_eq!(broker.endpoint().map(|e| (e.port, e.last_timestamp_ns)), Some((40004, t0 + 4)));
}

/// A PROBE of `len` bytes for the broker's tunnel, asking for `mtu`.
fn probe(broker: &Broker, ts: u64, len: u16, mtu: u16) -> Vec<u8> {
    let p = Probe { len, mtu };
    let msg = ControlMessage::new(Kind::Probe, broker.tunnel.id, ts, p.detail()).sign(broker.tunnel.sip_key());
    let mut bytes = vec![0; usize::from(len)];
    assert!(p.write(&msg, &mut bytes));
    bytes
}

#[test]
fn probes_of_every_size_are_verified_announced_and_rate_limited_in_the_kernel() {
    let mut broker = Broker::new(false);
    let t0 = now_ns();
    expect(
        &broker,
        "heartbeat",
        &to_fou(CLIENT, 40001, &broker.heartbeat(t0)).build(),
        XDP_DROP,
        Some(Counter::Accepted),
    );
    let ep = broker.endpoint().unwrap();
    // Full-size (1472 bytes of payload, a 1514-byte frame) and the smallest,
    // by XDP and by TC; older than the heartbeat, from another port.
    for (i, len) in [1472u16, 40, 1000].into_iter().enumerate() {
        let frame = to_fou(CLIENT, 40009, &probe(&broker, t0 - 10 - i as u64, len, 1400)).build();
        expect(&broker, &format!("PROBE of {len}"), &frame, XDP_DROP, Some(Counter::Probe));
        assert_eq!(broker.tc(&frame), TC_ACT_SHOT, "TC: PROBE of {len}");
    }
    assert_eq!(broker.endpoint(), Some(ep), "a probe moves nothing");
    let events = broker.events();
    let got: Vec<_> = events.iter().map(|e| (e.kind, e.probe(), e.timestamp_ns, e.key_id(), e.port)).collect();
    assert_eq!(got[1], (EVENT_PROBE, Probe { len: 1472, mtu: 1400 }, t0 - 10, broker.tunnel.id, 40009), "{got:?}");
    assert_eq!(got.len(), 1 + 6, "{got:?}");
    let mut cut = probe(&broker, t0, 1000, 0);
    cut.truncate(999);
    expect(&broker, "PROBE cut short", &to_fou(CLIENT, 40009, &cut).build(), XDP_DROP, Some(Counter::Malformed));
    let mut forged = probe(&broker, t0, 1000, 0);
    forged[26] ^= 1;
    expect(&broker, "forged PROBE", &to_fou(CLIENT, 40009, &forged).build(), XDP_DROP, Some(Counter::BadTag));
    let stale = probe(&broker, t0 - 2 * WINDOW_NS, 1000, 0);
    expect(&broker, "stale PROBE", &to_fou(CLIENT, 40009, &stale).build(), XDP_DROP, Some(Counter::Stale));
    // Six announced so far: the rest of a burst fills the budget, then none
    // (within one interval: the budget refills by one every 25 ms).
    for i in 0..footunnel_ebpf::maps::PROBE_BURST - 6 {
        let frame = to_fou(CLIENT, 40009, &probe(&broker, t0 + i, 100, 0)).build();
        expect(&broker, "PROBE within the budget", &frame, XDP_DROP, Some(Counter::Probe));
    }
    let over = to_fou(CLIENT, 40009, &probe(&broker, t0 + 99, 100, 0)).build();
    expect(&broker, "PROBE over the budget", &over, XDP_DROP, Some(Counter::ProbeLimited));
    assert_eq!(broker.events().len() as u64, footunnel_ebpf::maps::PROBE_BURST - 6);
}

#[test]
fn fou_data_passes_and_a_new_source_is_observed_within_the_rate_limit() {
    let mut broker = Broker::new(false);
    let t0 = now_ns();
    assert_eq!(broker.xdp(&to_fou(CLIENT, 40001, &broker.heartbeat(t0)).build()), XDP_DROP);
    broker.events();

    expect(
        &broker,
        "data from the endpoint",
        &to_fou(CLIENT, 40001, &inner([10, 0, 0, 2])).build(),
        XDP_PASS,
        Some(Counter::FouData),
    );
    expect(
        &broker,
        "IPv6 data from the endpoint",
        &to_fou(CLIENT, 40001, &inner_v6(0xf0)).build(),
        XDP_PASS,
        Some(Counter::FouData),
    );
    expect(
        &broker,
        "IPv6 data for no tunnel",
        &to_fou(CLIENT, 40099, &inner_v6(0xf1)).build(),
        XDP_PASS,
        Some(Counter::FouUnmatched),
    );
    expect(
        &broker,
        "data for no tunnel",
        &to_fou(CLIENT, 40099, &inner([172, 16, 0, 2])).build(),
        XDP_PASS,
        Some(Counter::FouUnmatched),
    );
    assert!(broker.events().is_empty());

    let elsewhere = to_fou([192, 0, 2, 77], 5555, &inner([10, 0, 0, 2])).build();
    assert_eq!(broker.xdp(&elsewhere), XDP_PASS);
    let events = broker.events();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].kind, events[0].addr, events[0].port), (EVENT_OBSERVED, mapped([192, 0, 2, 77]), 5555));
    for _ in 0..20 {
        assert_eq!(broker.xdp(&elsewhere), XDP_PASS);
    }
    assert!(broker.events().is_empty(), "at most one event per tunnel per second");
    assert_eq!((broker.count(Counter::FouElsewhere), broker.count(Counter::ObservedEvents)), (21, 1));
    let observed =
        footunnel::broker::dataplane::observed(&broker.ebpf, broker.tunnel.id).unwrap().expect("observed entry");
    assert_eq!((observed.addr, observed.port, observed.packets), (mapped([192, 0, 2, 77]), 5555, 21));
    let ep = broker.endpoint().unwrap();
    assert_eq!((ep.addr, ep.port), (mapped(CLIENT), 40001), "data never moves the endpoint");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(broker.xdp(&elsewhere), XDP_PASS);
    assert_eq!(broker.events().len(), 1, "a second later, the next event");

    // The endpoint moves: data from the old source (cached as the endpoint's) is noticed again.
    assert_eq!(broker.xdp(&to_fou(CLIENT, 40002, &broker.heartbeat(t0 + 1)).build()), XDP_DROP);
    let old_source = to_fou(CLIENT, 40001, &inner([10, 0, 0, 2])).build();
    expect(&broker, "data from the previous endpoint", &old_source, XDP_PASS, Some(Counter::FouElsewhere));
    expect(
        &broker,
        "data from the new endpoint",
        &to_fou(CLIENT, 40002, &inner([10, 0, 0, 2])).build(),
        XDP_PASS,
        Some(Counter::FouData),
    );
}

#[test]
fn legacy_heartbeats_record_address_and_port_only_when_enabled() {
    let mut broker = Broker::new(true);
    let legacy = Udp4::new(CLIENT, 42424, BROKER, LEGACY_PORT, footunnel_tests::broker::SECRET.as_bytes());
    expect(&broker, "legacy heartbeat", &legacy.build(), XDP_DROP, Some(Counter::LegacyAccepted));
    let ep = broker.endpoint().unwrap();
    assert_eq!((ep.addr, ep.port), (mapped(CLIENT), 42424));
    assert_eq!(broker.events()[0].kind, EVENT_LEGACY);
    let wrong = Udp4 { payload: b"not the secret".to_vec(), ..legacy.clone() };
    expect(&broker, "wrong legacy secret", &wrong.build(), XDP_PASS, Some(Counter::LegacyUnknown));
    let prefix = Udp4 { payload: footunnel_tests::broker::SECRET.as_bytes()[..5].to_vec(), ..legacy.clone() };
    expect(&broker, "a prefix of the secret", &prefix.build(), XDP_PASS, Some(Counter::LegacyUnknown));

    let off = Broker::new(false);
    expect(&off, "legacy heartbeat, legacy off", &legacy.build(), XDP_PASS, None);
    assert_eq!(off.endpoint(), None);
}

#[test]
fn the_tc_entry_point_shares_the_path() {
    let broker = Broker::new(false);
    let t0 = now_ns();
    assert_eq!(broker.tc(&to_fou(CLIENT, 40009, &broker.heartbeat(t0)).build()), TC_ACT_SHOT);
    assert_eq!(broker.endpoint().map(|e| (e.addr, e.port)), Some((mapped(CLIENT), 40009)));
    let mut forged = broker.heartbeat(t0 + 1);
    forged[33] ^= 1;
    assert_eq!(broker.tc(&to_fou(CLIENT, 40010, &forged).build()), TC_ACT_SHOT);
    assert_eq!(broker.tc(&to_fou(CLIENT, 40009, &inner([10, 0, 0, 2])).build()), TC_ACT_OK);
    assert_eq!(broker.endpoint().map(|e| e.port), Some(40009));
    assert_eq!(broker.count(Counter::BadTag), 1);
}

#[test]
fn packets_to_another_address_than_the_links_are_not_the_tunnels() {
    let mut broker = Broker::new(false);
    let (id, key) = (broker.tunnel.id, broker.tunnel.sip_key());
    footunnel::broker::dataplane::add_tunnel(&mut broker.ebpf, id, key, Some(BROKER.into())).unwrap();
    footunnel::broker::dataplane::add_prefix(
        &mut broker.ebpf,
        "10.0.0.0".parse().unwrap(),
        30,
        id,
        Some(BROKER.into()),
    )
    .unwrap();
    let t0 = now_ns();
    let transit = Udp4::new(CLIENT, 40001, [192, 0, 2, 200], FOU_PORT, &broker.heartbeat(t0));
    expect(&broker, "heartbeat to another address", &transit.build(), XDP_PASS, Some(Counter::WrongDestination));
    assert_eq!(broker.endpoint(), None);
    expect(
        &broker,
        "heartbeat to the link's address",
        &to_fou(CLIENT, 40001, &broker.heartbeat(t0)).build(),
        XDP_DROP,
        Some(Counter::Accepted),
    );
    assert_eq!(broker.events()[0].dst_addr, mapped(BROKER), "the event names the address to answer from");
    let data = Udp4::new([192, 0, 2, 99], 5555, [192, 0, 2, 200], FOU_PORT, &inner([10, 0, 0, 2]));
    expect(&broker, "data to another address", &data.build(), XDP_PASS, Some(Counter::WrongDestination));
}

#[test]
fn fragments_and_contradicting_headers_to_a_fou_port_are_counted() {
    let broker = Broker::new(false);
    let first = Udp4 { frag: 0x2000, ..to_fou(CLIENT, 40001, &broker.heartbeat(now_ns())) };
    expect(&broker, "first fragment", &first.build(), XDP_PASS, Some(Counter::Fragment));
    let mut bad = to_fou(CLIENT, 40001, &broker.heartbeat(now_ns())).build();
    bad[38..40].copy_from_slice(&600u16.to_be_bytes());
    expect(&broker, "UDP length beyond the IP packet", &bad, XDP_PASS, Some(Counter::IpMalformed));
}

#[test]
fn prefixes_are_synced_without_dropping_the_ones_that_stay() {
    use aya::maps::{LpmTrie, MapData};
    use footunnel_ebpf::maps::{PREFIXES_V4, PREFIXES_V6, PrefixOwner};
    let mut broker = Broker::new(false);
    let id = broker.tunnel.id;
    let wanted = [("10.0.0.0".parse().unwrap(), 30, id, None), ("10.9.0.0".parse().unwrap(), 16, id, None)];
    footunnel::broker::dataplane::sync_prefixes(&mut broker.ebpf, &wanted).unwrap();
    let v4: LpmTrie<&MapData, [u8; 4], PrefixOwner> = LpmTrie::try_from(broker.ebpf.map(PREFIXES_V4).unwrap()).unwrap();
    let mut keys: Vec<(u32, [u8; 4])> = v4.keys().map(|k| k.unwrap()).map(|k| (k.prefix_len(), k.data())).collect();
    keys.sort();
    assert_eq!(keys, vec![(16, [10, 9, 0, 0]), (30, [10, 0, 0, 0])]);
    let v6: LpmTrie<&MapData, [u8; 16], PrefixOwner> =
        LpmTrie::try_from(broker.ebpf.map(PREFIXES_V6).unwrap()).unwrap();
    assert_eq!(v6.keys().count(), 0, "the IPv6 prefix no longer wanted is gone");
    // The kept prefix still routes data to the tunnel.
    let t0 = now_ns();
    broker.xdp(&to_fou(CLIENT, 40001, &broker.heartbeat(t0)).build());
    expect(
        &broker,
        "data from a kept prefix",
        &to_fou(CLIENT, 40001, &inner([10, 0, 0, 2])).build(),
        XDP_PASS,
        Some(Counter::FouData),
    );
}

#[test]
fn a_cache_hit_still_needs_the_inner_source_in_the_tunnels_prefix() {
    let mut broker = Broker::new(false);
    // A second tunnel owns 10.0.0.4/30; its endpoint is elsewhere.
    let other = footunnel::secret::TunnelIdentity::derive("the other tunnel's secret");
    footunnel::broker::dataplane::add_tunnel(&mut broker.ebpf, other.id, other.sip_key(), None).unwrap();
    footunnel::broker::dataplane::add_prefix(&mut broker.ebpf, "10.0.0.4".parse().unwrap(), 30, other.id, None)
        .unwrap();
    broker.xdp(&to_fou(CLIENT, 40001, &broker.heartbeat(now_ns())).build());
    broker.events();
    let ours = to_fou(CLIENT, 40001, &inner([10, 0, 0, 2])).build();
    expect(&broker, "data from the endpoint (fills the cache)", &ours, XDP_PASS, Some(Counter::FouData));
    expect(&broker, "again, from the cache", &ours, XDP_PASS, Some(Counter::FouData));
    // The same outer source, an inner source of the other tunnel: not ours to
    // wave through; it is data for that tunnel from a source not its endpoint.
    let theirs = to_fou(CLIENT, 40001, &inner([10, 0, 0, 5])).build();
    let before = broker.count(Counter::FouElsewhere);
    assert_eq!(broker.xdp(&theirs), XDP_PASS);
    assert_eq!(broker.count(Counter::FouElsewhere), before + 1, "a cache hit skipped the inner-prefix check");
    assert_eq!(broker.events().iter().filter(|e| e.record_id == other.id).count(), 1, "the other tunnel hears of it");
}

#[test]
fn the_kernel_finds_a_cache_entry_where_userspace_puts_it() {
    use footunnel_ebpf::maps::{CachedEndpoint, endpoint_cache_key, inner_prefix};
    let mut broker = Broker::new(false);
    // An entry for a source that is not the endpoint: only a hit on it, at
    // the slot and entry userspace computes, passes its data as the tunnel's.
    let (stranger, port) = ([192, 0, 2, 9], 5555);
    let data = to_fou(stranger, port, &inner([10, 0, 0, 2])).build();
    assert_eq!(broker.xdp(&data), XDP_PASS);
    assert_eq!(broker.count(Counter::FouElsewhere), 1, "before the entry: data from elsewhere");
    let (slot, entry) = endpoint_cache_key(stranger, port);
    let (inner_net, inner_mask) = inner_prefix([10, 0, 0, 2], 30);
    let mut cache: aya::maps::Array<_, CachedEndpoint> =
        aya::maps::Array::try_from(broker.ebpf.map_mut(footunnel_ebpf::maps::ENDPOINT_CACHE).unwrap()).unwrap();
    cache.set(slot, CachedEndpoint { entry, inner_net, inner_mask }, 0).unwrap();
    expect(&broker, "a hit", &data, XDP_PASS, Some(Counter::FouData));
    assert_eq!(broker.tc(&data), TC_ACT_OK);
}

#[test]
fn during_a_key_rotation_heartbeats_under_either_secret_move_one_endpoint() {
    let mut broker = Broker::new(false);
    let (current, record) = (broker.tunnel, broker.tunnel.id);
    let next = footunnel::secret::TunnelIdentity::derive("the tunnel's next secret, long enough");
    footunnel::broker::dataplane::add_key(&mut broker.ebpf, next.id, next.sip_key(), None, record).unwrap();
    let t0 = now_ns();
    let under = |identity: footunnel::secret::TunnelIdentity, ts| {
        footunnel_ebpf::wire::ControlMessage::new(footunnel_ebpf::wire::Kind::Heartbeat, identity.id, ts, [0; 8])
            .sign(identity.sip_key())
            .to_bytes()
    };
    expect(
        &broker,
        "under the current secret",
        &to_fou(CLIENT, 40001, &under(current, t0)).build(),
        XDP_DROP,
        Some(Counter::Accepted),
    );
    expect(
        &broker,
        "under the next secret",
        &to_fou(CLIENT, 40002, &under(next, t0 + 10)).build(),
        XDP_DROP,
        Some(Counter::Accepted),
    );
    let e = broker.endpoint().unwrap();
    assert_eq!((e.port, e.key_id, e.heartbeats), (40002, next.id, 2));
    expect(
        &broker,
        "older, under the current secret",
        &to_fou(CLIENT, 40003, &under(current, t0 + 5)).build(),
        XDP_DROP,
        Some(Counter::Replay),
    );
    let events = broker.events();
    assert_eq!(events.iter().map(|e| e.record_id).collect::<Vec<_>>(), [record; 3], "events carry the record");
    // The refused one's notice names the secret it used, for TIME's key.
    assert_eq!((events[2].kind, events[2].key_id()), (EVENT_STALE, current.id));
}

const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const BROKER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn to_fou6(src: [u8; 16], sport: u16, payload: &[u8]) -> Udp6 {
    Udp6::new(src, sport, BROKER6, FOU_PORT, payload)
}

/// The same acceptance rules over IPv6, through XDP and TC, with extension
/// headers walked up to the limit and the rest counted.
#[test]
fn ipv6_control_messages_are_verified_by_every_rule_and_extension_headers_are_walked() {
    let mut broker = Broker::new(false);
    let t0 = now_ns();
    let behind = |n: usize, payload: &[u8]| Udp6 {
        extensions: vec![Udp6::destination_options(); n],
        ..to_fou6(CLIENT6, 40001, payload)
    };
    expect(
        &broker,
        "valid heartbeat over IPv6",
        &to_fou6(CLIENT6, 40001, &broker.heartbeat(t0)).build(),
        XDP_DROP,
        Some(Counter::Accepted),
    );
    let ep = broker.endpoint().unwrap();
    assert_eq!((ep.addr.0, ep.port, ep.changes), (CLIENT6, 40001, 1));
    let e = broker.events();
    assert_eq!((e[0].kind, e[0].addr.0, e[0].port, e[0].dst_addr.0), (EVENT_HEARTBEAT, CLIENT6, 40001, BROKER6));

    let mut forged = broker.heartbeat(t0 + 1);
    forged[39] ^= 0x40;
    for (what, frame, counter) in [
        ("wrong tag", to_fou6(CLIENT6, 5555, &forged).build(), Counter::BadTag),
        ("replayed", to_fou6(CLIENT6, 5555, &broker.heartbeat(t0)).build(), Counter::Replay),
        ("stale", to_fou6(CLIENT6, 5555, &broker.heartbeat(t0 - WINDOW_NS - 1_000_000_000)).build(), Counter::Stale),
        ("39 bytes", to_fou6(CLIENT6, 5555, &broker.heartbeat(t0 + 2)[..39]).build(), Counter::Malformed),
    ] {
        expect(&broker, what, &frame, XDP_DROP, Some(counter));
    }
    assert_eq!(broker.endpoint().unwrap(), ep, "a rejected heartbeat moved the endpoint");

    // Four extension headers are walked; a fifth is not, and is counted.
    expect(
        &broker,
        "4 extension headers",
        &behind(4, &broker.heartbeat(t0 + 3)).build(),
        XDP_DROP,
        Some(Counter::Accepted),
    );
    expect(
        &broker,
        "5 extension headers",
        &behind(5, &broker.heartbeat(t0 + 4)).build(),
        XDP_PASS,
        Some(Counter::Ipv6Unwalked),
    );
    let fragment =
        Udp6 { extensions: vec![(44, vec![0, 0, 0, 1, 0, 0, 0, 9])], ..to_fou6(CLIENT6, 1, &broker.heartbeat(t0 + 5)) };
    expect(&broker, "first fragment", &fragment.build(), XDP_PASS, Some(Counter::Fragment));
    let mut long = to_fou6(CLIENT6, 1, &broker.heartbeat(t0 + 6)).build();
    long[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&900u16.to_be_bytes());
    expect(&broker, "UDP longer than the IPv6 payload", &long, XDP_PASS, Some(Counter::IpMalformed));

    // Data from the endpoint passes; from elsewhere it is observed, with
    // the 128-bit source, and announced.
    broker.events();
    expect(
        &broker,
        "data from the endpoint",
        &behind(1, &inner([10, 0, 0, 2])).build(),
        XDP_PASS,
        Some(Counter::FouData),
    );
    let mut elsewhere = CLIENT6;
    elsewhere[15] = 6;
    let before = broker.count(Counter::FouElsewhere);
    assert_eq!(broker.xdp(&to_fou6(elsewhere, 40001, &inner([10, 0, 0, 2])).build()), XDP_PASS);
    assert_eq!(broker.count(Counter::FouElsewhere), before + 1);
    let e = broker.events();
    assert_eq!((e[0].kind, e[0].addr.0, e[0].port), (EVENT_OBSERVED, elsewhere, 40001));

    // The TC entry point takes the same path.
    assert_eq!(broker.tc(&behind(2, &broker.heartbeat(t0 + 7)).build()), TC_ACT_SHOT);
    let mut moved = CLIENT6;
    moved[0] = 0x3f;
    assert_eq!(broker.tc(&to_fou6(moved, 40002, &broker.heartbeat(t0 + 8)).build()), TC_ACT_SHOT);
    assert_eq!(broker.endpoint().map(|e| (e.addr.0, e.port)), Some((moved, 40002)), "all 128 bits recorded");
}

#[test]
fn a_control_message_of_no_known_tunnel_passes_when_it_is_another_hosts() {
    let mut broker = Broker::new(false);
    // The tunnel's link at the broker's address, not "any".
    {
        let mut addrs: aya::maps::HashMap<_, footunnel_ebpf::packet::Addr, u32> =
            aya::maps::HashMap::try_from(broker.ebpf.map_mut(footunnel_ebpf::maps::LOCAL_ADDRS).unwrap()).unwrap();
        addrs.remove(&footunnel_ebpf::packet::UNSPECIFIED).unwrap();
    }
    footunnel::broker::dataplane::add_tunnel_address(&mut broker.ebpf, Some(std::net::Ipv4Addr::from(BROKER).into()))
        .unwrap();
    let unknown =
        footunnel_ebpf::wire::ControlMessage::new(footunnel_ebpf::wire::Kind::Heartbeat, 0xdead, now_ns(), [0; 8])
            .sign(broker.tunnel.sip_key())
            .to_bytes();
    let transit = Udp4::new(CLIENT, 40001, [192, 0, 2, 200], FOU_PORT, &unknown).build();
    expect(&broker, "to another host", &transit, XDP_PASS, Some(Counter::WrongDestination));
    expect(&broker, "to the broker", &to_fou(CLIENT, 40001, &unknown).build(), XDP_DROP, Some(Counter::UnknownTunnel));
}
