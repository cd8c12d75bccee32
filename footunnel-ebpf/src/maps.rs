//! Map names and layouts, shared by the eBPF programs and userspace. Every
//! map is a BTF map, so `bpftool map dump pinned /sys/fs/bpf/footunnel/<MAP>`
//! prints these field names. Ports are in host byte order, addresses as the
//! bytes on the wire, times in ns since the Unix epoch (broker's clock)
//! unless a field says otherwise.

use crate::{packet::Addr, siphash::SipKey, wire::HeartbeatKey};

pub const ENDPOINT_CACHE_SLOTS: usize = 65_536;

/// The cache slot and entry for a source address and port; entry 0 is empty.
#[inline(always)]
pub fn endpoint_cache_key(addr: [u8; 4], port: u16) -> (u32, u64) {
    let a = u32::from_be_bytes(addr);
    let slot = ((a >> 16) ^ (a & 0xffff) ^ u32::from(port)) & (ENDPOINT_CACHE_SLOTS as u32 - 1);
    (slot, 1 << 63 | u64::from(a) << 16 | u64::from(port))
}
/// A cache slot: whose endpoint it is, and the inner IPv4 prefix its data
/// must come from (IPv6 inner packets are not cached).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CachedEndpoint {
    /// From [`endpoint_cache_key`]; 0: empty.
    pub entry: u64,
    /// Inner source prefix, network byte order: (source & mask) == net.
    pub inner_net: u32,
    pub inner_mask: u32,
}

impl CachedEndpoint {
    /// Data from `entry`'s source whose inner source is `inner`: a hit?
    #[inline(always)]
    pub fn admits(&self, entry: u64, inner: [u8; 4]) -> bool {
        self.entry == entry && u32::from_ne_bytes(inner) & self.inner_mask == self.inner_net
    }
}

/// An LPM trie's value: the tunnel that owns the prefix (its record id),
/// the prefix's length (so a cache entry can check other packets against
/// the prefix), and the broker address its link uses (all zero: any), so
/// data to another address is told apart without another lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PrefixOwner {
    pub id_hi: u32,
    pub id_lo: u32,
    pub len: u32,
    pub local: Addr,
}

impl PrefixOwner {
    pub const fn new(id: u64, len: u8, local: Addr) -> Self {
        PrefixOwner { id_hi: (id >> 32) as u32, id_lo: id as u32, len: len as u32, local }
    }
    pub const fn id(&self) -> u64 {
        (self.id_hi as u64) << 32 | self.id_lo as u64
    }
}

/// The inner IPv4 prefix of `len` bits containing `addr`, as (net, mask)
/// in network byte order (see [`CachedEndpoint`]).
#[inline(always)]
pub fn inner_prefix(addr: [u8; 4], len: u32) -> (u32, u32) {
    let mask_be = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
    let mask = u32::from_ne_bytes(mask_be.to_be_bytes());
    (u32::from_ne_bytes(addr) & mask, mask)
}

/// The broker answers a client's wrong clock (TIME) at most this often per tunnel.
pub const CLOCK_NOTICE_INTERVAL_NS: u64 = 1_000_000_000;
/// A tunnel's PROBEs are answered at most 40 a second, in bursts of 16:
/// a discovery sends rounds of 8 at once, at least 200 ms apart.
pub const PROBE_INTERVAL_NS: u64 = 25_000_000;
pub const PROBE_BURST: u64 = 16;

/// Whether a PROBE at `now` fits the budget `full_at` (0: never used);
/// the budget's new value if so.
#[inline(always)]
pub fn probe_budget(full_at: u64, now: u64) -> Option<u64> {
    let from = if full_at > now { full_at } else { now };
    if from - now > (PROBE_BURST - 1) * PROBE_INTERVAL_NS {
        return None;
    }
    Some(from + PROBE_INTERVAL_NS)
}
/// At most this many distinct tunnel addresses on one broker.
pub const MAX_LOCAL_ADDRS: usize = 4096;

/// One map of the eBPF object: what the controller pins, and the layout
/// it checks pinned maps against before reusing them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub key_size: usize,
    pub value_size: usize,
    pub max_entries: usize,
    /// Pinned under the pin directory, so the data plane outlives the
    /// controller and a restart continues from it. Not pinned: derived
    /// state that every start rebuilds.
    pub pinned: bool,
}

const fn spec(name: &'static str, (key_size, value_size): (usize, usize), max_entries: usize, pinned: bool) -> MapSpec {
    MapSpec { name, key_size, value_size, max_entries, pinned }
}

/// Maps keyed by tunnel grow with the tunnels (`BPF_F_NO_PREALLOC`: entries
/// are allocated as they are added; the controller adds each tunnel's
/// before it serves it).
pub const GROWING: usize = 1;

/// (key size, value size) of a map as the kernel reports them.
macro_rules! map_sizes {
    (Array; $v:ty) => {
        (4, size_of::<$v>())
    };
    // Per CPU: the kernel reports one CPU's value.
    (PerCpuArray; $v:ty) => {
        (4, size_of::<$v>())
    };
    (HashMap; $k:ty, $v:ty) => {
        (size_of::<$k>(), size_of::<$v>())
    };
    // LPM trie keys: a 32-bit prefix length, then the address.
    (LpmTrie; $k:ty, $v:ty) => {
        (4 + size_of::<$k>(), size_of::<$v>())
    };
    // A ring buffer has no keys or values; its size is its byte count.
    (RingBuf; $t:ty) => {
        (0, 0)
    };
}

/// Pinned under the pin directory (the state outlives the controller), or
/// rebuilt by every start.
macro_rules! map_pinned {
    (pinned) => {
        true
    };
    (rebuilt) => {
        false
    };
}

/// Declares every map once: a constant of its name, its row of [`MAPS`],
/// and (eBPF only) its static in [`kernel`], of aya-ebpf's type `KIND<TYPES,
/// CAPACITY, FLAGS>`. Maps other crates declare (`extern`) get a constant
/// and a row.
macro_rules! maps {
    (
        { $( $(#[$doc:meta])* $name:ident: $kind:ident($($ty:ty),+; $entries:expr $(; $flags:expr)?), $pin:ident; )* }
        extern { $( $(#[$edoc:meta])* $ename:ident = $symbol:literal: $ekind:ident($($ety:ty),+; $eentries:expr), $epin:ident; )* }
    ) => {
        $( $(#[$doc])* pub const $name: &str = stringify!($name); )*
        $( $(#[$edoc])* pub const $ename: &str = $symbol; )*

        /// Every map of the eBPF object, once: what the controller pins and
        /// unloads, and the layout it checks pinned maps against. A host
        /// test compares the built object's maps with this table.
        pub const MAPS: &[MapSpec] = &[
            $( spec($name, map_sizes!($kind; $($ty),+), $entries, map_pinned!($pin)), )*
            $( spec($ename, map_sizes!($ekind; $($ety),+), $eentries, map_pinned!($epin)), )*
        ];

        /// The maps as the eBPF programs use them.
        #[cfg(target_arch = "bpf")]
        pub mod kernel {
            use aya_ebpf::{btf_maps::*, macros::btf_map};

            use super::*;

            $(
                #[btf_map]
                pub static $name: $kind<$($ty),+, { $entries } $(, { $flags })?> = $kind::new();
            )*
        }
    };
}

maps! {
    {
        /// Array indexed by UDP port → [`PortConfig`]: the FoU port(s), and the
        /// proof of concept's heartbeat port when a tunnel has legacy enabled. An
        /// array, not a hash map: every UDP packet on the uplink looks here, and an
        /// array lookup compiles to a bounds check and a load.
        FOU_PORTS: Array(PortConfig; PORT_SLOTS), pinned;
        /// Array of [`ENDPOINT_CACHE_SLOTS`] [`CachedEndpoint`]s: a direct-mapped
        /// cache of known endpoints, so FoU data from a tunnel's endpoint (nearly all
        /// traffic) passes after one array lookup — if its inner source is in the
        /// prefix that matched when the entry was made. Derived state: a miss takes
        /// the full path.
        ENDPOINT_CACHE: Array(CachedEndpoint; ENDPOINT_CACHE_SLOTS), rebuilt;
        /// Hash map: key id (as heartbeats carry it: one per secret) → [`TunnelConfig`].
        TUNNELS: HashMap(u64, TunnelConfig; MAX_KEYS; GROWING), pinned;
        /// Hash map: record id ([`TunnelConfig::record`]) → [`Endpoint`], written
        /// on every accepted heartbeat.
        ENDPOINTS: HashMap(u64, Endpoint; MAX_TUNNELS; GROWING), pinned;
        /// LPM trie: inner IPv4 source prefix → [`PrefixOwner`].
        PREFIXES_V4: LpmTrie([u8; 4], PrefixOwner; MAX_PREFIXES), pinned;
        /// LPM trie: inner IPv6 source prefix → [`PrefixOwner`].
        PREFIXES_V6: LpmTrie([u8; 16], PrefixOwner; MAX_PREFIXES), pinned;
        /// Hash map: [`LegacySecret`] → [`TunnelRef`] (record id), for legacy-enabled tunnels only.
        LEGACY_SECRETS: HashMap(LegacySecret, TunnelRef; MAX_TUNNELS; GROWING), pinned;
        /// Hash map: record id → [`Observed`]: FoU data from a source that is not the endpoint.
        OBSERVED: HashMap(u64, Observed; MAX_TUNNELS; GROWING), pinned;
        /// Hash map: record id → when (broker wall clock, ns) the data plane last
        /// announced a correctly tagged but stale or replayed heartbeat of the
        /// tunnel ([`EVENT_STALE`]): at most one per [`CLOCK_NOTICE_INTERVAL_NS`].
        CLOCK_NOTICES: HashMap(u64, u64; MAX_TUNNELS; GROWING), pinned;
        /// Hash map: record id → the tunnel's PROBE budget, as the time (broker
        /// wall clock, ns) at which it would be full again: a verified PROBE is
        /// announced ([`EVENT_PROBE`]) only while that is at most
        /// `(PROBE_BURST - 1) * PROBE_INTERVAL_NS` ahead of now, and moves it on by
        /// one interval (a generic cell rate algorithm: one word, no timer).
        // Rebuilt: a lost budget is a full one.
        PROBE_BUDGET: HashMap(u64, u64; MAX_TUNNELS; GROWING), rebuilt;
        /// Hash map: [`Addr`](crate::packet::Addr) → 1, the broker addresses the
        /// tunnels' links use (unspecified: a link takes any). A control message
        /// that is no known tunnel's is dropped only when sent to one of these:
        /// to another host (a router's transit) it passes untouched.
        LOCAL_ADDRS: HashMap(Addr, u32; MAX_LOCAL_ADDRS), pinned;
        /// Array of one [`Settings`].
        SETTINGS: Array(Settings; 1), pinned;
        /// Ring buffer of [`Event`]s for the controller.
        EVENTS: RingBuf(Event; EVENTS_BYTES), pinned;
        /// Per-CPU array indexed by [`Counter`].
        COUNTERS: PerCpuArray(u64; Counter::COUNT), pinned;
    }
    extern {
        /// aya-log's ring buffer, declared by `aya-log-ebpf`: the lines of
        /// `footunnel broker --trace`. Rebuilt: a trace is for the broker that
        /// asked for it.
        TRACE_LOG = "AYA_LOGS": RingBuf(u8; TRACE_LOG_BYTES), rebuilt;
    }
}

pub const TRACE_LOG_BYTES: usize = 1 << 17;

pub const PORT_SLOTS: usize = 65_536;
/// At most this many ports are watched at once.
pub const MAX_PORTS: usize = 16;
/// Room for 100,000 tunnels and more. The maps keyed by tunnel are not
/// preallocated, so a broker pays for the tunnels it has, not for this.
pub const MAX_TUNNELS: usize = 131_072;
/// TUNNELS has an entry per secret: two per tunnel during a key rotation.
pub const MAX_KEYS: usize = 2 * MAX_TUNNELS;
pub const MAX_PREFIXES: usize = 131_072;
pub const EVENTS_BYTES: usize = 256 * 1024;

pub const PORT_FOU: u32 = 1;
/// The proof of concept's port (42425): the plaintext secret as payload.
pub const PORT_LEGACY: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PortConfig {
    /// [`PORT_FOU`], [`PORT_LEGACY`], or 0: not watched.
    pub kind: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TunnelConfig {
    /// The secret's key for the id this entry is under.
    pub key: HeartbeatKey,
    /// The broker address the tunnel's link uses (its `local`, IPv4 mapped
    /// into IPv6); all zero: any. Control messages and data to another
    /// address are not this tunnel's (transit traffic on a router, another
    /// local address).
    pub local: Addr,
    /// The id the tunnel is recorded under (ENDPOINTS, OBSERVED, prefix
    /// owners, events), the same for each of its secrets: during a key
    /// rotation, heartbeats under either secret move one endpoint, and the
    /// strictly increasing timestamp rule holds across both.
    pub record: u64,
}

impl TunnelConfig {
    /// The entry for heartbeats under `key_id`, signed with `key`.
    pub fn new(key_id: u64, key: SipKey, local: Addr, record: u64) -> Self {
        TunnelConfig { key: HeartbeatKey::new(key, key_id), local, record }
    }
}

/// A key id in a value slot that must stay 4-byte aligned (LPM tries
/// store values right after 4-byte keys).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TunnelRef {
    pub id_hi: u32,
    pub id_lo: u32,
}

impl TunnelRef {
    pub const fn new(id: u64) -> Self {
        TunnelRef { id_hi: (id >> 32) as u32, id_lo: id as u32 }
    }
    pub const fn id(&self) -> u64 {
        (self.id_hi as u64) << 32 | self.id_lo as u64
    }
}

/// Where a tunnel's client is, as its last accepted heartbeat showed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Endpoint {
    /// IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`).
    pub addr: Addr,
    pub port: u16,
    pub _pad: [u8; 6],
    /// Timestamp of the newest accepted heartbeat (client's clock): a
    /// heartbeat must carry a larger one.
    pub last_timestamp_ns: u64,
    pub last_seen_ns: u64,
    pub heartbeats: u64,
    /// How often address or port changed (the first heartbeat counts).
    pub changes: u64,
    pub last_change_ns: u64,
    /// Non-zero while a CPU updates this entry: accepting a heartbeat is
    /// read, check, write, and two CPUs interleaving those would let the
    /// older heartbeat win. Taken with an atomic compare-and-swap.
    pub lock: u64,
    /// The key id (which secret) the latest accepted heartbeat carried.
    pub key_id: u64,
}

/// FoU data for a tunnel from a source other than its endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Observed {
    pub addr: Addr,
    pub port: u16,
    pub _pad: [u8; 6],
    /// Packets from this source since it was first seen.
    pub packets: u64,
    pub last_seen_ns: u64,
    /// When an event last announced this tunnel (rate limit).
    pub last_event_ns: u64,
}

/// Longest proof-of-concept secret the legacy path matches.
pub const LEGACY_SECRET_MAX: usize = 60;

/// A legacy secret as the lookup key: its length and zero-padded bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct LegacySecret {
    pub len: u32,
    pub bytes: [u8; LEGACY_SECRET_MAX],
}

impl LegacySecret {
    /// `None` if the secret is empty or longer than [`LEGACY_SECRET_MAX`].
    pub fn new(secret: &[u8]) -> Option<Self> {
        if secret.is_empty() || secret.len() > LEGACY_SECRET_MAX {
            return None;
        }
        let mut bytes = [0u8; LEGACY_SECRET_MAX];
        bytes[..secret.len()].copy_from_slice(secret);
        Some(LegacySecret { len: secret.len() as u32, bytes })
    }
}

/// Run-time settings, written by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Settings {
    /// CLOCK_REALTIME − CLOCK_BOOTTIME, so the program can read the wall clock.
    pub realtime_offset_ns: u64,
    /// Freshness window either side of the broker's clock; 0 disables.
    pub window_ns: u64,
    /// Least time between two "observed" events of one tunnel.
    pub observe_interval_ns: u64,
    /// Shared-device mode (non-zero): the uplink encapsulated packets leave
    /// by, and FoU data from anyone but its tunnel's endpoint is dropped.
    pub shared_uplink: u32,
    /// Shared-device mode: the broker's FoU port, the source port of
    /// everything it encapsulates.
    pub shared_port: u16,
    pub _pad: u16,
}

impl Settings {
    /// Written by a controller: the wall-clock offset is never zero on a
    /// running system, while an array entry nobody wrote is all zero.
    #[inline(always)]
    pub fn configured(&self) -> bool {
        self.realtime_offset_ns != 0
    }
}

pub const EVENT_HEARTBEAT: u8 = 1;
pub const EVENT_OBSERVED: u8 = 2;
pub const EVENT_LEGACY: u8 = 3;
/// A heartbeat with a correct tag refused as stale or replayed: its
/// sender's clock may be wrong, and the broker answers with TIME.
pub const EVENT_STALE: u8 = 4;
/// A verified PROBE within its tunnel's budget: the broker answers with a
/// PROBE_ACK of the same length, and applies the MTU it asks for.
pub const EVENT_PROBE: u8 = 5;

/// What the controller hears about through [`EVENTS`], about the tunnel
/// recorded under `record_id` ([`TunnelConfig::record`]); which secret a heartbeat used is in its [`Endpoint::key_id`]
/// (kept out of the event: the 6.1 verifier's 512-byte stack has no room).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Event {
    pub record_id: u64,
    /// Heartbeat: its timestamp; otherwise the broker's clock.
    pub timestamp_ns: u64,
    /// Heartbeat: the nonce it answers. Observed: the UDP payload length
    /// (big-endian u16), which bounds the size of a challenge. Stale: the
    /// heartbeat's key id (big-endian), so TIME uses its key. Probe: the
    /// PROBE's key id, likewise.
    pub detail: [u8; 8],
    /// The packet's source (IPv4 mapped into IPv6).
    pub addr: Addr,
    /// The broker address the packet was sent to: answers leave from it, so
    /// an endpoint-dependent NAT lets them through.
    pub dst_addr: Addr,
    pub port: u16,
    /// [`EVENT_HEARTBEAT`], [`EVENT_OBSERVED`], [`EVENT_LEGACY`], [`EVENT_STALE`] or [`EVENT_PROBE`].
    pub kind: u8,
    pub _pad: u8,
    /// Probe: the PROBE's length L and the MTU it asks for, as its detail
    /// carries them ([`crate::wire::Probe::from_detail`]); otherwise 0.
    pub extra: [u8; 4],
}

impl Event {
    /// For [`EVENT_PROBE`]: its length and the MTU it asks for.
    pub fn probe(&self) -> crate::wire::Probe {
        let e = self.extra;
        crate::wire::Probe::from_detail([e[0], e[1], e[2], e[3], 0, 0, 0, 0])
    }

    /// For [`EVENT_STALE`] and [`EVENT_PROBE`]: the key id (secret) the message carried.
    pub fn key_id(&self) -> u64 {
        u64::from_be_bytes(self.detail)
    }

    /// For [`EVENT_OBSERVED`]: the payload length of the packet seen.
    pub fn observed_payload_len(&self) -> u16 {
        u16::from_be_bytes([self.detail[0], self.detail[1]])
    }
}

/// Declares [`Counter`] from one list: each counter's variant (its slot in
/// [`COUNTERS`], in list order), its name (`footunnel show`, the metrics'
/// label) and its metric family. Adding a counter is one line here (and a
/// row in docs/operations.md, which a test checks).
macro_rules! counters {
    ($($(#[doc = $doc:expr])* $variant:ident = $name:literal, $family:ident;)*) => {
        /// What the data plane counts, one slot each in [`COUNTERS`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            /// Every counter, in slot order.
            pub const ALL: [Counter; [$(Counter::$variant),*].len()] = [$(Counter::$variant),*];
            pub const COUNT: usize = Self::ALL.len();

            /// The name operators see (`footunnel show`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// The metric family the counter is a series of.
            pub const fn family(self) -> CounterFamily {
                match self {
                    $(Counter::$variant => CounterFamily::$family,)*
                }
            }
        }
    };
}

counters! {
    /// FoU data from its tunnel's endpoint.
    FouData = "fou_data", Packets;
    /// FoU data whose inner source matches no tunnel's prefixes.
    FouUnmatched = "fou_unmatched", Packets;
    /// FoU data for a tunnel from a source that is not its endpoint.
    FouElsewhere = "fou_elsewhere", Packets;
    /// "Observed" events sent (after the per-tunnel rate limit).
    ObservedEvents = "observed_events", ObservedEvents;
    /// Payload on a FoU port that is neither IP nor a control message.
    NotFou = "not_fou", Packets;
    Accepted = "accepted", Packets;
    Malformed = "malformed", Rejected;
    BadVersion = "bad_version", Rejected;
    BadType = "bad_type", Rejected;
    UnknownTunnel = "unknown_tunnel", Rejected;
    Stale = "stale", Rejected;
    Replay = "replay", Rejected;
    BadTag = "bad_tag", Rejected;
    LegacyAccepted = "legacy_accepted", Packets;
    LegacyUnknown = "legacy_unknown", Rejected;
    /// Events the ring buffer had no room for.
    EventsLost = "events_lost", EventsLost;
    /// Verified heartbeats dropped because another CPU was updating the same
    /// tunnel at that instant (the client retries).
    Busy = "busy", Rejected;
    /// To a FoU port but not to the tunnel's broker address: passed on.
    WrongDestination = "wrong_destination", Packets;
    /// IPv4 or IPv6 fragments to a watched port (first fragments; later
    /// ones carry no port): passed to the kernel's reassembly, unchecked.
    Fragment = "fragment", Packets;
    /// IP/UDP headers that contradict each other, to a watched port.
    IpMalformed = "ip_malformed", Packets;
    /// Control messages while the controller has not written SETTINGS:
    /// refused rather than checked against a zero clock and window.
    Unconfigured = "unconfigured", Rejected;
    /// Shared-device mode: FoU data from a source that is not the endpoint
    /// of the tunnel owning its inner source (or from no tunnel): dropped.
    Spoofed = "spoofed", Packets;
    /// Shared-device mode: packets encapsulated to their tunnel's endpoint.
    Encapsulated = "encapsulated", Packets;
    /// Shared-device mode: packets to an inner destination no tunnel owns
    /// (or not IPv4): dropped.
    EgressNoTunnel = "egress_no_tunnel", Packets;
    /// Shared-device mode: packets for a tunnel with no endpoint yet (no
    /// heartbeat accepted), or an IPv6 one, which this mode does not carry:
    /// dropped.
    EgressNoEndpoint = "egress_no_endpoint", Packets;
    /// Shared-device mode: the kernel refused to grow or redirect the packet.
    EgressFailed = "egress_failed", Packets;
    /// IPv6 datagrams with more extension headers before their transport
    /// header than the program walks: passed unchecked, whatever their port.
    Ipv6Unwalked = "ipv6_unwalked", Packets;
    /// PROBEs verified and announced (a client discovering its path MTU).
    Probe = "probe", Packets;
    /// Verified PROBEs beyond their tunnel's budget (40 a second): dropped.
    ProbeLimited = "probe_limited", Rejected;
}

/// How counters are exposed as Prometheus metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterFamily {
    /// Control messages the data plane dropped: `heartbeats_rejected_total{reason}`.
    Rejected,
    /// What the data plane did with other packets: `dataplane_packets_total{outcome}`.
    Packets,
    /// `events_lost_total`, on its own.
    EventsLost,
    /// `observed_events_total`, on its own.
    ObservedEvents,
}

impl CounterFamily {
    /// (metric name after `footunnel_`, its label or "" for none, help).
    pub const fn metric(self) -> (&'static str, &'static str, &'static str) {
        match self {
            CounterFamily::Rejected => {
                ("heartbeats_rejected_total", "reason", "Control messages the data plane dropped, by reason")
            }
            CounterFamily::Packets => {
                ("dataplane_packets_total", "outcome", "Packets on watched ports, by what the data plane did with them")
            }
            CounterFamily::EventsLost => (
                "events_lost_total",
                "",
                "Events the ring buffer had no room for (the broker catches up in its next sweep)",
            ),
            CounterFamily::ObservedEvents => {
                ("observed_events_total", "", "Events about FoU data from a source other than its tunnel's endpoint")
            }
        }
    }
}

impl From<crate::wire::Reject> for Counter {
    fn from(r: crate::wire::Reject) -> Self {
        use crate::wire::Reject;
        match r {
            Reject::Malformed => Counter::Malformed,
            Reject::BadVersion => Counter::BadVersion,
            Reject::BadType => Counter::BadType,
            Reject::UnknownTunnel => Counter::UnknownTunnel,
            Reject::Stale => Counter::Stale,
            Reject::Replay => Counter::Replay,
            Reject::BadTag => Counter::BadTag,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    /// `aya::Pod` for types that are `bytemuck::Pod`, which the compiler
    /// checks here (and the derive checks: `repr(C)`, no padding).
    macro_rules! aya_pod {
        ($($t:ty),* $(,)?) => {$(
            const _: () = {
                const fn is_bytemuck_pod<T: bytemuck::Pod>() {}
                is_bytemuck_pod::<$t>()
            };
            // SAFETY: plain old data without padding, as bytemuck::Pod (checked above) requires.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    aya_pod!(
        PortConfig,
        TunnelConfig,
        TunnelRef,
        PrefixOwner,
        CachedEndpoint,
        crate::packet::Addr,
        Endpoint,
        Observed,
        LegacySecret,
        Settings,
        Event,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_is_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }

    #[test]
    fn every_counter_is_explained_to_operators() {
        let operations = include_str!("../../docs/operations.md");
        for c in Counter::ALL {
            assert!(
                operations.contains(&format!("| `{}` |", c.name())),
                "docs/operations.md has no row for the counter `{}`: add what it means and what to do",
                c.name()
            );
        }
    }

    #[test]
    fn tunnel_ref_round_trips() {
        assert_eq!(TunnelRef::new(0x0102_0304_0506_0708).id(), 0x0102_0304_0506_0708);
    }

    #[test]
    fn legacy_secret_bounds() {
        assert!(LegacySecret::new(b"").is_none());
        assert!(LegacySecret::new(&[b'x'; 61]).is_none());
        let s = LegacySecret::new(b"SECRET").unwrap();
        assert_eq!((s.len, &s.bytes[..7]), (6, &b"SECRET\0"[..]));
    }
}
