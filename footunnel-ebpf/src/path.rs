//! The packet path: parse → classify → verify → record. One definition,
//! run by the XDP and TC entry points (against BPF maps) and by host unit
//! tests (against an in-memory [`Env`]).

use crate::{
    maps::{
        CLOCK_NOTICE_INTERVAL_NS, CachedEndpoint, Counter, EVENT_HEARTBEAT, EVENT_LEGACY, EVENT_OBSERVED, EVENT_PROBE,
        EVENT_STALE, Endpoint, LEGACY_SECRET_MAX, LegacySecret, Observed, PORT_LEGACY, PortConfig, PrefixOwner,
        Settings, TunnelConfig, endpoint_cache_key, inner_prefix, probe_budget,
    },
    packet::{
        Addr, ETH_HLEN, ETH_P_IP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, PacketBytes, Parsed, UDP_HLEN, UNSPECIFIED, Udp,
        parse_udp, read_addresses, same_addr,
    },
    wire::{
        Acceptance, Kind, MESSAGE_LEN, Message, MessageWords, Probe, check_fresh, check_header, check_new, check_signed,
    },
};

/// What happens to the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to the kernel (FoU data, and everything that is not ours).
    Pass,
    /// Consumed: control messages never reach the kernel's FoU socket.
    Drop,
}

/// The state the path reads and writes: BPF maps in the kernel.
pub trait Env {
    /// The port's configuration, if it is watched.
    fn port(&self, port: u16) -> Option<PortConfig>;
    fn cached_endpoint(&self, slot: u32) -> CachedEndpoint;
    /// Whether slot `slot` holds `entry` with a prefix that holds `inner`
    /// (the hot path: no copy of the slot).
    fn cache_admits(&self, slot: u32, entry: u64, inner: [u8; 4]) -> bool {
        self.cached_endpoint(slot).admits(entry, inner)
    }
    /// Stores a slot's entry word with a full barrier (an exchange).
    fn store_cache_entry(&self, slot: u32, entry: u64);
    /// Stores a slot's inner prefix (plain stores: see [`write_cache_slot`]).
    fn store_cache_prefix(&self, slot: u32, net: u32, mask: u32);
    fn settings(&self) -> Settings;
    /// The broker's boot-time clock, ns; plus `realtime_offset_ns` gives wall time.
    fn boot_ns(&self) -> u64;
    /// By reference: a copy would cost stack, which the 6.1 verifier caps
    /// at 512 bytes over all call frames.
    fn tunnel(&self, id: u64) -> Option<&TunnelConfig>;
    /// Whether `addr` is an address the tunnels' links use, or one of them takes any.
    fn tunnel_address(&self, addr: &Addr) -> bool;
    /// A reference to an endpoint where it lies (the map value): a copy,
    /// like a closure's captures, would cost stack.
    type EndpointRef<'a>: core::ops::Deref<Target = Endpoint>
    where
        Self: 'a;
    fn endpoint(&self, id: u64) -> Option<Self::EndpointRef<'_>>;
    /// Tunnel `id`'s endpoint (created empty if missing), locked against
    /// other CPUs until the guard drops; `None`: another CPU holds it. A
    /// guard, not a closure: LLVM may outline a closure, and its frame and
    /// captures cost stack.
    type LockedEndpoint<'a>: core::ops::DerefMut<Target = Endpoint>
    where
        Self: 'a;
    fn lock_endpoint(&self, id: u64) -> Option<Self::LockedEndpoint<'_>>;
    /// The tunnel whose inner prefix holds `src`, and that prefix's length.
    fn tunnel_by_v4(&self, src: [u8; 4]) -> Option<PrefixOwner>;
    fn tunnel_by_v6(&self, src: [u8; 16]) -> Option<PrefixOwner>;
    fn tunnel_by_legacy(&self, secret: &LegacySecret) -> Option<u64>;
    fn observed(&self, id: u64) -> Option<Observed>;
    fn set_observed(&self, id: u64, observed: &Observed);
    /// One more packet for tunnel `id`'s observed entry, in place (the
    /// count is approximate when CPUs race; it is for operators only).
    fn touch_observed(&self, id: u64, now: u64);
    /// When [`notice_clock`] last announced tunnel `id` (0: never).
    fn last_clock_notice(&self, id: u64) -> u64;
    fn set_clock_notice(&self, id: u64, now: u64);
    /// Tunnel `id`'s PROBE budget ([`probe_budget`]; 0: never used).
    fn probe_budget(&self, id: u64) -> u64;
    fn set_probe_budget(&self, id: u64, full_at: u64);
    fn count(&self, counter: Counter);
    /// A control message's outcome (its kind if accepted, else the reason)
    /// and what became of the packet, for `footunnel broker --trace`. The
    /// programs log it only when loaded with the trace on.
    fn trace_control(&self, _udp: &Udp, _outcome: Result<Kind, Counter>, _verdict: Verdict) {}
    /// Queues an [`Event`](crate::maps::Event) of `kind` about `udp` (its source and
    /// destination), written where it lies in the ring buffer: built on the
    /// stack it would not fit. `false` if there was no room.
    fn emit(&self, kind: u8, record_id: u64, timestamp_ns: u64, detail: [u8; 8], extra: [u8; 4], udp: &Udp) -> bool;
}

/// Every packet on the uplink comes through here.
#[inline(always)]
#[expect(clippy::too_many_lines, reason = "the path reads top to bottom: every return is a verdict, in order")]
pub fn process<P: PacketBytes + ?Sized, E: Env>(pkt: &P, env: &E) -> Verdict {
    let mut udp = Udp::default();
    let port = match plain_ipv4(pkt, env, &mut udp) {
        Plain::Done(verdict) => return verdict,
        Plain::Watched(port) => port,
        Plain::Other => {
            match parse_udp(pkt, &mut udp) {
                Parsed::Udp => {}
                Parsed::Other => return Verdict::Pass,
                // Shared-device mode: the external-mode device would take
                // these whole, or reassembled, past the source check.
                Parsed::IpInIp => return unless_shared(env),
                Parsed::Fragment { port } => {
                    if count_if_watched(port, env, Counter::Fragment) {
                        // Only the first fragment has the port: without it
                        // nothing is reassembled.
                        return unless_shared(env);
                    }
                    return Verdict::Pass;
                }
                Parsed::Malformed { port } => {
                    count_if_watched(port, env, Counter::IpMalformed);
                    return Verdict::Pass;
                }
                Parsed::Unwalked => {
                    env.count(Counter::Ipv6Unwalked);
                    return Verdict::Pass;
                }
            };
            let Some(port) = env.port(udp.dst_port) else { return Verdict::Pass };
            port
        }
    };
    if port.kind == PORT_LEGACY {
        if !read_addresses(pkt, &mut udp) {
            return Verdict::Pass;
        }
        return legacy_heartbeat(pkt, &udp, env);
    }
    let Some([first]) = pkt.read::<1>(udp.payload_offset) else {
        env.count(Counter::NotFou);
        return Verdict::Pass;
    };
    if !read_addresses(pkt, &mut udp) {
        return Verdict::Pass;
    }
    match first >> 4 {
        0xF => {
            let outcome = control(pkt, &udp, env);
            let verdict = control_verdict(outcome, &udp, env);
            env.trace_control(&udp, outcome, verdict);
            verdict
        }
        version @ (4 | 6) => {
            // The inner source is read from the payload, never past it (into
            // Ethernet padding, say).
            if udp.payload_len < if version == 4 { IPV4_HLEN } else { IPV6_HLEN } {
                env.count(Counter::NotFou);
                return Verdict::Pass;
            }
            if version == 4 {
                let Some(inner) = pkt.bytes4_at(udp.payload_offset + 12) else { return Verdict::Pass };
                let owner = env.tunnel_by_v4(inner);
                fou_data(&udp, owner.map(|o| (o, Some(inner_prefix(inner, o.len)))), env)
            } else {
                let owner = pkt.read::<16>(udp.payload_offset + 8).and_then(|s| env.tunnel_by_v6(s));
                fou_data(&udp, owner.map(|o| (o, None)), env)
            }
        }
        _ => {
            env.count(Counter::NotFou);
            Verdict::Pass
        }
    }
}

/// What [`plain_ipv4`] made of a frame.
enum Plain {
    /// Decided: unrelated UDP, or data from a cached endpoint.
    Done(Verdict),
    /// A datagram to this watched port, its addressing in the caller's
    /// [`Udp`] (addresses still unread).
    Watched(PortConfig),
    /// Not plain IPv4 and UDP: the general parse takes it from the start.
    Other,
}

/// Nearly all traffic, decided after one bound check of its headers, each
/// field loaded where it is first used (IPv6 leaves after the Ethernet
/// type): UDP in IPv4 without options (no fragment, lengths consistent) to
/// a port that is not watched, and FoU data from a known endpoint with an
/// inner source in its tunnel's prefix, after one more array lookup (IPv4
/// endpoints only: an IPv6 one does not fit the cache's entry word; data
/// behind IPv4 options is checked against the endpoint itself). Everything
/// else gets the same verdict and counters from the general path, which
/// this only spares the parse of the common case.
#[inline(always)]
fn plain_ipv4<P: PacketBytes + ?Sized, E: Env>(pkt: &P, env: &E, udp: &mut Udp) -> Plain {
    const L4: usize = ETH_HLEN + IPV4_HLEN;
    let Some(h) = pkt.checked::<{ L4 + UDP_HLEN }>(0) else { return Plain::Other };
    if h.be16::<12>() != ETH_P_IP {
        return Plain::Other;
    }
    let version_tos = h.be16::<ETH_HLEN>();
    let total_len = h.be16::<{ ETH_HLEN + 2 }>();
    let frag = h.be16::<{ ETH_HLEN + 6 }>();
    let ttl_protocol = h.be16::<{ ETH_HLEN + 8 }>();
    let udp_len = h.be16::<{ L4 + 4 }>();
    if version_tos >> 8 != 0x45
        || ttl_protocol as u8 != IPPROTO_UDP
        || frag & 0x3fff != 0
        || udp_len < UDP_HLEN as u16
        || usize::from(udp_len) > usize::from(total_len).saturating_sub(IPV4_HLEN)
    {
        return Plain::Other;
    }
    let (src_port, dst_port) = (h.be16::<L4>(), h.be16::<{ L4 + 2 }>());
    let Some(port) = env.port(dst_port) else { return Plain::Done(Verdict::Pass) };
    let payload_len = usize::from(udp_len) - UDP_HLEN;
    if port.kind != PORT_LEGACY
        && payload_len >= IPV4_HLEN
        && let Some(payload) = pkt.checked::<16>(L4 + UDP_HLEN)
        && payload.be16::<0>() >> 12 == 4
    {
        let src =
            (u32::from(h.be16::<{ ETH_HLEN + 12 }>()) << 16 | u32::from(h.be16::<{ ETH_HLEN + 14 }>())).to_be_bytes();
        let inner = (u32::from(payload.be16::<12>()) << 16 | u32::from(payload.be16::<14>())).to_be_bytes();
        let (slot, entry) = endpoint_cache_key(src, src_port);
        if env.cache_admits(slot, entry, inner) {
            env.count(Counter::FouData);
            return Plain::Done(Verdict::Pass);
        }
    }
    udp.src_port = src_port;
    udp.dst_port = dst_port;
    udp.payload_offset = L4 + UDP_HLEN;
    udp.payload_len = payload_len;
    Plain::Watched(port)
}

/// Counts a fragment or malformed datagram whose UDP destination port (when
/// the header is there to read: first fragments, contradicting lengths) is
/// watched; whether it was.
#[inline(always)]
fn count_if_watched<E: Env>(port: Option<u16>, env: &E, counter: Counter) -> bool {
    let watched = port.is_some_and(|p| env.port(p).is_some());
    if watched {
        env.count(counter);
    }
    watched
}

#[inline(always)]
fn wall_clock<E: Env>(env: &E, settings: &Settings) -> u64 {
    env.boot_ns().wrapping_add(settings.realtime_offset_ns)
}

/// What becomes of a control message, counted: accepted ones are consumed,
/// refused ones dropped unless they are someone else's.
#[inline(always)]
fn control_verdict<E: Env>(outcome: Result<Kind, Counter>, udp: &Udp, env: &E) -> Verdict {
    match outcome {
        Ok(_) => Verdict::Drop,
        // Someone else's: a router's transit traffic, or another address here.
        Err(Counter::WrongDestination) => {
            env.count(Counter::WrongDestination);
            Verdict::Pass
        }
        // No known tunnel's, so its destination decides: to another
        // host (transit), it passes untouched.
        Err(Counter::Malformed | Counter::BadVersion | Counter::BadType | Counter::UnknownTunnel)
            if !env.tunnel_address(&udp.dst_addr) =>
        {
            env.count(Counter::WrongDestination);
            Verdict::Pass
        }
        Err(counter) => {
            env.count(counter);
            Verdict::Drop
        }
    }
}

/// A control message on a FoU port: a HEARTBEAT (40 bytes), or a PROBE
/// (padded to the size it probes).
#[inline(always)]
fn control<P: PacketBytes + ?Sized, E: Env>(pkt: &P, udp: &Udp, env: &E) -> Result<Kind, Counter> {
    if udp.payload_len < MESSAGE_LEN {
        return Err(Counter::Malformed);
    }
    let msg = &MessageWords(pkt.le64s::<{ MESSAGE_LEN / 8 }>(udp.payload_offset).ok_or(Counter::Malformed)?);
    if msg.kind() == Kind::Probe as u8 {
        return probe(msg, udp, env).map(|()| Kind::Probe);
    }
    if udp.payload_len != MESSAGE_LEN {
        return Err(Counter::Malformed);
    }
    heartbeat(msg, udp, env).map(|()| Kind::Heartbeat)
}

/// What a HEARTBEAT or PROBE passes before anything else: its type, a
/// known key id, sent to that tunnel's address, a configured broker, and
/// its tag; the tunnel and the settings for the checks that follow.
#[inline(always)]
fn signed_for_tunnel<'e, E: Env>(
    msg: &MessageWords,
    kind: Kind,
    udp: &Udp,
    env: &'e E,
) -> Result<(&'e TunnelConfig, Settings), Counter> {
    check_header(msg, kind)?;
    let tunnel = env.tunnel(msg.key_id()).ok_or(Counter::UnknownTunnel)?;
    if !for_tunnel(&tunnel.local, udp) {
        return Err(Counter::WrongDestination);
    }
    let settings = env.settings();
    if !settings.configured() {
        return Err(Counter::Unconfigured);
    }
    check_signed(msg, &tunnel.key)?;
    Ok((tunnel, settings))
}

/// Only a verified HEARTBEAT changes state.
#[inline(always)]
fn heartbeat<E: Env>(msg: &MessageWords, udp: &Udp, env: &E) -> Result<(), Counter> {
    // Checked without the lock first, so replays and forgeries never take it;
    // in `check_tunnel`'s order: a forged message costs neither the clock
    // read nor the endpoint lookup.
    let (tunnel, settings) = signed_for_tunnel(msg, Kind::Heartbeat, udp, env)?;
    let (key_id, id) = (msg.key_id(), tunnel.record);
    let now = wall_clock(env, &settings);
    let rules = Acceptance { expected: Kind::Heartbeat, now_ns: now, window_ns: settings.window_ns };
    // Only the timestamp: a copy of the whole entry costs stack, which the
    // 6.1 verifier counts to 512 bytes with every call frame.
    let refused = match check_fresh(msg, &rules) {
        Ok(()) => check_new(msg, env.endpoint(id).map_or(0, |e| e.last_timestamp_ns)).err(),
        Err(stale) => Some(stale),
    };
    if let Some(refused) = refused {
        // Its tag is right: the client's clock, not an attacker, may be at
        // fault (a router without a real-time clock), and TIME can tell it.
        notice_clock(env, id, key_id, msg.timestamp_ns(), now, udp);
        return Err(refused.into());
    }

    // Under the lock, again: a newer heartbeat may have been accepted on
    // another CPU since the read above, and must not be undone.
    let timestamp = msg.timestamp_ns();
    let Some(mut endpoint) = env.lock_endpoint(id) else { return Err(Counter::Busy) };
    if timestamp <= endpoint.last_timestamp_ns {
        return Err(Counter::Replay);
    }
    endpoint.last_timestamp_ns = timestamp;
    endpoint.key_id = key_id;
    let moved_from = record(&mut endpoint, udp, now);
    drop(endpoint);
    forget_cached(env, moved_from);
    env.count(Counter::Accepted);
    let detail = msg.detail();
    emit(env, EVENT_HEARTBEAT, id, timestamp, detail, [0; 4], udp);
    Ok(())
}

/// A PROBE: checked like a heartbeat (tag, then freshness) but never
/// subject to or moving the increasing rule or the endpoint, and as long as
/// its detail says; then announced within the tunnel's budget, so a replayed
/// flood costs the controller 40 events a second.
#[inline(always)]
fn probe<E: Env>(msg: &MessageWords, udp: &Udp, env: &E) -> Result<(), Counter> {
    let (tunnel, settings) = signed_for_tunnel(msg, Kind::Probe, udp, env)?;
    let (key_id, id) = (msg.key_id(), tunnel.record);
    let detail = msg.detail();
    if !Probe::from_detail(detail).fits(udp.payload_len) {
        return Err(Counter::Malformed);
    }
    let now = wall_clock(env, &settings);
    check_fresh(msg, &Acceptance { expected: Kind::Probe, now_ns: now, window_ns: settings.window_ns })?;
    let full_at = probe_budget(env.probe_budget(id), now).ok_or(Counter::ProbeLimited)?;
    env.set_probe_budget(id, full_at);
    env.count(Counter::Probe);
    let extra = [detail[0], detail[1], detail[2], detail[3]];
    emit(env, EVENT_PROBE, id, msg.timestamp_ns(), key_id.to_be_bytes(), extra, udp);
    Ok(())
}

/// Announces a stale or replayed heartbeat that is correctly tagged, at most
/// once per [`CLOCK_NOTICE_INTERVAL_NS`] per tunnel: whatever floods the
/// port with replays costs the controller one event a second.
#[inline(always)]
fn notice_clock<E: Env>(env: &E, id: u64, key_id: u64, timestamp_ns: u64, now: u64, udp: &Udp) {
    if now.wrapping_sub(env.last_clock_notice(id)) < CLOCK_NOTICE_INTERVAL_NS {
        return;
    }
    env.set_clock_notice(id, now);
    emit(env, EVENT_STALE, id, timestamp_ns, key_id.to_be_bytes(), [0; 4], udp);
}

/// Makes the packet's source the endpoint; the previous endpoint if it moved.
#[inline(always)]
fn record(endpoint: &mut Endpoint, udp: &Udp, now: u64) -> Option<(Addr, u16)> {
    let first = endpoint.heartbeats == 0;
    let mut moved_from = None;
    if first || !is_source(udp, &endpoint.addr, endpoint.port) {
        if !first {
            moved_from = Some((endpoint.addr, endpoint.port));
        }
        endpoint.addr = udp.src_addr;
        endpoint.port = udp.src_port;
        endpoint.changes += 1;
        endpoint.last_change_ns = now;
    }
    endpoint.last_seen_ns = now;
    endpoint.heartbeats += 1;
    moved_from
}

/// The old endpoint is no endpoint any more: its data must be noticed again.
#[inline(always)]
fn forget_cached<E: Env>(env: &E, moved_from: Option<(Addr, u16)>) {
    if let Some((addr, port)) = moved_from
        && let Some(addr) = addr.as_v4()
    {
        let (slot, entry) = endpoint_cache_key(addr, port);
        if env.cached_endpoint(slot).entry == entry {
            env.store_cache_entry(slot, 0);
        }
    }
}

/// Fills a cache slot so that no reader on another CPU ever sees the new
/// prefix under the old entry (admitting the old endpoint's data from the
/// new prefix) or the reverse: the slot is emptied first, then takes the
/// prefix, then the entry.
#[inline(always)]
fn write_cache_slot<E: Env>(env: &E, slot: u32, cached: CachedEndpoint) {
    env.store_cache_entry(slot, 0);
    env.store_cache_prefix(slot, cached.inner_net, cached.inner_mask);
    env.store_cache_entry(slot, cached.entry);
}

/// Sent to the address the tunnel's link uses (or to any, if it has none).
#[inline(always)]
fn for_tunnel(local: &Addr, udp: &Udp) -> bool {
    same_addr(local, &UNSPECIFIED) || same_addr(local, &udp.dst_addr)
}

/// Whether the packet comes from this address and port.
#[inline(always)]
fn is_source(udp: &Udp, addr: &Addr, port: u16) -> bool {
    port == udp.src_port && same_addr(addr, &udp.src_addr)
}

/// Whether the packet comes from tunnel `id`'s endpoint (a `match`, not
/// a closure: see [`Env::lock_endpoint`]).
#[inline(always)]
fn is_endpoint<E: Env>(env: &E, id: u64, udp: &Udp) -> bool {
    match env.endpoint(id) {
        Some(e) => is_source(udp, &e.addr, e.port),
        None => false,
    }
}

/// Tells the controller about `udp`, from its source to its destination.
#[inline(always)]
fn emit<E: Env>(env: &E, kind: u8, record_id: u64, timestamp_ns: u64, detail: [u8; 8], extra: [u8; 4], udp: &Udp) {
    if !env.emit(kind, record_id, timestamp_ns, detail, extra, udp) {
        env.count(Counter::EventsLost);
    }
}

/// FoU data: never trusted, but a source other than the endpoint is noted
/// and announced (at most once per interval per tunnel) so the controller
/// can challenge it. `owner`: the prefix owner for the inner source, and
/// that prefix for the cache (IPv4 inside and outside only).
#[inline(always)]
fn fou_data<E: Env>(udp: &Udp, owner: Option<(PrefixOwner, Option<(u32, u32)>)>, env: &E) -> Verdict {
    let Some((owner, prefix)) = owner else {
        env.count(Counter::FouUnmatched);
        return unless_shared(env);
    };
    let id = owner.id();
    if is_endpoint(env, id, udp) {
        let (Some((inner_net, inner_mask)), Some(src)) = (prefix, udp.src_addr.as_v4()) else {
            env.count(Counter::FouData);
            return Verdict::Pass;
        };
        let (slot, entry) = endpoint_cache_key(src, udp.src_port);
        write_cache_slot(env, slot, CachedEndpoint { entry, inner_net, inner_mask });
        // A heartbeat on another CPU may have moved the endpoint between the
        // read above and the store: read it again after the store (an
        // exchange, a full barrier) and take the entry back if so. Either the
        // heartbeat's own invalidation comes after our store, or this read
        // sees its new endpoint: no stale entry survives.
        if !is_endpoint(env, id, udp) {
            env.store_cache_entry(slot, 0);
        }
        env.count(Counter::FouData);
        return Verdict::Pass;
    }
    if !for_tunnel(&owner.local, udp) {
        env.count(Counter::WrongDestination);
        // Shared-device mode: the FoU listener takes every local address,
        // so this would reach the shared device unchecked.
        return unless_shared(env);
    }
    env.count(Counter::FouElsewhere);
    let settings = env.settings();
    if !settings.configured() {
        env.count(Counter::Unconfigured);
        return Verdict::Pass;
    }
    // Shared-device mode: the kernel's one device takes FoU from anyone, so
    // this is the only source check; still announced, so a client that
    // moved silently draws a challenge.
    let verdict = if settings.shared_uplink != 0 {
        env.count(Counter::Spoofed);
        Verdict::Drop
    } else {
        Verdict::Pass
    };
    let now = wall_clock(env, &settings);
    let previous = env.observed(id);
    let due = previous.is_none_or(|o| now.wrapping_sub(o.last_event_ns) >= settings.observe_interval_ns);
    if !due {
        // Between events (a spoofed flood, a rebinding flow) only this
        // entry's counters move, in place: no hash update per packet.
        env.touch_observed(id, now);
        return verdict;
    }
    let mut observed = previous.unwrap_or_default();
    if !is_source(udp, &observed.addr, observed.port) {
        observed.addr = udp.src_addr;
        observed.port = udp.src_port;
        observed.packets = 0;
    }
    observed.packets += 1;
    observed.last_seen_ns = now;
    observed.last_event_ns = now;
    env.count(Counter::ObservedEvents);
    // The payload length bounds the size of the challenge it may draw.
    let len = (udp.payload_len as u16).to_be_bytes();
    let detail = [len[0], len[1], 0, 0, 0, 0, 0, 0];
    emit(env, EVENT_OBSERVED, id, now, detail, [0; 4], udp);
    env.set_observed(id, &observed);
    verdict
}

/// FoU data no tunnel owns: the kernel's per-link receive finds no link for
/// it, but the shared device would take it in.
#[inline(always)]
fn unless_shared<E: Env>(env: &E) -> Verdict {
    if env.settings().shared_uplink != 0 {
        env.count(Counter::Spoofed);
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

/// The proof of concept's heartbeat: the plaintext secret is the payload.
/// Opt-in per tunnel (only legacy tunnels' secrets are in the map).
#[inline(always)]
fn legacy_heartbeat<P: PacketBytes + ?Sized, E: Env>(pkt: &P, udp: &Udp, env: &E) -> Verdict {
    let len = udp.payload_len;
    if len == 0 || len > LEGACY_SECRET_MAX {
        env.count(Counter::LegacyUnknown);
        return Verdict::Pass;
    }
    let mut secret = LegacySecret { len: len as u32, bytes: [0; LEGACY_SECRET_MAX] };
    for i in 0..LEGACY_SECRET_MAX {
        if i >= len {
            break;
        }
        match pkt.read_in_loop::<1>(udp.payload_offset + i) {
            Some([b]) => secret.bytes[i] = b,
            None => {
                env.count(Counter::LegacyUnknown);
                return Verdict::Pass;
            }
        }
    }
    let Some(id) = env.tunnel_by_legacy(&secret) else {
        env.count(Counter::LegacyUnknown);
        return Verdict::Pass;
    };
    let now = wall_clock(env, &env.settings());
    let Some(mut endpoint) = env.lock_endpoint(id) else {
        env.count(Counter::Busy);
        return Verdict::Drop;
    };
    let moved_from = record(&mut endpoint, udp, now);
    drop(endpoint);
    forget_cached(env, moved_from);
    env.count(Counter::LegacyAccepted);
    emit(env, EVENT_LEGACY, id, now, [0; 8], [0; 4], udp);
    Verdict::Drop
}

#[cfg(test)]
#[path = "path_tests.rs"]
pub(crate) mod tests;
