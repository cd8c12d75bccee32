//! Protocol v1 control messages (docs/protocol.md, normative): 40 bytes of UDP
//! payload sharing the FoU port and 5-tuple with the tunnel's data (ACK6:
//! 56). FoU payloads start with an IP version nibble (4 or 6); ours start
//! with 0xF.

use crate::siphash::{SipKey, SipState, siphash24};

pub const MARKER: u8 = 0xF7;
pub const VERSION: u8 = 1;
pub const MESSAGE_LEN: usize = 40;
/// Bytes covered by the tag.
pub const TAGGED_LEN: usize = 32;
/// ACK6: the ACK for a client seen at an IPv6 address.
pub const ACK6_LEN: usize = 56;
/// Bytes of an ACK6 covered by its tag.
pub const ACK6_TAGGED_LEN: usize = 48;

/// The message types of v1.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Client → broker: "this is where I am".
    Heartbeat = 1,
    /// Broker → client: "I saw you at this address and port".
    Ack = 2,
    /// Broker → client: "prove it is you at this source".
    Challenge = 3,
    /// Broker → client: ACK for a client seen at an IPv6 address ([`Ack6`]).
    Ack6 = 4,
    /// Broker → client: "your heartbeat's clock is wrong; mine says this"
    /// (the detail echoes the refused heartbeat's timestamp).
    Time = 5,
    /// Client → broker: "does a datagram this large pass?" ([`Probe`]).
    Probe = 6,
    /// Broker → client: "it did", padded to the PROBE's length.
    ProbeAck = 7,
    /// Broker → broker, on the peer port: "these are my prefixes for this
    /// tunnel" (detail: their digest); proves the sender holds the secret.
    PeerQuery = 8,
    /// Broker → broker: the answer, echoing the query's timestamp, with
    /// the answerer's digest.
    PeerAnswer = 9,
}

impl Kind {
    pub const fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Heartbeat),
            2 => Some(Kind::Ack),
            3 => Some(Kind::Challenge),
            4 => Some(Kind::Ack6),
            5 => Some(Kind::Time),
            6 => Some(Kind::Probe),
            7 => Some(Kind::ProbeAck),
            8 => Some(Kind::PeerQuery),
            9 => Some(Kind::PeerAnswer),
            _ => None,
        }
    }
}

/// A control message as it is on the wire; multi-byte fields are big-endian
/// byte arrays so the layout has no padding and no alignment needs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ControlMessage {
    pub marker: u8,
    pub version: u8,
    pub kind: u8,
    pub flags: u8,
    pub reserved: [u8; 4],
    pub key_id: [u8; 8],
    pub timestamp: [u8; 8],
    /// Heartbeat: the nonce it answers; ACK: address + port seen; Challenge: nonce.
    pub detail: [u8; 8],
    pub tag: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<ControlMessage>() == MESSAGE_LEN);

impl ControlMessage {
    /// A message with every field but the tag; [`ControlMessage::sign`] sets it.
    pub fn new(kind: Kind, key_id: u64, timestamp_ns: u64, detail: [u8; 8]) -> Self {
        ControlMessage {
            marker: MARKER,
            version: VERSION,
            kind: kind as u8,
            key_id: key_id.to_be_bytes(),
            timestamp: timestamp_ns.to_be_bytes(),
            detail,
            ..Default::default()
        }
    }

    pub fn from_bytes(bytes: &[u8; MESSAGE_LEN]) -> Self {
        bytemuck::cast(*bytes)
    }

    /// The message the bytes are, without a copy.
    pub fn view(bytes: &[u8; MESSAGE_LEN]) -> &Self {
        bytemuck::cast_ref(bytes)
    }

    pub fn to_bytes(&self) -> [u8; MESSAGE_LEN] {
        bytemuck::cast(*self)
    }

    pub fn key_id(&self) -> u64 {
        u64::from_be_bytes(self.key_id)
    }

    pub fn timestamp_ns(&self) -> u64 {
        u64::from_be_bytes(self.timestamp)
    }

    /// The tag this message should carry under `key`.
    #[inline(always)]
    pub fn expected_tag(&self, key: SipKey) -> [u8; 8] {
        // Over the message in place: a copy costs eBPF stack.
        siphash24(key, &bytemuck::bytes_of(self)[..TAGGED_LEN]).to_le_bytes()
    }

    pub fn sign(mut self, key: SipKey) -> Self {
        self.tag = self.expected_tag(key);
        self
    }

    /// ACK detail: the client's address and port as the broker saw them.
    pub fn endpoint_detail(addr: [u8; 4], port: u16) -> [u8; 8] {
        let p = port.to_be_bytes();
        [addr[0], addr[1], addr[2], addr[3], p[0], p[1], 0, 0]
    }
}

/// ACK6 (docs/protocol.md): the first 24 bytes as every message, with type 4;
/// then the client's IPv6 address and UDP port as the broker saw them;
/// SipHash-2-4 over bytes 0..48.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Ack6 {
    pub marker: u8,
    pub version: u8,
    pub kind: u8,
    pub flags: u8,
    pub reserved: [u8; 4],
    pub key_id: [u8; 8],
    pub timestamp: [u8; 8],
    pub addr: [u8; 16],
    pub port: [u8; 2],
    pub zero: [u8; 6],
    pub tag: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<Ack6>() == ACK6_LEN);

impl Ack6 {
    pub fn new(key_id: u64, timestamp_ns: u64, addr: [u8; 16], port: u16) -> Self {
        Ack6 {
            marker: MARKER,
            version: VERSION,
            kind: Kind::Ack6 as u8,
            key_id: key_id.to_be_bytes(),
            timestamp: timestamp_ns.to_be_bytes(),
            addr,
            port: port.to_be_bytes(),
            ..Default::default()
        }
    }

    pub fn from_bytes(bytes: &[u8; ACK6_LEN]) -> Self {
        bytemuck::cast(*bytes)
    }

    pub fn to_bytes(&self) -> [u8; ACK6_LEN] {
        bytemuck::cast(*self)
    }

    pub fn key_id(&self) -> u64 {
        u64::from_be_bytes(self.key_id)
    }

    pub fn timestamp_ns(&self) -> u64 {
        u64::from_be_bytes(self.timestamp)
    }

    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    pub fn expected_tag(&self, key: SipKey) -> [u8; 8] {
        siphash24(key, &bytemuck::bytes_of(self)[..ACK6_TAGGED_LEN]).to_le_bytes()
    }

    pub fn sign(mut self, key: SipKey) -> Self {
        self.tag = self.expected_tag(key);
        self
    }
}

/// The largest UDP payload a PROBE or PROBE_ACK may have (IPv4's limit).
pub const PROBE_MAX_LEN: usize = 65_507;

/// PROBE and PROBE_ACK (docs/protocol.md): a 40-byte control message whose
/// detail carries the datagram's whole UDP payload length L and an inner
/// MTU, padded with zeros to L. The padding is outside the tag: it only
/// makes the datagram as large as the path must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The UDP payload length L, 40 ≤ L ≤ [`PROBE_MAX_LEN`].
    pub len: u16,
    /// PROBE: the inner MTU the client asks for (0: none). PROBE_ACK: the
    /// one the broker applied (0: none, or refused).
    pub mtu: u16,
}

impl Probe {
    /// The detail field that carries it.
    pub fn detail(self) -> [u8; 8] {
        let (l, m) = (self.len.to_be_bytes(), self.mtu.to_be_bytes());
        [l[0], l[1], m[0], m[1], 0, 0, 0, 0]
    }

    pub fn from_detail(detail: [u8; 8]) -> Self {
        Probe { len: u16::from_be_bytes([detail[0], detail[1]]), mtu: u16::from_be_bytes([detail[2], detail[3]]) }
    }

    /// Writes the whole UDP payload into `out`, which must be L bytes:
    /// `msg` (already signed), then zeros. `false` if `out` is not L bytes.
    pub fn write(self, msg: &ControlMessage, out: &mut [u8]) -> bool {
        if !self.fits(out.len()) {
            return false;
        }
        let (head, padding) = out.split_at_mut(MESSAGE_LEN);
        head.copy_from_slice(&msg.to_bytes());
        padding.fill(0);
        true
    }

    /// Whether `payload_len` is a length a PROBE or PROBE_ACK may have and
    /// the one its detail names (a datagram cut short on the way is none).
    #[inline(always)]
    pub fn fits(self, payload_len: usize) -> bool {
        (MESSAGE_LEN..=PROBE_MAX_LEN).contains(&payload_len) && usize::from(self.len) == payload_len
    }
}

/// The receiver's checks of an ACK6: those of the 40-byte messages, in
/// their order and with their reasons.
pub fn check_ack6(msg: &Ack6, key: SipKey, last_timestamp_ns: u64, rules: &Acceptance) -> Result<(), Reject> {
    check_header(msg, Kind::Ack6)?;
    check_tunnel(msg, &key, last_timestamp_ns, rules)
}

/// The fields the receiver's checks read, from a message as bytes
/// ([`ControlMessage`], [`Ack6`]) or as words ([`MessageWords`], the way
/// the eBPF side loads a heartbeat): one set of checks for all.
pub trait Message {
    /// What the tag is checked with.
    type Key;
    fn marker(&self) -> u8;
    fn version(&self) -> u8;
    fn kind(&self) -> u8;
    fn timestamp_ns(&self) -> u64;
    fn tag_is_valid(&self, key: &Self::Key) -> bool;
}

/// The message types kept as their wire bytes, tagged under the plain key.
macro_rules! message_as_bytes {
    ($($ty:ty),*) => {$(
        impl Message for $ty {
            type Key = SipKey;
            fn marker(&self) -> u8 {
                self.marker
            }
            fn version(&self) -> u8 {
                self.version
            }
            fn kind(&self) -> u8 {
                self.kind
            }
            fn timestamp_ns(&self) -> u64 {
                u64::from_be_bytes(self.timestamp)
            }
            fn tag_is_valid(&self, key: &SipKey) -> bool {
                self.tag == self.expected_tag(*key)
            }
        }
    )*};
}
message_as_bytes!(ControlMessage, Ack6);

/// A 40-byte control message as five little-endian 64-bit words, the way
/// the eBPF program reads a heartbeat: five loads, where field by field its
/// BPF backend would assemble every multi-byte field from single bytes.
/// Words 0..4 are SipHash's input blocks; word 4 is the tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageWords(pub [u64; 5]);

impl MessageWords {
    pub fn from_bytes(bytes: &[u8; MESSAGE_LEN]) -> Self {
        MessageWords(core::array::from_fn(|i| u64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"))))
    }

    #[inline(always)]
    pub fn key_id(&self) -> u64 {
        self.0[1].swap_bytes()
    }

    #[inline(always)]
    pub fn detail(&self) -> [u8; 8] {
        self.0[3].to_le_bytes()
    }
}

impl Message for MessageWords {
    type Key = HeartbeatKey;
    #[inline(always)]
    fn marker(&self) -> u8 {
        self.0[0] as u8
    }
    #[inline(always)]
    fn version(&self) -> u8 {
        (self.0[0] >> 8) as u8
    }
    #[inline(always)]
    fn kind(&self) -> u8 {
        (self.0[0] >> 16) as u8
    }
    #[inline(always)]
    fn timestamp_ns(&self) -> u64 {
        self.0[2].swap_bytes()
    }
    #[inline(always)]
    fn tag_is_valid(&self, key: &HeartbeatKey) -> bool {
        self.0[4] == key.tag(&self.0)
    }
}

/// Bytes 0..8 of every heartbeat a client of this version sends (no flags).
const PLAIN_HEARTBEAT_WORD: u64 = u64::from_le_bytes([MARKER, VERSION, Kind::Heartbeat as u8, 0, 0, 0, 0, 0]);

/// A tunnel's heartbeat key, with SipHash's state after the 16 bytes all of
/// its plain heartbeats begin with (header word and key id) worked out
/// once, when the tunnel is configured: a tag then costs 10 SipHash rounds,
/// not 14. Other first words (flags set) are hashed from the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HeartbeatKey {
    pub key: SipKey,
    /// Bytes 8..16 of this tunnel's heartbeats, as [`MessageWords`] holds them.
    pub id_word: u64,
    /// After [`PLAIN_HEARTBEAT_WORD`] and `id_word`.
    pub after_prefix: SipState,
}

impl HeartbeatKey {
    pub fn new(key: SipKey, key_id: u64) -> Self {
        let id_word = u64::from_le_bytes(key_id.to_be_bytes());
        let mut after_prefix = SipState::new(key);
        after_prefix.compress(PLAIN_HEARTBEAT_WORD);
        after_prefix.compress(id_word);
        HeartbeatKey { key, id_word, after_prefix }
    }

    /// The tag of a message's first 32 bytes, `words[0..4]`.
    #[inline(always)]
    pub fn tag(&self, words: &[u64; 5]) -> u64 {
        let mut state = if words[0] == PLAIN_HEARTBEAT_WORD && words[1] == self.id_word {
            self.after_prefix
        } else {
            let mut state = SipState::new(self.key);
            state.compress(words[0]);
            state.compress(words[1]);
            state
        };
        state.compress(words[2]);
        state.compress(words[3]);
        state.finish(TAGGED_LEN, 0)
    }
}

/// Why a control message was not accepted; each has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not 40 bytes, or not our marker.
    Malformed,
    BadVersion,
    /// Unknown type, or one that does not travel in this direction.
    BadType,
    UnknownTunnel,
    /// Timestamp outside the freshness window around the receiver's clock.
    Stale,
    /// Timestamp not newer than the last accepted one.
    Replay,
    BadTag,
}

/// What the receiver knows when it checks a message.
#[derive(Clone, Copy, Debug)]
pub struct Acceptance {
    /// The type this direction carries (the broker accepts heartbeats).
    pub expected: Kind,
    /// The receiver's wall clock, ns since the Unix epoch.
    pub now_ns: u64,
    /// Freshness window, ns either side of `now_ns`; 0 disables the check.
    pub window_ns: u64,
}

/// The header checks that need no tunnel state, cheapest first.
#[inline(always)]
pub fn check_header<M: Message>(msg: &M, expected: Kind) -> Result<(), Reject> {
    if msg.marker() != MARKER {
        return Err(Reject::Malformed);
    }
    if msg.version() != VERSION {
        return Err(Reject::BadVersion);
    }
    if msg.kind() != expected as u8 {
        return Err(Reject::BadType);
    }
    Ok(())
}

/// Freshness alone: needs neither the tunnel's state nor its key, so a
/// receiver can reject stale messages before looking anything up.
#[inline(always)]
pub fn check_fresh<M: Message>(msg: &M, rules: &Acceptance) -> Result<(), Reject> {
    if rules.window_ns != 0 && msg.timestamp_ns().abs_diff(rules.now_ns) > rules.window_ns {
        return Err(Reject::Stale);
    }
    Ok(())
}

/// The checks against a known tunnel: the tag (SipHash from the tunnel's
/// precomputed state, for a heartbeat), freshness, then replay (the
/// endpoint's last timestamp: on the broker a hash map lookup). Anyone can
/// forge a message, so a forgery is rejected first and cheapest: on the
/// broker the clock read for freshness costs more than the tag (a forged
/// heartbeat 45 ns less in BPF_PROG_TEST_RUN), and a stale or replayed
/// message that passes the tag is one somebody captured.
#[inline(always)]
pub fn check_tunnel<M: Message>(
    msg: &M,
    key: &M::Key,
    last_timestamp_ns: u64,
    rules: &Acceptance,
) -> Result<(), Reject> {
    check_signed(msg, key)?;
    check_fresh(msg, rules)?;
    check_new(msg, last_timestamp_ns)
}

/// The tag.
#[inline(always)]
pub fn check_signed<M: Message>(msg: &M, key: &M::Key) -> Result<(), Reject> {
    if msg.tag_is_valid(key) { Ok(()) } else { Err(Reject::BadTag) }
}

/// Strictly newer than the last accepted message.
#[inline(always)]
pub fn check_new<M: Message>(msg: &M, last_timestamp_ns: u64) -> Result<(), Reject> {
    if msg.timestamp_ns() > last_timestamp_ns { Ok(()) } else { Err(Reject::Replay) }
}

#[cfg(test)]
mod tests {
    use core::hash::Hasher;

    use super::*;

    const KEY: [u8; 16] = *b"0123456789abcdef";
    const NOW: u64 = 1_790_000_000_000_000_000;

    /// A heartbeat laid out byte by byte from docs/protocol.md, tagged by an
    /// independent SipHash — not by the code under test.
    fn hand_built_heartbeat(key_id: u64, ts: u64) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0] = 0xF7; // marker
        b[1] = 1; // version
        b[2] = 1; // HEARTBEAT
        b[8..16].copy_from_slice(&key_id.to_be_bytes());
        b[16..24].copy_from_slice(&ts.to_be_bytes());
        // detail: no challenge answered → 0
        let mut h = siphasher::sip::SipHasher24::new_with_key(&KEY);
        h.write(&b[..32]);
        b[32..40].copy_from_slice(&h.finish().to_le_bytes());
        b
    }

    fn rules() -> Acceptance {
        Acceptance { expected: Kind::Heartbeat, now_ns: NOW, window_ns: 120_000_000_000 }
    }

    fn accept(bytes: &[u8; 40], last: u64, rules: &Acceptance) -> Result<(), Reject> {
        let msg = ControlMessage::from_bytes(bytes);
        check_header(&msg, rules.expected)?;
        check_tunnel(&msg, &SipKey::from_bytes(&KEY), last, rules)
    }

    #[test]
    fn hand_built_heartbeat_is_accepted_and_matches_our_encoder() {
        let bytes = hand_built_heartbeat(0x0102_0304_0506_0708, NOW);
        assert_eq!(accept(&bytes, 0, &rules()), Ok(()));
        let ours =
            ControlMessage::new(Kind::Heartbeat, 0x0102_0304_0506_0708, NOW, [0; 8]).sign(SipKey::from_bytes(&KEY));
        assert_eq!(ours.to_bytes(), bytes);
        assert_eq!(ControlMessage::from_bytes(&bytes).key_id(), 0x0102_0304_0506_0708);
    }

    #[test]
    fn each_rule_rejects_with_its_own_reason() {
        let good = hand_built_heartbeat(9, NOW);
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            b
        };
        assert_eq!(accept(&with(0, 0xF6), 0, &rules()), Err(Reject::Malformed));
        assert_eq!(accept(&with(1, 2), 0, &rules()), Err(Reject::BadVersion));
        assert_eq!(accept(&with(2, 2), 0, &rules()), Err(Reject::BadType));
        assert_eq!(accept(&with(2, 9), 0, &rules()), Err(Reject::BadType));
        assert_eq!(accept(&with(39, good[39] ^ 1), 0, &rules()), Err(Reject::BadTag));
        // A flipped detail byte breaks the tag too: every byte 0..32 is covered.
        assert_eq!(accept(&with(24, 1), 0, &rules()), Err(Reject::BadTag));
        assert_eq!(accept(&good, NOW, &rules()), Err(Reject::Replay));
        assert_eq!(accept(&good, NOW - 1, &rules()), Ok(()));
        let old = hand_built_heartbeat(9, NOW - 121_000_000_000);
        assert_eq!(accept(&old, 0, &rules()), Err(Reject::Stale));
        let future = hand_built_heartbeat(9, NOW + 121_000_000_000);
        assert_eq!(accept(&future, 0, &rules()), Err(Reject::Stale));
        assert_eq!(accept(&old, 0, &Acceptance { window_ns: 0, ..rules() }), Ok(()), "window 0 disables freshness");
    }

    #[test]
    fn flags_and_reserved_are_ignored_but_tagged() {
        let mut b = hand_built_heartbeat(9, NOW);
        b[3] = 0x80;
        assert_eq!(accept(&b, 0, &rules()), Err(Reject::BadTag), "flags are inside the tag");
        let msg = ControlMessage { flags: 0x80, reserved: [1, 2, 3, 4], ..ControlMessage::from_bytes(&b) }
            .sign(SipKey::from_bytes(&KEY));
        assert_eq!(accept(&msg.to_bytes(), 0, &rules()), Ok(()));
    }

    /// An ACK6 laid out byte by byte from docs/protocol.md, tagged by an
    /// independent SipHash.
    #[test]
    fn hand_built_ack6_matches_our_encoder_and_is_checked() {
        let addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        let mut b = [0u8; 56];
        b[0] = 0xF7;
        b[1] = 1;
        b[2] = 4;
        b[8..16].copy_from_slice(&9u64.to_be_bytes());
        b[16..24].copy_from_slice(&NOW.to_be_bytes());
        b[24..40].copy_from_slice(&addr);
        b[40..42].copy_from_slice(&40001u16.to_be_bytes());
        let mut h = siphasher::sip::SipHasher24::new_with_key(&KEY);
        h.write(&b[..48]);
        b[48..56].copy_from_slice(&h.finish().to_le_bytes());
        let key = SipKey::from_bytes(&KEY);
        assert_eq!(Ack6::new(9, NOW, addr, 40001).sign(key).to_bytes(), b);
        let rules = Acceptance { expected: Kind::Ack6, ..rules() };
        let msg = Ack6::from_bytes(&b);
        assert_eq!(check_ack6(&msg, key, 0, &rules), Ok(()));
        assert_eq!((msg.key_id(), msg.port(), msg.addr), (9, 40001, addr));
        assert_eq!(check_ack6(&msg, key, NOW, &rules), Err(Reject::Replay));
        for i in [3, 24, 39, 40, 42, 47, 55] {
            let mut bad = b;
            bad[i] ^= 1;
            assert_eq!(check_ack6(&Ack6::from_bytes(&bad), key, 0, &rules), Err(Reject::BadTag), "byte {i}");
        }
        let mut ack = b;
        ack[2] = 2;
        assert_eq!(check_ack6(&Ack6::from_bytes(&ack), key, 0, &rules), Err(Reject::BadType));
        let stale = Ack6::new(9, NOW - 121_000_000_000, addr, 40001).sign(key);
        assert_eq!(check_ack6(&stale, key, 0, &rules), Err(Reject::Stale));
    }

    /// The word form the eBPF side checks gives every byte form's verdict,
    /// for the hand-built heartbeat and each single-bit change of it.
    #[test]
    fn words_and_bytes_agree_on_every_field_and_verdict() {
        let key = SipKey::from_bytes(&KEY);
        let good = hand_built_heartbeat(0x0102_0304_0506_0708, NOW);
        for bit in std::iter::once(None).chain((0..320).map(Some)) {
            let mut b = good;
            if let Some(bit) = bit {
                b[bit / 8] ^= 1 << (bit % 8);
            }
            let bytes = ControlMessage::from_bytes(&b);
            let words = MessageWords::from_bytes(&b);
            assert_eq!(
                (words.marker(), words.version(), words.kind(), words.timestamp_ns(), words.detail()),
                (bytes.marker, bytes.version, bytes.kind, bytes.timestamp_ns(), bytes.detail),
                "bit {bit:?}"
            );
            assert_eq!(words.key_id(), bytes.key_id(), "bit {bit:?}");
            // Keyed by the id the message names, as the broker looks it up.
            let by_id = HeartbeatKey::new(key, bytes.key_id());
            let verdict = |last| {
                let w =
                    check_header(&words, Kind::Heartbeat).and_then(|()| check_tunnel(&words, &by_id, last, &rules()));
                let b = check_header(&bytes, Kind::Heartbeat).and_then(|()| check_tunnel(&bytes, &key, last, &rules()));
                assert_eq!(w, b, "bit {bit:?}, last {last}");
                w
            };
            let _ = verdict(0);
            let _ = verdict(NOW - 1);
            if bit.is_none() {
                assert_eq!(verdict(0), Ok(()));
            }
        }
    }

    /// A plain heartbeat's tag comes from the state worked out per tunnel;
    /// a heartbeat with flags set, from the key.
    #[test]
    fn the_per_tunnel_state_is_what_tags_plain_heartbeats() {
        let key = SipKey::from_bytes(&KEY);
        let plain = MessageWords::from_bytes(&hand_built_heartbeat(9, NOW));
        let real = HeartbeatKey::new(key, 9);
        assert!(plain.tag_is_valid(&real));
        let state_only = HeartbeatKey { key: SipKey::default(), ..real };
        assert!(plain.tag_is_valid(&state_only), "the plain path must not need the key");
        let key_only = HeartbeatKey { after_prefix: SipState::default(), ..real };
        assert!(!plain.tag_is_valid(&key_only), "the plain path must use the per-tunnel state");

        let flagged =
            ControlMessage { flags: 0x80, ..ControlMessage::from_bytes(&hand_built_heartbeat(9, NOW)) }.sign(key);
        let flagged = MessageWords::from_bytes(&flagged.to_bytes());
        assert!(flagged.tag_is_valid(&key_only), "other first words are hashed from the key");
        assert!(!flagged.tag_is_valid(&state_only));
        // Another tunnel's id under this key: hashed from the key, not from
        // this tunnel's state.
        let other = MessageWords::from_bytes(&hand_built_heartbeat(10, NOW));
        assert!(other.tag_is_valid(&key_only));
        assert!(!other.tag_is_valid(&state_only));
    }

    #[test]
    fn ack_detail_carries_address_and_port() {
        assert_eq!(ControlMessage::endpoint_detail([203, 0, 113, 5], 0x9c41), [203, 0, 113, 5, 0x9c, 0x41, 0, 0]);
    }
}
