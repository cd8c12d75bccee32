//! The entry points and the maps; the packet path itself is
//! `footunnel_ebpf::path`, shared with the host tests.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xchg};

use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_NOEXIST, TC_ACT_OK,
        TC_ACT_SHOT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, xdp_action,
    },
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_redirect_neigh, bpf_skb_change_head, bpf_skb_get_tunnel_key},
    macros::{classifier, xdp},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use footunnel_ebpf::{
    egress::{OUTER_LEN, outer_headers},
    ingress::admit,
    maps::{
        CachedEndpoint, Counter, Endpoint, Event, LegacySecret, Observed, PortConfig, PrefixOwner, Settings,
        TunnelConfig, TunnelRef,
    },
    packet::{Addr, Checked, PacketBytes, UNSPECIFIED, Udp},
    path::{Env, Verdict, process},
    wire::Kind,
};

// The maps: footunnel_ebpf::maps declares each once (maps!).
use footunnel_ebpf::maps::kernel::*;

/// Direct packet access between `data` and `data_end`, as both XDP and TC
/// (for the linear part of the skb) provide.
struct Linear {
    start: usize,
    end: usize,
}

impl Linear {
    /// The address of `len` bytes at `offset`, if they are in the packet.
    /// The address is opaque to LLVM, so the bound is checked on the very
    /// register that is dereferenced; otherwise the check is rewritten into
    /// a form the verifier cannot follow.
    #[inline(always)]
    fn bounded(&self, offset: usize, len: usize) -> Option<usize> {
        let mut at = self.start + offset;
        // SAFETY: a register move onto itself; it only hides `at`'s provenance.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) at) };
        if at + len > self.end {
            return None;
        }
        Some(at)
    }
}

impl PacketBytes for Linear {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if N == 1 {
            // LLVM turns `at + 1 > end` into `at >= end`, which the verifier
            // does not take as a bound.
            return self.read_in_loop(offset);
        }
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: bounds checked against the packet end just above.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }

    #[inline(always)]
    fn be16_at(&self, offset: usize) -> Option<u16> {
        let at = self.start + offset;
        if at + 2 > self.end {
            return None;
        }
        // SAFETY: two bytes inside the packet (checked just above).
        Some(unsafe { load_be16::<0>(at) })
    }

    #[inline(always)]
    fn bytes4_at(&self, offset: usize) -> Option<[u8; 4]> {
        let at = self.bounded(offset, 4)?;
        let value: u64;
        // SAFETY: four bytes inside the packet (checked just above); one
        // 32-bit load, as in `load_be16`. Its bytes in memory order.
        unsafe {
            core::arch::asm!("{0} = *(u32 *)({1} + 0)", out(reg) value, in(reg) at, options(pure, readonly, nostack))
        };
        Some((value as u32).to_ne_bytes())
    }

    #[inline(always)]
    fn checked<const N: usize>(&self, offset: usize) -> Option<Checked<'_, Self, N>> {
        let at = self.bounded(offset, N)?;
        // SAFETY: `bounded` checked the N bytes at `at`.
        Some(unsafe { Checked::new(self, at) })
    }

    #[inline(always)]
    unsafe fn be16_checked<const OFFSET: usize>(&self, at: usize) -> u16 {
        // SAFETY: the caller's: `at + OFFSET` is inside what `checked` bounded.
        unsafe { load_be16::<OFFSET>(at) }
    }

    #[inline(always)]
    fn be16s<const N: usize>(&self, offset: usize) -> Option<[u16; N]> {
        let at = self.bounded(offset, 2 * N)?;
        let mut out = [0u16; N];
        for (i, v) in out.iter_mut().enumerate() {
            // SAFETY: inside the 2N bytes checked just above.
            *v = unsafe { load_be16::<0>(at + 2 * i) };
        }
        Some(out)
    }

    #[inline(always)]
    fn le64s<const N: usize>(&self, offset: usize) -> Option<[u64; N]> {
        let at = self.bounded(offset, 8 * N)?;
        let mut out = [0u64; N];
        for (i, v) in out.iter_mut().enumerate() {
            // SAFETY: inside the 8N bytes checked just above; one 64-bit
            // load (the BPF target is little-endian).
            unsafe {
                core::arch::asm!(
                    "{0} = *(u64 *)({1} + 0)", out(reg) *v, in(reg) at + 8 * i, options(pure, readonly, nostack)
                )
            };
        }
        Some(out)
    }

    #[inline(always)]
    fn read_in_loop<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let at = self.bounded(offset, N)?;
        // SAFETY: bounds checked against the packet end just above.
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }
}

/// An ENDPOINTS value whose lock this CPU holds; dropping it unlocks.
struct LockedEndpoint(*mut Endpoint);

impl core::ops::Deref for LockedEndpoint {
    type Target = Endpoint;
    #[inline(always)]
    fn deref(&self) -> &Endpoint {
        // SAFETY: a live map value (see `lock_endpoint`) whose lock we hold.
        unsafe { &*self.0 }
    }
}

impl core::ops::DerefMut for LockedEndpoint {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut Endpoint {
        // SAFETY: as above; every writer takes the lock.
        unsafe { &mut *self.0 }
    }
}

impl Drop for LockedEndpoint {
    #[inline(always)]
    fn drop(&mut self) {
        // An exchange, not a plain store: a full barrier, so the fields are
        // visible to the next holder before the lock is seen free.
        // SAFETY: as above.
        unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(core::ptr::addr_of_mut!((*self.0).lock), 0) };
    }
}

/// One 16-bit load at `at + OFFSET`, the offset in the instruction itself:
/// LLVM's BPF backend would assemble an unaligned read from single bytes.
/// Packet data may be unaligned, which the verifier allows for packet
/// pointers where the CPU handles it (x86, arm64).
///
/// # Safety
/// `at + OFFSET` and the byte after it are inside the packet, as the
/// verifier sees it.
#[inline(always)]
unsafe fn load_be16<const OFFSET: usize>(at: usize) -> u16 {
    let value: u64;
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "{0} = *(u16 *)({1} + {2})", out(reg) value, in(reg) at, const OFFSET, options(pure, readonly, nostack)
        )
    };
    u16::from_be(value as u16)
}

/// The maps, as the packet path sees them.
struct Maps;

impl Env for Maps {
    #[inline(always)]
    fn port(&self, port: u16) -> Option<PortConfig> {
        FOU_PORTS.get(u32::from(port)).copied().filter(|p| p.kind != 0)
    }
    #[inline(always)]
    fn cached_endpoint(&self, slot: u32) -> CachedEndpoint {
        ENDPOINT_CACHE.get(slot).copied().unwrap_or_default()
    }
    #[inline(always)]
    fn cache_admits(&self, slot: u32, entry: u64, inner: [u8; 4]) -> bool {
        ENDPOINT_CACHE.get(slot).is_some_and(|c| c.admits(entry, inner))
    }
    #[inline(always)]
    fn store_cache_entry(&self, slot: u32, entry: u64) {
        if let Some(p) = ENDPOINT_CACHE.get_ptr_mut(slot) {
            // SAFETY: an aligned slot of an array map. An exchange: a full
            // barrier, which the path's ordered writes and re-check rely on.
            unsafe {
                atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(core::ptr::addr_of_mut!((*p).entry), entry);
            }
        }
    }
    #[inline(always)]
    fn store_cache_prefix(&self, slot: u32, net: u32, mask: u32) {
        if let Some(p) = ENDPOINT_CACHE.get_ptr_mut(slot) {
            // SAFETY: an aligned slot of an array map; volatile, so the
            // compiler keeps these stores between the two exchanges.
            unsafe {
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).inner_net), net);
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*p).inner_mask), mask);
            }
        }
    }
    #[inline(always)]
    fn settings(&self) -> Settings {
        SETTINGS.get(0).copied().unwrap_or_default()
    }
    #[inline(always)]
    fn boot_ns(&self) -> u64 {
        // SAFETY: no preconditions.
        unsafe { bpf_ktime_get_boot_ns() }
    }
    #[inline(always)]
    fn tunnel_address(&self, addr: &Addr) -> bool {
        // SAFETY: a read of a hash map value the controller never changes in place.
        unsafe { LOCAL_ADDRS.get(addr).is_some() || LOCAL_ADDRS.get(&UNSPECIFIED).is_some() }
    }
    #[inline(always)]
    fn tunnel(&self, id: u64) -> Option<&TunnelConfig> {
        // SAFETY: as in `port`; the controller replaces entries whole and
        // never removes one this program could be reading into a verdict
        // that matters (a stale key fails the tag check).
        unsafe { TUNNELS.get(id) }
    }
    type EndpointRef<'a> = &'a Endpoint;
    #[inline(always)]
    fn endpoint(&self, id: u64) -> Option<&Endpoint> {
        // SAFETY: as in `port`; fields a heartbeat on another CPU updates
        // meanwhile are re-checked by the path where that matters.
        unsafe { ENDPOINTS.get(id) }
    }
    type LockedEndpoint<'a> = LockedEndpoint;
    #[inline(always)]
    fn lock_endpoint(&self, id: u64) -> Option<LockedEndpoint> {
        let entry = match ENDPOINTS.get_ptr_mut(id) {
            Some(p) => p,
            None => {
                // BPF_NOEXIST: of two CPUs creating it, one wins; both then lock it.
                let _ = ENDPOINTS.insert(id, &Endpoint::default(), BPF_NOEXIST.into());
                ENDPOINTS.get_ptr_mut(id)?
            }
        };
        // SAFETY: an aligned u64 inside a map value that stays allocated while
        // this program runs (hash map values are freed after an RCU grace period).
        let lock = unsafe { core::ptr::addr_of_mut!((*entry).lock) };
        // SAFETY: as above.
        let (_, taken) =
            unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(lock, 0, 1) };
        // In place, not on a copy: the copy's stack would not fit the 6.1
        // verifier's 512 bytes.
        taken.then_some(LockedEndpoint(entry))
    }
    #[inline(always)]
    fn tunnel_by_v4(&self, src: [u8; 4]) -> Option<PrefixOwner> {
        PREFIXES_V4.get(&Key::new(32, src)).copied()
    }
    #[inline(always)]
    fn tunnel_by_v6(&self, src: [u8; 16]) -> Option<PrefixOwner> {
        PREFIXES_V6.get(&Key::new(128, src)).copied()
    }
    #[inline(always)]
    fn tunnel_by_legacy(&self, secret: &LegacySecret) -> Option<u64> {
        // SAFETY: as in `port`.
        unsafe { LEGACY_SECRETS.get(secret).map(TunnelRef::id) }
    }
    #[inline(always)]
    fn observed(&self, id: u64) -> Option<Observed> {
        // SAFETY: as in `port`.
        unsafe { OBSERVED.get(id).copied() }
    }
    #[inline(always)]
    fn touch_observed(&self, id: u64, now: u64) {
        if let Some(p) = OBSERVED.get_ptr_mut(id) {
            // SAFETY: a live map value; plain stores (approximate under races).
            unsafe {
                (*p).packets += 1;
                (*p).last_seen_ns = now;
            }
        }
    }
    #[inline(always)]
    fn set_observed(&self, id: u64, observed: &Observed) {
        let _ = OBSERVED.insert(id, observed, 0);
    }
    #[inline(always)]
    fn last_clock_notice(&self, id: u64) -> u64 {
        // SAFETY: as in `port`.
        unsafe { CLOCK_NOTICES.get(id).copied().unwrap_or(0) }
    }
    #[inline(always)]
    fn set_clock_notice(&self, id: u64, now: u64) {
        let _ = CLOCK_NOTICES.insert(id, now, 0);
    }
    #[inline(always)]
    fn probe_budget(&self, id: u64) -> u64 {
        // SAFETY: as in `port`.
        unsafe { PROBE_BUDGET.get(id).copied().unwrap_or(0) }
    }
    #[inline(always)]
    fn set_probe_budget(&self, id: u64, full_at: u64) {
        let _ = PROBE_BUDGET.insert(id, full_at, 0);
    }
    #[inline(always)]
    fn count(&self, counter: Counter) {
        if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
            // SAFETY: this CPU's own slot.
            unsafe { *slot += 1 };
        }
    }
    #[inline(always)]
    fn trace_control(&self, udp: &Udp, outcome: Result<Kind, Counter>, verdict: Verdict) {
        if TRACE.load() != 0 {
            trace_line(udp, outcome, verdict);
        }
    }
    #[inline(always)]
    fn emit(&self, kind: u8, record_id: u64, timestamp_ns: u64, detail: [u8; 8], extra: [u8; 4], udp: &Udp) -> bool {
        let Some(mut entry) = EVENTS.reserve(0) else { return false };
        entry.write(Event {
            record_id,
            timestamp_ns,
            detail,
            addr: udp.src_addr,
            dst_addr: udp.dst_addr,
            port: udp.src_port,
            kind,
            _pad: 0,
            extra,
        });
        entry.submit(0);
        true
    }
}

/// `footunnel broker --trace`: set at load time, a constant of the
/// object's .rodata, which the kernel freezes. With it 0 (the default) the
/// verifier knows [`Env::trace_control`]'s branch is never taken and
/// removes it: the trace costs nothing when off.
#[unsafe(no_mangle)]
static TRACE: Global<u8> = Global::new(0);

/// One line of the trace, through aya-log. A function of its own: the
/// verifier explores it only when the trace is on.
#[inline(never)]
fn trace_line(udp: &Udp, outcome: Result<Kind, Counter>, verdict: Verdict) {
    aya_log_ebpf::info!(
        &(),
        "control message {:i} port {} -> {:i} port {}: {} {}",
        udp.src_addr.0,
        udp.src_port,
        udp.dst_addr.0,
        udp.dst_port,
        match (outcome, verdict) {
            (Ok(_), _) => "accepted",
            (Err(_), Verdict::Drop) => "dropped",
            (Err(_), Verdict::Pass) => "passed",
        },
        match outcome {
            Ok(Kind::Probe) => "probe",
            Ok(_) => "heartbeat",
            Err(counter) => counter.name(),
        }
    );
}

#[xdp]
pub fn footunnel_xdp(ctx: XdpContext) -> u32 {
    let pkt = Linear { start: ctx.data(), end: ctx.data_end() };
    match process(&pkt, &Maps) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

const IPPROTO_TCP: u8 = 6;

/// Headers plus a control message, the most the path reads, made linear.
const TC_PULL_LEN: u32 = 14 + 60 + 8 + 64;

#[classifier]
pub fn footunnel_tc(ctx: TcContext) -> i32 {
    // Failure leaves the packet as it was; reads past the linear part then fail safely.
    let _ = ctx.pull_data(ctx.len().min(TC_PULL_LEN));
    let pkt = Linear { start: ctx.data(), end: ctx.data_end() };
    match process(&pkt, &Maps) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// Shared-device mode: TC ingress on the shared device, where every packet
/// it decapsulated arrives, by whatever way it came in.
#[classifier]
pub fn footunnel_device_ingress(ctx: TcContext) -> i32 {
    let _ = ctx.pull_data(ctx.len().min(20));
    // SAFETY: zeroed plain data, written by the helper.
    let mut key: aya_ebpf::bindings::bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // The compat size (up to tunnel_label): every kernel takes it, and the
    // outer source is all this needs.
    const KEY_LEN: u32 = 24;
    // SAFETY: the program's own skb and a key of at least KEY_LEN bytes.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, KEY_LEN, 0) } != 0 {
        Maps.count(Counter::Spoofed);
        return TC_ACT_SHOT;
    }
    // SAFETY: an IPv4 device's key holds an IPv4 source, in host order.
    let outer_src = unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be_bytes();
    let pkt = Linear { start: ctx.data(), end: ctx.data_end() };
    match admit(&pkt, outer_src, &Maps) {
        Ok(()) => TC_ACT_OK,
        Err(counter) => {
            Maps.count(counter);
            TC_ACT_SHOT
        }
    }
}

/// Shared-device mode: TC egress on the shared (external-mode) device, where
/// packets routed to a tunnel's inner prefixes arrive as bare IPv4. They
/// leave with FoU's outer headers by the uplink, never through the device's
/// own transmit (which would add plain IPIP).
#[classifier]
pub fn footunnel_egress(ctx: TcContext) -> i32 {
    let _ = ctx.pull_data(ctx.len().min(20));
    let pkt = Linear { start: ctx.data(), end: ctx.data_end() };
    let settings = Maps.settings();
    let headers = match outer_headers(&pkt, ctx.len(), &settings, &Maps) {
        Ok(h) => h,
        Err(counter) => {
            Maps.count(counter);
            return TC_ACT_SHOT;
        }
    };
    // ENCAP flags: the kernel marks the packet as UDP-encapsulated, so a
    // GSO packet (forwarded TCP, say) is segmented with its outer headers.
    let mut flags = u64::from(BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP);
    // The kernel grows only TCP GSO packets by shrinking their segments;
    // any other (UDP GSO: QUIC, WireGuard, a UDP_SEGMENT sender) it refuses
    // unless their segment size stays. It may: the device's MTU leaves room
    // for the outer headers in every segment.
    // SAFETY: the program's own skb, read-only.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size != 0 && pkt.read::<1>(9) != Some([IPPROTO_TCP]) {
        flags |= u64::from(BPF_F_ADJ_ROOM_FIXED_GSO);
    }
    if ctx.adjust_room(OUTER_LEN as i32, BPF_ADJ_ROOM_MAC, flags).is_err() || ctx.store(0, &headers, 0).is_err() {
        Maps.count(Counter::EgressFailed);
        return TC_ACT_SHOT;
    }
    // bpf_redirect_neigh expects to replace an Ethernet header (it is made
    // for Ethernet devices): give this L3 device's packet a blank one, which
    // also marks where the outer IP header starts. Unicast destination
    // (all zero), IPv4 type; the neighbour table fills in the real one.
    // SAFETY: the program's own skb.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, 14, 0) } != 0 || ctx.store(12, &0x0800u16.to_be(), 0).is_err() {
        Maps.count(Counter::EgressFailed);
        return TC_ACT_SHOT;
    }
    // SAFETY: no parameters: the kernel routes the outer destination itself
    // and fills in the uplink's link-layer header from its neighbour table.
    let action = unsafe { bpf_redirect_neigh(settings.shared_uplink, core::ptr::null_mut(), 0, 0) };
    if action as i32 == TC_ACT_SHOT {
        Maps.count(Counter::EgressFailed);
    } else {
        Maps.count(Counter::Encapsulated);
    }
    action as i32
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
