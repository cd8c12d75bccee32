//! The packet path against an in-memory [`Env`]; the same cases run on the
//! real program in the kernel in `tests/host`.

use std::{cell::RefCell, collections::HashMap};

use super::*;
use crate::{
    maps::{CachedEndpoint, Event, PORT_FOU, TunnelConfig, inner_prefix},
    packet::mapped,
    siphash::SipKey,
    wire::ControlMessage,
};

pub(crate) const KEY: SipKey = SipKey { k0: 0x0706050403020100, k1: 0x0f0e0d0c0b0a0908 };
pub(crate) const ID: u64 = 0xfeed_0000_0000_0001;
pub(crate) const BOOT: u64 = 1_000_000_000;
pub(crate) const OFFSET: u64 = 1_790_000_000_000_000_000;
pub(crate) const NOW: u64 = BOOT + OFFSET;
pub(crate) const CLIENT: [u8; 4] = [203, 0, 113, 5];
pub(crate) const BROKER: [u8; 4] = [198, 51, 100, 1];

/// What `trace_control` was told: (source port, outcome, verdict).
type Trace = (u16, Result<Kind, Counter>, Verdict);

#[derive(Default)]
pub(crate) struct MemEnv {
    ports: HashMap<u16, PortConfig>,
    tunnels: HashMap<u64, TunnelConfig>,
    endpoints: RefCell<HashMap<u64, Endpoint>>,
    v4: Vec<([u8; 4], u32, u64)>,
    legacy: HashMap<Vec<u8>, u64>,
    observed: RefCell<HashMap<u64, Observed>>,
    clock_notices: RefCell<HashMap<u64, u64>>,
    probe_budgets: RefCell<HashMap<u64, u64>>,
    counters: RefCell<HashMap<&'static str, u64>>,
    events: RefCell<Vec<Event>>,
    boot: std::cell::Cell<u64>,
    cache: RefCell<HashMap<u32, CachedEndpoint>>,
    /// Every state a cache slot passed through, as another CPU could read it.
    cache_states: RefCell<Vec<CachedEndpoint>>,
    /// SETTINGS as nobody has written it: all zero.
    unconfigured: std::cell::Cell<bool>,
    /// In-place observed updates (no hash update).
    observed_touches: RefCell<u64>,
    /// Hash updates of OBSERVED.
    observed_writes: RefCell<u64>,
    /// Another CPU holds every endpoint's lock.
    busy: std::cell::Cell<bool>,
    /// Another CPU accepts a heartbeat with this timestamp between our
    /// lock-free check and our taking the lock.
    accepted_meanwhile: std::cell::Cell<Option<u64>>,
    /// Lookups of ENDPOINTS.
    endpoint_reads: std::cell::Cell<u64>,
    /// Reads of the clock.
    clock_reads: std::cell::Cell<u64>,
    /// Shared-device mode, leaving by this uplink.
    pub(crate) shared_uplink: std::cell::Cell<u32>,
    traces: RefCell<Vec<Trace>>,
}

impl MemEnv {
    /// A copy, so a test can hold it while the path runs (the trait's
    /// reference borrows the map).
    pub(crate) fn endpoint(&self, id: u64) -> Option<Endpoint> {
        self.endpoints.borrow().get(&id).copied()
    }
}

impl Env for MemEnv {
    fn port(&self, port: u16) -> Option<PortConfig> {
        self.ports.get(&port).copied()
    }
    fn cached_endpoint(&self, slot: u32) -> CachedEndpoint {
        self.cache.borrow().get(&slot).copied().unwrap_or_default()
    }
    fn store_cache_entry(&self, slot: u32, entry: u64) {
        let mut cache = self.cache.borrow_mut();
        let c = cache.entry(slot).or_default();
        c.entry = entry;
        self.cache_states.borrow_mut().push(*c);
    }
    fn store_cache_prefix(&self, slot: u32, net: u32, mask: u32) {
        let mut cache = self.cache.borrow_mut();
        let c = cache.entry(slot).or_default();
        (c.inner_net, c.inner_mask) = (net, mask);
        self.cache_states.borrow_mut().push(*c);
    }
    fn settings(&self) -> Settings {
        if self.unconfigured.get() {
            return Settings::default();
        }
        Settings {
            realtime_offset_ns: OFFSET,
            window_ns: 120_000_000_000,
            observe_interval_ns: 1_000_000_000,
            shared_uplink: self.shared_uplink.get(),
            shared_port: 42424,
            _pad: 0,
        }
    }
    fn boot_ns(&self) -> u64 {
        self.clock_reads.set(self.clock_reads.get() + 1);
        self.boot.get()
    }
    fn tunnel(&self, id: u64) -> Option<&TunnelConfig> {
        self.tunnels.get(&id)
    }
    fn tunnel_address(&self, addr: &Addr) -> bool {
        self.tunnels.values().any(|t| t.local == *addr || t.local == crate::packet::UNSPECIFIED)
    }
    type EndpointRef<'a> = std::cell::Ref<'a, Endpoint>;
    fn endpoint(&self, id: u64) -> Option<std::cell::Ref<'_, Endpoint>> {
        self.endpoint_reads.set(self.endpoint_reads.get() + 1);
        std::cell::Ref::filter_map(self.endpoints.borrow(), |m| m.get(&id)).ok()
    }
    type LockedEndpoint<'a> = std::cell::RefMut<'a, Endpoint>;
    fn lock_endpoint(&self, id: u64) -> Option<std::cell::RefMut<'_, Endpoint>> {
        if self.busy.get() {
            return None;
        }
        if let Some(ts) = self.accepted_meanwhile.take() {
            self.endpoints.borrow_mut().entry(id).or_default().last_timestamp_ns = ts;
        }
        Some(std::cell::RefMut::map(self.endpoints.borrow_mut(), |m| m.entry(id).or_default()))
    }
    fn tunnel_by_v4(&self, src: [u8; 4]) -> Option<PrefixOwner> {
        let bits = u32::from_be_bytes(src);
        self.v4
            .iter()
            .filter(|(p, len, _)| *len == 0 || bits >> (32 - len) == u32::from_be_bytes(*p) >> (32 - len))
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, len, id)| {
                let local = self.tunnels.values().find(|t| t.record == *id).map_or(UNSPECIFIED, |t| t.local);
                PrefixOwner::new(*id, *len as u8, local)
            })
    }
    fn tunnel_by_v6(&self, _src: [u8; 16]) -> Option<PrefixOwner> {
        None
    }
    fn tunnel_by_legacy(&self, s: &LegacySecret) -> Option<u64> {
        self.legacy.get(&s.bytes[..s.len as usize]).copied()
    }
    fn observed(&self, id: u64) -> Option<Observed> {
        self.observed.borrow().get(&id).copied()
    }
    fn touch_observed(&self, id: u64, now: u64) {
        if let Some(o) = self.observed.borrow_mut().get_mut(&id) {
            o.packets += 1;
            o.last_seen_ns = now;
        }
        *self.observed_touches.borrow_mut() += 1;
    }
    fn set_observed(&self, id: u64, o: &Observed) {
        *self.observed_writes.borrow_mut() += 1;
        self.observed.borrow_mut().insert(id, *o);
    }
    fn last_clock_notice(&self, id: u64) -> u64 {
        self.clock_notices.borrow().get(&id).copied().unwrap_or(0)
    }
    fn set_clock_notice(&self, id: u64, now: u64) {
        self.clock_notices.borrow_mut().insert(id, now);
    }
    fn probe_budget(&self, id: u64) -> u64 {
        self.probe_budgets.borrow().get(&id).copied().unwrap_or(0)
    }
    fn set_probe_budget(&self, id: u64, full_at: u64) {
        self.probe_budgets.borrow_mut().insert(id, full_at);
    }
    fn count(&self, c: Counter) {
        *self.counters.borrow_mut().entry(c.name()).or_default() += 1;
    }
    fn trace_control(&self, udp: &Udp, outcome: Result<Kind, Counter>, verdict: Verdict) {
        self.traces.borrow_mut().push((udp.src_port, outcome, verdict));
    }
    fn emit(&self, kind: u8, record_id: u64, timestamp_ns: u64, detail: [u8; 8], extra: [u8; 4], udp: &Udp) -> bool {
        let (addr, dst_addr, port) = (udp.src_addr, udp.dst_addr, udp.src_port);
        self.events.borrow_mut().push(Event {
            record_id,
            timestamp_ns,
            detail,
            addr,
            dst_addr,
            port,
            kind,
            extra,
            ..Default::default()
        });
        true
    }
}

pub(crate) fn env() -> MemEnv {
    let env = MemEnv {
        ports: [(42424, PortConfig { kind: PORT_FOU }), (42425, PortConfig { kind: PORT_LEGACY })].into(),
        tunnels: [(ID, TunnelConfig::new(ID, KEY, mapped(BROKER), ID))].into(),
        v4: vec![([10, 0, 0, 0], 30, ID)],
        legacy: [(b"SECRET".to_vec(), ID)].into(),
        ..Default::default()
    };
    env.boot.set(BOOT);
    env
}

pub(crate) fn udp(src: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&BROKER);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

pub(crate) fn heartbeat(ts: u64) -> [u8; 40] {
    ControlMessage::new(Kind::Heartbeat, ID, ts, [0; 8]).sign(KEY).to_bytes()
}

/// A PROBE of `len` bytes asking for `mtu`, padded with zeros.
pub(crate) fn probe_of(ts: u64, len: u16, mtu: u16) -> Vec<u8> {
    let p = Probe { len, mtu };
    let mut bytes = vec![0; usize::from(len)];
    assert!(p.write(&ControlMessage::new(Kind::Probe, ID, ts, p.detail()).sign(KEY), &mut bytes));
    bytes
}

pub(crate) fn inner_v4(src: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&[10, 0, 0, 1]);
    p
}

pub(crate) fn count(env: &MemEnv, c: Counter) -> u64 {
    env.counters.borrow().get(c.name()).copied().unwrap_or(0)
}

#[test]
fn valid_heartbeat_records_the_endpoint_and_is_dropped() {
    let env = env();
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env), Verdict::Drop);
    let ep = env.endpoint(ID).expect("endpoint recorded");
    assert_eq!((ep.addr, ep.port, ep.last_timestamp_ns, ep.heartbeats, ep.changes), (mapped(CLIENT), 40001, NOW, 1, 1));
    assert_eq!(count(&env, Counter::Accepted), 1);
    let events = env.events.borrow();
    assert_eq!((events[0].kind, events[0].record_id, events[0].port), (EVENT_HEARTBEAT, ID, 40001));
}

#[test]
fn a_new_port_is_a_change_and_a_replay_is_not_accepted() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    process(&udp(CLIENT, 40002, 42424, &heartbeat(NOW + 1))[..], &env);
    let ep = env.endpoint(ID).unwrap();
    assert_eq!((ep.port, ep.changes, ep.heartbeats), (40002, 2, 2));
    // Replaying the first from yet another port changes nothing.
    assert_eq!(process(&udp(CLIENT, 40003, 42424, &heartbeat(NOW))[..], &env), Verdict::Drop);
    assert_eq!(env.endpoint(ID).unwrap(), ep);
    assert_eq!(count(&env, Counter::Replay), 1);
}

#[test]
fn a_heartbeat_overtaken_on_another_cpu_is_refused_under_the_lock() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    // NOW + 2 passes the lock-free check, but NOW + 5 from elsewhere wins first.
    env.accepted_meanwhile.set(Some(NOW + 5));
    assert_eq!(process(&udp(CLIENT, 40009, 42424, &heartbeat(NOW + 2))[..], &env), Verdict::Drop);
    let ep = env.endpoint(ID).unwrap();
    assert_eq!((ep.last_timestamp_ns, ep.port), (NOW + 5, 40001), "the older heartbeat undid the newer");
    assert_eq!(count(&env, Counter::Replay), 1);
    assert_eq!(count(&env, Counter::Accepted), 1);
}

#[test]
fn a_heartbeat_that_finds_its_tunnel_locked_is_counted_busy_and_changes_nothing() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    env.busy.set(true);
    assert_eq!(process(&udp(CLIENT, 40002, 42424, &heartbeat(NOW + 1))[..], &env), Verdict::Drop);
    assert_eq!(env.endpoint(ID).unwrap().port, 40001);
    assert_eq!(count(&env, Counter::Busy), 1);
    assert_eq!(env.events.borrow().len(), 1, "no event for a heartbeat that was not stored");
}

#[test]
fn rejected_control_messages_are_dropped_and_counted() {
    let env = env();
    let mut forged = heartbeat(NOW);
    forged[39] ^= 1;
    let stale = heartbeat(NOW - 200_000_000_000);
    let mut unknown = ControlMessage::new(Kind::Heartbeat, ID + 1, NOW, [0; 8]).sign(KEY).to_bytes();
    unknown[0] = 0xF7;
    for (payload, reason) in [
        (&forged[..], Counter::BadTag),
        (&stale[..], Counter::Stale),
        (&unknown[..], Counter::UnknownTunnel),
        (&heartbeat(NOW)[..39], Counter::Malformed),
    ] {
        assert_eq!(process(&udp(CLIENT, 1, 42424, payload)[..], &env), Verdict::Drop);
        assert_eq!(count(&env, reason), 1, "{reason:?}");
    }
    assert!(env.endpoints.borrow().is_empty());
}

#[test]
fn the_trace_sees_each_control_message_once_with_its_reason_and_verdict() {
    let env = env();
    let mut forged = heartbeat(NOW);
    forged[39] ^= 1;
    let mut unknown = ControlMessage::new(Kind::Heartbeat, ID + 1, NOW, [0; 8]).sign(KEY).to_bytes();
    unknown[0] = 0xF7;
    process(&udp(CLIENT, 1, 42424, &heartbeat(NOW))[..], &env);
    process(&udp(CLIENT, 2, 42424, &forged)[..], &env);
    process(&udp(CLIENT, 3, 42424, &probe_of(NOW, 1400, 1400))[..], &env);
    process(&to(udp(CLIENT, 4, 42424, &unknown), [192, 0, 2, 200])[..], &env);
    process(&udp(CLIENT, 5, 42424, &inner_v4([10, 0, 0, 2]))[..], &env);
    process(&udp(CLIENT, 6, 42424, &heartbeat(NOW))[..], &env);
    assert_eq!(
        *env.traces.borrow(),
        [
            (1, Ok(Kind::Heartbeat), Verdict::Drop),
            (2, Err(Counter::BadTag), Verdict::Drop),
            (3, Ok(Kind::Probe), Verdict::Drop),
            (4, Err(Counter::UnknownTunnel), Verdict::Pass),
            (6, Err(Counter::Replay), Verdict::Drop),
        ],
        "FoU data (port 5) is no control message"
    );
}

#[test]
fn fou_data_from_elsewhere_is_observed_once_per_interval() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]))[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::FouData), 1);
    let elsewhere = udp([192, 0, 2, 99], 5555, 42424, &inner_v4([10, 0, 0, 2]));
    for _ in 0..3 {
        assert_eq!(process(&elsewhere[..], &env), Verdict::Pass);
    }
    assert_eq!((count(&env, Counter::FouElsewhere), count(&env, Counter::ObservedEvents)), (3, 1));
    env.boot.set(BOOT + 1_000_000_000);
    process(&elsewhere[..], &env);
    assert_eq!(count(&env, Counter::ObservedEvents), 2);
    let o = env.observed(ID).unwrap();
    assert_eq!((o.addr, o.port, o.packets), (mapped([192, 0, 2, 99]), 5555, 4));
    assert_eq!(env.endpoint(ID).unwrap().port, 40001, "data never moves the endpoint");
    assert_eq!(process(&udp(CLIENT, 1, 42424, &inner_v4([172, 16, 0, 1]))[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::FouUnmatched), 1);
}

/// `frame` with its IPv4 destination replaced (the header checksum is not
/// checked on this path).
fn to(mut frame: Vec<u8>, dst: [u8; 4]) -> Vec<u8> {
    frame[30..34].copy_from_slice(&dst);
    frame
}

#[test]
fn control_messages_and_data_to_another_address_are_not_the_tunnels() {
    let env = env();
    let transit = to(udp(CLIENT, 40001, 42424, &heartbeat(NOW)), [192, 0, 2, 200]);
    assert_eq!(process(&transit[..], &env), Verdict::Pass, "a router's transit traffic is passed on");
    assert_eq!(count(&env, Counter::WrongDestination), 1);
    assert!(env.endpoint(ID).is_none(), "a heartbeat to another address moved the endpoint");
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    let data = to(udp([192, 0, 2, 99], 5555, 42424, &inner_v4([10, 0, 0, 2])), [192, 0, 2, 200]);
    assert_eq!(process(&data[..], &env), Verdict::Pass);
    assert_eq!((count(&env, Counter::WrongDestination), count(&env, Counter::ObservedEvents)), (2, 0));
    let events = env.events.borrow();
    assert_eq!(events[0].dst_addr, mapped(BROKER), "answers must leave from the address the heartbeat was sent to");
}

#[test]
fn unwritten_settings_fail_closed() {
    let env = env();
    env.unconfigured.set(true);
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env), Verdict::Drop);
    assert!(env.endpoint(ID).is_none());
    assert_eq!(count(&env, Counter::Unconfigured), 1);
    process(&udp([192, 0, 2, 99], 5555, 42424, &inner_v4([10, 0, 0, 2]))[..], &env);
    assert_eq!(count(&env, Counter::ObservedEvents), 0, "no event per packet with a zero interval");
}

#[test]
fn a_flood_from_unexpected_sources_updates_the_observed_entry_in_place() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    for port in 0..100u16 {
        process(&udp([192, 0, 2, 99], 10_000 + port, 42424, &inner_v4([10, 0, 0, 2]))[..], &env);
    }
    assert_eq!(*env.observed_writes.borrow(), 1, "one hash update per interval, not one per packet");
    assert_eq!(*env.observed_touches.borrow(), 99);
    let o = env.observed(ID).unwrap();
    assert_eq!((o.port, o.packets), (10_000, 100));
}

#[test]
fn fou_payloads_shorter_than_an_ip_header_are_not_read_past_their_end() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    // 16 bytes of "IPv4" then Ethernet padding that would hold the inner source.
    let mut frame = udp([192, 0, 2, 99], 5555, 42424, &inner_v4([10, 0, 0, 2])[..16]);
    frame.extend_from_slice(&[10, 0, 0, 2, 0, 0]);
    assert_eq!(process(&frame[..], &env), Verdict::Pass);
    assert_eq!((count(&env, Counter::NotFou), count(&env, Counter::FouElsewhere)), (1, 0));
}

#[test]
fn fragments_and_malformed_datagrams_to_a_watched_port_are_counted() {
    let env = env();
    let mut first = udp(CLIENT, 40001, 42424, &heartbeat(NOW));
    first[20] = 0x20; // more fragments, offset 0
    assert_eq!(process(&first[..], &env), Verdict::Pass);
    let mut later = first.clone();
    later[21] = 0x10; // offset 16: no UDP header here
    process(&later[..], &env);
    let mut unwatched = first.clone();
    unwatched[36..38].copy_from_slice(&9999u16.to_be_bytes());
    process(&unwatched[..], &env);
    assert_eq!(count(&env, Counter::Fragment), 1);
    let mut malformed = udp(CLIENT, 40001, 42424, &heartbeat(NOW));
    malformed[38..40].copy_from_slice(&500u16.to_be_bytes()); // UDP length beyond the IP packet
    assert_eq!(process(&malformed[..], &env), Verdict::Pass);
    let mut one_beyond = udp(CLIENT, 40001, 42424, &heartbeat(NOW));
    one_beyond[38..40].copy_from_slice(&49u16.to_be_bytes()); // one byte beyond the IP packet
    process(&one_beyond[..], &env);
    let mut short = malformed.clone();
    short[38..40].copy_from_slice(&4u16.to_be_bytes()); // shorter than its own header
    process(&short[..], &env);
    let mut no_room = udp(CLIENT, 40001, 42424, &heartbeat(NOW));
    no_room[16..18].copy_from_slice(&16u16.to_be_bytes()); // IP total length below its header's
    process(&no_room[..], &env);
    assert_eq!(count(&env, Counter::IpMalformed), 4);
    assert!(env.endpoint(ID).is_none());
}

#[test]
fn legacy_secret_records_address_and_port() {
    let env = env();
    assert_eq!(process(&udp(CLIENT, 42424, 42425, b"SECRET")[..], &env), Verdict::Drop);
    assert_eq!(env.endpoint(ID).map(|e| (e.addr, e.port)), Some((mapped(CLIENT), 42424)));
    assert_eq!(process(&udp(CLIENT, 42424, 42425, b"SECRETS")[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::LegacyUnknown), 1);
}

#[test]
fn unrelated_traffic_passes_untouched() {
    let env = env();
    assert_eq!(process(&udp(CLIENT, 1, 53, &heartbeat(NOW))[..], &env), Verdict::Pass);
    assert!(env.counters.borrow().is_empty() && env.endpoints.borrow().is_empty());
}

#[test]
fn the_endpoint_cache_serves_data_from_the_endpoint_and_forgets_a_moved_one() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    let data = udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]));
    process(&data[..], &env);
    assert!(env.cache.borrow().values().any(|e| e.entry != 0), "the first packet fills the cache");
    process(&udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 3]))[..], &env);
    assert_eq!(count(&env, Counter::FouData), 2, "another source in the prefix is served from the cache");
    // A hit needs the inner source in the tunnel's prefix too: from the
    // endpoint, an inner source that is nobody's is still noticed.
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &inner_v4([172, 16, 0, 1]))[..], &env), Verdict::Pass);
    assert_eq!((count(&env, Counter::FouData), count(&env, Counter::FouUnmatched)), (2, 1));
    // The endpoint moves: data from the old source is noticed again.
    process(&udp(CLIENT, 40002, 42424, &heartbeat(NOW + 1))[..], &env);
    process(&data[..], &env);
    assert_eq!(count(&env, Counter::FouElsewhere), 1);
}

/// `frame` (from [`udp`]) with four bytes of IPv4 options.
fn with_ip_options(mut frame: Vec<u8>, options: [u8; 4]) -> Vec<u8> {
    frame.splice(34..34, options);
    frame[14] = 0x46;
    let total = u16::from_be_bytes([frame[16], frame[17]]) + 4;
    frame[16..18].copy_from_slice(&total.to_be_bytes());
    frame
}

#[test]
fn a_cache_hit_reads_no_endpoint_and_an_outer_header_with_options_takes_the_general_path() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    process(&udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]))[..], &env);
    let reads = env.endpoint_reads.get();
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 3]))[..], &env), Verdict::Pass);
    assert_eq!(env.endpoint_reads.get(), reads, "served by the cache");
    let optioned = with_ip_options(udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 3])), [1; 4]);
    assert_eq!(process(&optioned[..], &env), Verdict::Pass);
    assert!(env.endpoint_reads.get() > reads, "checked against the endpoint itself");
    assert_eq!(count(&env, Counter::FouData), 3, "the same counter either way");
    // Options that would pass for a UDP header to the FoU port, in front of
    // a real one from port 48: the heartbeat is read from the real one.
    let decoy = [0x9c, 0x41, 0xa5, 0xb8]; // 40001 → 42424
    let heartbeat_behind = with_ip_options(udp(CLIENT, 48, 42424, &heartbeat(NOW + 1)), decoy);
    let mut forged = heartbeat_behind.clone();
    *forged.last_mut().unwrap() ^= 1;
    assert_eq!(process(&forged[..], &env), Verdict::Drop);
    assert_eq!(count(&env, Counter::BadTag), 1);
    assert_eq!(process(&heartbeat_behind[..], &env), Verdict::Drop);
    assert_eq!(count(&env, Counter::Accepted), 2, "a heartbeat behind IPv4 options is accepted too");
    assert_eq!(env.endpoint(ID).unwrap().port, 48);
}

#[test]
fn a_legacy_secret_that_looks_like_fou_data_from_the_endpoint_is_still_a_legacy_heartbeat() {
    let mut env = env();
    let secret = inner_v4([10, 0, 0, 2]);
    env.legacy.insert(secret.clone(), ID);
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    process(&udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]))[..], &env);
    assert!(env.cache.borrow().values().any(|e| e.entry != 0), "the endpoint is cached");
    assert_eq!(process(&udp(CLIENT, 40001, 42425, &secret)[..], &env), Verdict::Drop);
    assert_eq!(count(&env, Counter::LegacyAccepted), 1);
}

#[test]
fn a_cache_slot_taken_over_never_admits_the_old_endpoint_from_the_new_prefix() {
    let env = env();
    let old = CachedEndpoint { entry: 7, inner_net: u32::from_ne_bytes([10, 0, 0, 0]), inner_mask: u32::MAX };
    let (inner_net, inner_mask) = inner_prefix([10, 9, 0, 0], 16);
    let new = CachedEndpoint { entry: 8, inner_net, inner_mask };
    write_cache_slot(&env, 3, old);
    env.cache_states.borrow_mut().clear();
    write_cache_slot(&env, 3, new);
    let states = env.cache_states.borrow();
    assert_eq!(states.last(), Some(&new));
    for s in states.iter() {
        assert!(!s.admits(old.entry, [10, 9, 0, 1]), "the old endpoint admitted from the new prefix: {s:?}");
        assert!(!s.admits(new.entry, [10, 0, 0, 0]), "the new endpoint admitted from the old prefix: {s:?}");
    }
}

#[test]
fn the_cache_admits_exactly_the_prefix_that_matched() {
    let (net, mask) = inner_prefix([10, 0, 0, 2], 30);
    let c = CachedEndpoint { entry: 7, inner_net: net, inner_mask: mask };
    assert!(c.admits(7, [10, 0, 0, 0]) && c.admits(7, [10, 0, 0, 3]));
    assert!(!c.admits(7, [10, 0, 0, 4]) && !c.admits(7, [11, 0, 0, 1]));
    assert!(!c.admits(8, [10, 0, 0, 1]), "another source");
    let (net, mask) = inner_prefix([10, 0, 0, 2], 0);
    assert!(CachedEndpoint { entry: 7, inner_net: net, inner_mask: mask }.admits(7, [192, 0, 2, 1]), "/0 admits all");
}

#[test]
fn during_a_key_rotation_either_secret_moves_one_endpoint_under_one_timestamp_rule() {
    const NEXT_KEY: SipKey = SipKey { k0: 0x1111, k1: 0x2222 };
    const NEXT_ID: u64 = 0xfeed_0000_0000_0002;
    let mut env = env();
    env.tunnels.insert(NEXT_ID, TunnelConfig::new(NEXT_ID, NEXT_KEY, mapped(BROKER), ID));
    let under_next = |ts| ControlMessage::new(Kind::Heartbeat, NEXT_ID, ts, [0; 8]).sign(NEXT_KEY).to_bytes();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    assert_eq!(env.endpoint(ID).unwrap().key_id, ID);
    assert_eq!(process(&udp(CLIENT, 40002, 42424, &under_next(NOW + 10))[..], &env), Verdict::Drop);
    let ep = env.endpoint(ID).unwrap();
    assert_eq!((ep.port, ep.key_id, ep.heartbeats), (40002, NEXT_ID, 2), "one endpoint, now under the next key");
    assert!(env.endpoint(NEXT_ID).is_none(), "the next key has no endpoint of its own");
    // Under the old key, an older timestamp is a replay: the rule spans both secrets.
    process(&udp(CLIENT, 40003, 42424, &heartbeat(NOW + 5))[..], &env);
    assert_eq!((env.endpoint(ID).unwrap().port, count(&env, Counter::Replay)), (40002, 1));
    // The next key's tag does not pass under the current key's id.
    let forged = ControlMessage::new(Kind::Heartbeat, ID, NOW + 20, [0; 8]).sign(NEXT_KEY).to_bytes();
    process(&udp(CLIENT, 40004, 42424, &forged)[..], &env);
    assert_eq!(count(&env, Counter::BadTag), 1);
    let events = env.events.borrow();
    assert_eq!(events.last().unwrap().record_id, ID, "events name the record (its endpoint names the key)");
}

#[test]
fn a_forged_heartbeat_is_refused_before_the_clock_is_read_or_the_endpoint_looked_up() {
    let env = env();
    for ts in [NOW, NOW - 200_000_000_000] {
        let mut forged = heartbeat(ts);
        forged[39] ^= 1;
        assert_eq!(process(&udp(CLIENT, 40001, 42424, &forged)[..], &env), Verdict::Drop);
    }
    assert_eq!(count(&env, Counter::BadTag), 2, "fresh or stale, a forgery is a forgery");
    assert_eq!((env.clock_reads.get(), env.endpoint_reads.get()), (0, 0));
}

#[test]
fn a_stale_heartbeat_is_refused_before_any_endpoint_lookup() {
    let env = env();
    let stale = heartbeat(NOW - 200_000_000_000);
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &stale)[..], &env), Verdict::Drop);
    assert_eq!((count(&env, Counter::Stale), env.endpoint_reads.get()), (1, 0));
    let unknown = ControlMessage::new(Kind::Heartbeat, 0xdead, NOW, [0; 8]).sign(KEY).to_bytes();
    process(&udp(CLIENT, 40001, 42424, &unknown)[..], &env);
    assert_eq!((count(&env, Counter::UnknownTunnel), env.endpoint_reads.get()), (1, 0));
}

#[test]
fn a_control_message_of_no_known_tunnel_to_another_host_is_transit() {
    let env = env();
    let unknown = ControlMessage::new(Kind::Heartbeat, 0xdead, NOW, [0; 8]).sign(KEY).to_bytes();
    let mut bad_version = heartbeat(NOW);
    bad_version[0] = 0xf9;
    for payload in [&unknown[..], &bad_version[..], &[0xf0u8; 12][..]] {
        let transit = to(udp(CLIENT, 40001, 42424, payload), [192, 0, 2, 200]);
        assert_eq!(process(&transit[..], &env), Verdict::Pass, "another host's datagram was dropped");
        assert_eq!(process(&udp(CLIENT, 40001, 42424, payload)[..], &env), Verdict::Drop, "to the broker: dropped");
    }
    assert_eq!(count(&env, Counter::WrongDestination), 3);
    assert_eq!(
        count(&env, Counter::UnknownTunnel) + count(&env, Counter::BadVersion) + count(&env, Counter::Malformed),
        3
    );
}

#[test]
fn in_shared_mode_plain_ip_in_ip_and_fou_first_fragments_are_dropped() {
    let env = env();
    // Plain IP-in-IP: the external-mode device takes it as well as FoU.
    let mut ipip = udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]));
    ipip[23] = 4;
    let mut first = udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]));
    first[20] = 0x20; // more fragments, offset 0
    let mut later = first.clone();
    later[21] = 0x10; // no UDP header: nothing is reassembled without the first
    let mut unwatched = first.clone();
    unwatched[36..38].copy_from_slice(&9999u16.to_be_bytes());
    for f in [&ipip, &first, &later, &unwatched] {
        assert_eq!(process(&f[..], &env), Verdict::Pass, "per-link mode passes them");
    }
    env.shared_uplink.set(2);
    assert_eq!(process(&ipip[..], &env), Verdict::Drop);
    assert_eq!(process(&first[..], &env), Verdict::Drop);
    assert_eq!(process(&later[..], &env), Verdict::Pass);
    assert_eq!(process(&unwatched[..], &env), Verdict::Pass, "a fragment to another port is transit");
    assert_eq!(count(&env, Counter::Spoofed), 2);
}

#[test]
fn in_shared_mode_fou_data_from_anyone_but_the_endpoint_is_dropped_and_still_announced() {
    let env = env();
    env.shared_uplink.set(2);
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    let mut data = udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]));
    assert_eq!(process(&data[..], &env), Verdict::Pass, "the endpoint's own data");
    // Another client behind the same NAT address claims this tunnel's inner source.
    data = udp(CLIENT, 40999, 42424, &inner_v4([10, 0, 0, 2]));
    assert_eq!(process(&data[..], &env), Verdict::Drop);
    assert_eq!(process(&data[..], &env), Verdict::Drop, "between announcements too");
    assert_eq!(count(&env, Counter::Spoofed), 2);
    let events = env.events.borrow();
    assert_eq!(
        (events.last().unwrap().kind, events.last().unwrap().port),
        (EVENT_OBSERVED, 40999),
        "a challenge is due"
    );
    drop(events);
    // An inner source no tunnel owns would enter the shared device unchecked.
    let unowned = udp(CLIENT, 40001, 42424, &inner_v4([192, 168, 7, 7]));
    assert_eq!(process(&unowned[..], &env), Verdict::Drop);
    assert_eq!(count(&env, Counter::Spoofed), 3);
    // Sent to another of the broker's addresses, it would still reach the
    // shared device (its FoU listener takes them all).
    let elsewhere = to(udp(CLIENT, 40999, 42424, &inner_v4([10, 0, 0, 2])), [198, 51, 100, 77]);
    assert_eq!(process(&elsewhere[..], &env), Verdict::Drop);
    assert_eq!(count(&env, Counter::Spoofed), 4);
    // Per-link mode passes them all: the kernel's link lookup is its check.
    env.shared_uplink.set(0);
    assert_eq!(process(&data[..], &env), Verdict::Pass);
    assert_eq!(process(&unowned[..], &env), Verdict::Pass);
    assert_eq!(process(&elsewhere[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::Spoofed), 4);
}

pub(crate) const CLIENT6: Addr = Addr([0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
pub(crate) const CLIENT6_B: Addr = Addr([0x20, 0x01, 0x0d, 0xb8, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
pub(crate) const BROKER6: Addr = Addr([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/// An IPv6 tunnel: its link's local address is the broker's IPv6 one.
fn env6() -> MemEnv {
    let mut env = env();
    env.tunnels.insert(ID, TunnelConfig::new(ID, KEY, BROKER6, ID));
    env
}

/// Ethernet + IPv6 (+ `ext`: extension headers, next-header bytes filled in) + UDP.
pub(crate) fn udp6(src: Addr, sport: u16, dport: u16, ext: &[(u8, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
    let ext_len: usize = ext.iter().map(|(_, b)| b.len()).sum();
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext_len + 8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[ext.first().map_or(17, |e| e.0), 64]);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&BROKER6.0);
    for (i, (_, bytes)) in ext.iter().enumerate() {
        f.push(ext.get(i + 1).map_or(17, |e| e.0));
        f.extend_from_slice(&bytes[1..]);
    }
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn dstopts() -> (u8, Vec<u8>) {
    (60, vec![0, 0, 1, 4, 0, 0, 0, 0])
}

#[test]
fn a_heartbeat_over_ipv6_records_the_whole_address_and_moves_between_addresses_and_ports() {
    let env = env6();
    assert_eq!(process(&udp6(CLIENT6, 40001, 42424, &[], &heartbeat(NOW))[..], &env), Verdict::Drop);
    let ep = env.endpoint(ID).expect("endpoint recorded");
    assert_eq!((ep.addr, ep.port, ep.changes), (CLIENT6, 40001, 1));
    let e = env.events.borrow()[0];
    assert_eq!((e.kind, e.addr, e.port, e.dst_addr), (EVENT_HEARTBEAT, CLIENT6, 40001, BROKER6));
    // Behind a destination-options header, from another address and port.
    assert_eq!(process(&udp6(CLIENT6_B, 40002, 42424, &[dstopts()], &heartbeat(NOW + 1))[..], &env), Verdict::Drop);
    let ep = env.endpoint(ID).unwrap();
    assert_eq!((ep.addr, ep.port, ep.changes, ep.heartbeats), (CLIENT6_B, 40002, 2, 2));
    // Only the last byte differs: all 128 bits are compared.
    let mut near = CLIENT6_B;
    near.0[15] ^= 1;
    process(&udp6(near, 40002, 42424, &[], &heartbeat(NOW + 2))[..], &env);
    assert_eq!((env.endpoint(ID).unwrap().addr, env.endpoint(ID).unwrap().changes), (near, 3));
}

#[test]
fn forged_stale_and_replayed_heartbeats_over_ipv6_change_nothing() {
    let env = env6();
    process(&udp6(CLIENT6, 40001, 42424, &[], &heartbeat(NOW))[..], &env);
    let before = env.endpoint(ID).unwrap();
    let mut forged = heartbeat(NOW + 1);
    forged[39] ^= 1;
    for (payload, reason) in [
        (forged, Counter::BadTag),
        (heartbeat(NOW - 200_000_000_000), Counter::Stale),
        (heartbeat(NOW), Counter::Replay),
    ] {
        assert_eq!(process(&udp6(CLIENT6_B, 5555, 42424, &[], &payload)[..], &env), Verdict::Drop);
        assert_eq!(count(&env, reason), 1, "{reason:?}");
    }
    assert_eq!(env.endpoint(ID).unwrap(), before);
    // The accepted heartbeat, and one clock notice for the stale and the
    // replayed one together (a second apart at most).
    let kinds: Vec<u8> = env.events.borrow().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EVENT_HEARTBEAT, EVENT_STALE]);
}

#[test]
fn a_correctly_tagged_stale_heartbeat_draws_one_clock_notice_a_second() {
    let env = env();
    let two_days = 2 * 86_400 * 1_000_000_000;
    for _ in 0..5 {
        assert_eq!(process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW - two_days))[..], &env), Verdict::Drop);
    }
    let mut forged = heartbeat(NOW - two_days);
    forged[39] ^= 1;
    process(&udp(CLIENT, 40001, 42424, &forged)[..], &env);
    assert_eq!((count(&env, Counter::Stale), count(&env, Counter::BadTag)), (5, 1));
    let events = env.events.borrow().clone();
    assert_eq!(events.len(), 1, "one notice for five stale heartbeats within a second");
    let e = events[0];
    assert_eq!((e.kind, e.record_id, e.timestamp_ns, e.key_id()), (EVENT_STALE, ID, NOW - two_days, ID));
    assert_eq!((e.addr, e.port), (mapped(CLIENT), 40001));
    assert!(env.endpoint(ID).is_none(), "a stale heartbeat records nothing");
    // A second later, the next one is announced again.
    env.boot.set(env.boot.get() + 1_000_000_000);
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW - two_days + 1))[..], &env);
    assert_eq!(env.events.borrow().len(), 2);
}

#[test]
fn ipv6_to_another_address_or_behind_too_many_extension_headers_is_not_checked() {
    let env = env6();
    let mut transit = udp6(CLIENT6, 40001, 42424, &[], &heartbeat(NOW));
    transit[14 + 24 + 15] = 0x99;
    assert_eq!(process(&transit[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::WrongDestination), 1);
    let five: Vec<_> = (0..5).map(|_| dstopts()).collect();
    assert_eq!(process(&udp6(CLIENT6, 40001, 42424, &five, &heartbeat(NOW))[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::Ipv6Unwalked), 1);
    let fragment = (44, vec![0, 0, 0, 1, 0, 0, 0, 7]);
    assert_eq!(process(&udp6(CLIENT6, 40001, 42424, &[fragment], &heartbeat(NOW))[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::Fragment), 1);
    assert!(env.endpoint(ID).is_none());
}

#[test]
fn fou_data_over_ipv6_is_checked_against_the_endpoint_without_the_cache() {
    let env = env6();
    process(&udp6(CLIENT6, 40001, 42424, &[], &heartbeat(NOW))[..], &env);
    assert_eq!(process(&udp6(CLIENT6, 40001, 42424, &[], &inner_v4([10, 0, 0, 2]))[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::FouData), 1);
    assert!(env.cache.borrow().values().all(|c| c.entry == 0), "an IPv6 endpoint has no cache entry");
    assert_eq!(process(&udp6(CLIENT6_B, 40001, 42424, &[], &inner_v4([10, 0, 0, 2]))[..], &env), Verdict::Pass);
    assert_eq!((count(&env, Counter::FouElsewhere), count(&env, Counter::ObservedEvents)), (1, 1));
    let e = env.events.borrow()[1];
    assert_eq!((e.kind, e.addr, e.dst_addr), (EVENT_OBSERVED, CLIENT6_B, BROKER6));
}

#[test]
fn a_client_moving_from_ipv4_to_ipv6_leaves_no_cache_entry_behind() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    process(&udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]))[..], &env);
    assert!(env.cache.borrow().values().any(|c| c.entry != 0));
    let mut env = env;
    env.tunnels.insert(ID, TunnelConfig::new(ID, KEY, UNSPECIFIED, ID));
    process(&udp6(CLIENT6, 40001, 42424, &[], &heartbeat(NOW + 1))[..], &env);
    assert_eq!(env.endpoint(ID).unwrap().addr, CLIENT6);
    assert!(env.cache.borrow().values().all(|c| c.entry == 0), "the old IPv4 endpoint's entry survived");
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &inner_v4([10, 0, 0, 2]))[..], &env), Verdict::Pass);
    assert_eq!(count(&env, Counter::FouElsewhere), 1);
}

#[test]
fn a_verified_probe_is_announced_with_its_length_and_mtu_and_moves_nothing() {
    let env = env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    let before = env.endpoint(ID).unwrap();
    // From another port, with an older timestamp than the heartbeat: a
    // probe is under the freshness rule only, and records nothing.
    assert_eq!(process(&udp(CLIENT, 40009, 42424, &probe_of(NOW - 5, 1400, 1372))[..], &env), Verdict::Drop);
    assert_eq!(env.endpoint(ID).unwrap(), before);
    assert_eq!(count(&env, Counter::Probe), 1);
    let e = *env.events.borrow().last().unwrap();
    assert_eq!((e.kind, e.record_id, e.timestamp_ns, e.key_id(), e.port), (EVENT_PROBE, ID, NOW - 5, ID, 40009));
    assert_eq!(e.probe(), Probe { len: 1400, mtu: 1372 });
    // The smallest probe: no padding.
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &probe_of(NOW + 1, 40, 1400))[..], &env), Verdict::Drop);
    assert_eq!(count(&env, Counter::Probe), 2);
}

#[test]
fn a_probe_that_is_cut_short_forged_stale_or_unknown_is_counted_and_not_announced() {
    let env = env();
    let good = probe_of(NOW, 1000, 0);
    let mut forged = good.clone();
    forged[24] ^= 1; // its length field, under the tag
    let mut padding_changed = good.clone();
    padding_changed[999] = 1; // outside the tag: still verified
    let mut other_tunnel = good.clone();
    other_tunnel[8] ^= 1;
    for (payload, reason) in [
        (good[..999].to_vec(), Counter::Malformed),
        ([&good[..], &[0][..]].concat(), Counter::Malformed),
        (good[..39].to_vec(), Counter::Malformed),
        (forged, Counter::BadTag),
        (probe_of(NOW - 200_000_000_000, 1000, 0), Counter::Stale),
        (other_tunnel, Counter::UnknownTunnel),
    ] {
        let env = self::env();
        assert_eq!(process(&udp(CLIENT, 40001, 42424, &payload)[..], &env), Verdict::Drop, "{reason:?}");
        assert_eq!(count(&env, reason), 1, "{reason:?}");
        assert!(env.events.borrow().is_empty(), "{reason:?}: {:?}", env.events.borrow());
    }
    assert_eq!(process(&udp(CLIENT, 40001, 42424, &padding_changed)[..], &env), Verdict::Drop);
    assert_eq!(count(&env, Counter::Probe), 1);
}

#[test]
fn probes_beyond_the_budget_are_dropped_without_an_event() {
    let env = env();
    for i in 0..25 {
        assert_eq!(process(&udp(CLIENT, 40001, 42424, &probe_of(NOW + i, 1400, 0))[..], &env), Verdict::Drop);
    }
    // A burst of 16 (40 a second).
    assert_eq!((count(&env, Counter::Probe), count(&env, Counter::ProbeLimited)), (16, 9));
    // A tenth of a second refills four.
    env.boot.set(env.boot.get() + 100_000_000);
    for i in 0..8 {
        process(&udp(CLIENT, 40001, 42424, &probe_of(NOW + 100 + i, 1400, 0))[..], &env);
    }
    assert_eq!((count(&env, Counter::Probe), count(&env, Counter::ProbeLimited)), (20, 13));
    assert_eq!(env.events.borrow().len(), 20);
}
