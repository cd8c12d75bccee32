//! Parse: Ethernet → IPv4 or IPv6 (with its extension headers) → UDP.
//! Shared by the XDP and TC entry points (each supplies its own
//! bounds-checked byte access) and by host unit tests.
//!
//! Every read is bounds-checked against the packet end, which is also what
//! the verifier needs to see; offsets stay bounded (IHL ≤ 15 words, at most
//! [`MAX_EXTENSION_HEADERS`] IPv6 extension headers of ≤ 2 KiB each).

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const IPPROTO_UDP: u8 = 17;
/// Plain IP-in-IP (no UDP): what an external-mode ipip device also takes.
pub const IPPROTO_IPIP: u8 = 4;
pub const UDP_HLEN: usize = 8;
/// IPv4 without options; IPv6 without extension headers.
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
/// IPv6 extension headers walked before the UDP header: hop-by-hop options,
/// routing and destination options, in any order. A datagram with more is
/// [`Parsed::Unwalked`]: counted and passed unchecked.
pub const MAX_EXTENSION_HEADERS: usize = 4;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// An outer address: IPv6, or IPv4 mapped into IPv6 (`::ffff:a.b.c.d`), so
/// maps and events have one layout for both families. The bytes as on the
/// wire, 4-byte aligned so they compare as four words: eBPF has no
/// unaligned loads, and byte-wise compares cost registers the 512-byte stack
/// then pays for in spills.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Addr(pub [u8; 16]);

pub const UNSPECIFIED: Addr = Addr([0; 16]);

/// `a.b.c.d` as `::ffff:a.b.c.d`.
#[inline(always)]
pub const fn mapped(v4: [u8; 4]) -> Addr {
    Addr([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]])
}

impl Addr {
    #[inline(always)]
    fn words(&self) -> &[u32; 4] {
        // SAFETY: 16 bytes, 4-aligned (repr align(4)), every bit pattern valid.
        unsafe { &*(self as *const Addr).cast::<[u32; 4]>() }
    }

    /// The IPv4 address inside a mapped one.
    #[inline(always)]
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let w = self.words();
        let prefix = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        (w[0] == 0 && w[1] == 0 && w[2] == prefix).then_some(w[3].to_ne_bytes())
    }

    pub fn is_unspecified(&self) -> bool {
        same_addr(self, &UNSPECIFIED)
    }

    /// As userspace sees it: IPv4 when mapped.
    pub fn ip(&self) -> core::net::IpAddr {
        match self.as_v4() {
            Some(v4) => core::net::IpAddr::from(v4),
            None => core::net::IpAddr::from(self.0),
        }
    }
}

impl From<core::net::IpAddr> for Addr {
    fn from(ip: core::net::IpAddr) -> Self {
        match ip {
            core::net::IpAddr::V4(v4) => mapped(v4.octets()),
            core::net::IpAddr::V6(v6) => Addr(v6.octets()),
        }
    }
}

impl From<core::net::Ipv4Addr> for Addr {
    fn from(ip: core::net::Ipv4Addr) -> Self {
        mapped(ip.octets())
    }
}

/// Address equality, word by word.
#[inline(always)]
pub fn same_addr(a: &Addr, b: &Addr) -> bool {
    let (a, b) = (a.words(), b.words());
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) == 0
}

/// Bounds-checked access to a packet's bytes.
pub trait PacketBytes {
    /// `N` bytes at `offset`, or `None` if they are not all in the packet.
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// The same, for offsets that vary inside a loop, where the compiler's
    /// rewrites of the bounds check lose the verifier (the eBPF side hides
    /// the offset from the optimizer; elsewhere it is just `read`).
    #[inline(always)]
    fn read_in_loop<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.read(offset)
    }

    /// The big-endian u16 at `offset`. The eBPF side loads it in one
    /// instruction: LLVM's BPF backend assembles an unaligned read from
    /// single bytes, three instructions per byte, on the path every
    /// packet takes.
    #[inline(always)]
    fn be16_at(&self, offset: usize) -> Option<u16> {
        self.read::<2>(offset).map(u16::from_be_bytes)
    }

    /// The 4 bytes at `offset`, which may vary (an address: one load on the
    /// eBPF side, as [`PacketBytes::be16_at`]).
    #[inline(always)]
    fn bytes4_at(&self, offset: usize) -> Option<[u8; 4]> {
        self.read_in_loop::<4>(offset)
    }

    /// `N` little-endian u64s from `offset` on (a control message: one
    /// bound check and one load a word on the eBPF side).
    #[inline(always)]
    fn le64s<const N: usize>(&self, offset: usize) -> Option<[u64; N]> {
        let mut out = [0u64; N];
        for (i, v) in out.iter_mut().enumerate() {
            *v = u64::from_le_bytes(self.read::<8>(offset + 8 * i)?);
        }
        Some(out)
    }

    /// `N` bytes at `offset`, bounds-checked once, to read 16 bits at a
    /// time with [`Checked::be16`]: each field is loaded where it is used,
    /// so a test that fails early loads none of the rest (the eBPF side
    /// emits [`PacketBytes::be16s`]'s loads all before its first use).
    #[inline(always)]
    fn checked<const N: usize>(&self, offset: usize) -> Option<Checked<'_, Self, N>> {
        self.read::<N>(offset).map(|_| Checked { pkt: self, at: offset })
    }

    /// The big-endian u16 at `at + OFFSET`, which [`PacketBytes::checked`]
    /// has bounds-checked (for the eBPF side, `at` is its address, and
    /// `OFFSET` the load instruction's own offset).
    ///
    /// # Safety
    /// `at + OFFSET` and the byte after it lie in a region `checked` returned.
    #[inline(always)]
    unsafe fn be16_checked<const OFFSET: usize>(&self, at: usize) -> u16 {
        self.be16_at(at + OFFSET).expect("a read inside a checked region")
    }

    /// `N` big-endian u16s from `offset` on, which may vary (one bound
    /// check on the eBPF side, as [`PacketBytes::read_in_loop`]).
    #[inline(always)]
    fn be16s<const N: usize>(&self, offset: usize) -> Option<[u16; N]> {
        let mut out = [0u16; N];
        for (i, v) in out.iter_mut().enumerate() {
            *v = u16::from_be_bytes(self.read_in_loop::<2>(offset + 2 * i)?);
        }
        Some(out)
    }
}

/// `N` bytes of a packet that are known to be there; see
/// [`PacketBytes::checked`].
pub struct Checked<'a, P: ?Sized, const N: usize> {
    pkt: &'a P,
    /// Where the bytes start, as `pkt` addresses them.
    at: usize,
}

impl<'a, P: PacketBytes + ?Sized, const N: usize> Checked<'a, P, N> {
    /// # Safety
    /// The `N` bytes at `at` are in the packet, as `pkt` addresses it.
    #[inline(always)]
    pub unsafe fn new(pkt: &'a P, at: usize) -> Self {
        Checked { pkt, at }
    }

    /// The big-endian u16 at byte `OFFSET` of these `N` (checked at
    /// compile time to lie inside them).
    #[inline(always)]
    pub fn be16<const OFFSET: usize>(&self) -> u16 {
        const { assert!(OFFSET + 2 <= N) };
        // SAFETY: inside the N bytes checked when `self` was made.
        unsafe { self.pkt.be16_checked::<OFFSET>(self.at) }
    }
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }
}

/// A UDP datagram's addressing, as seen on the wire. [`parse_udp`] fills
/// ports and offsets; [`read_addresses`] the addresses, once the port shows
/// the datagram is ours (unrelated traffic never pays for them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Udp {
    pub src_addr: Addr,
    pub dst_addr: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// The outer header is IPv6.
    pub ipv6: bool,
    /// Offset of the UDP payload from the start of the Ethernet frame.
    pub payload_offset: usize,
    /// UDP payload length as the UDP header states it.
    pub payload_len: usize,
}

/// What the first headers say about a frame. `port`: the UDP destination
/// port where the UDP header could still be read, so only datagrams to a
/// watched port are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IP, not UDP, or too short to tell: none of our business.
    Other,
    /// A fragment: passed untouched; only the first one has the UDP header.
    Fragment { port: Option<u16> },
    /// Headers claim more than the frame holds, or lengths contradict.
    Malformed { port: Option<u16> },
    /// IPv6 with more extension headers than are walked: passed unchecked.
    Unwalked,
    /// Plain IP-in-IP over IPv4 (protocol 4, no UDP).
    IpInIp,
    /// A whole UDP datagram: its addressing is in the caller's [`Udp`].
    Udp,
}

/// Where an IP header says its UDP header is, and how many bytes it says
/// follow from there.
struct Located {
    l4: usize,
    room: usize,
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parse an Ethernet frame down to its UDP payload, into `udp` (one
/// struct, filled in place: each copy of it would cost eBPF stack).
#[inline(always)]
pub fn parse_udp<P: PacketBytes + ?Sized>(pkt: &P, udp: &mut Udp) -> Parsed {
    let Some(ethertype) = pkt.be16_at(12) else {
        return Parsed::Other;
    };
    let located = match ethertype {
        ETH_P_IP => locate_udp4(pkt, udp),
        ETH_P_IPV6 => locate_udp6(pkt, udp),
        _ => return Parsed::Other,
    };
    let Located { l4, room } = match located {
        Ok(l) => l,
        Err(parsed) => return parsed,
    };
    // The whole UDP header, checksum included, must be there.
    let Some([src_port, dst_port, udp_len, _]) = pkt.be16s::<4>(l4) else {
        return Parsed::Malformed { port: pkt.be16s::<2>(l4).map(|[_, dport]| dport) };
    };
    let udp_len = udp_len as usize;
    if udp_len < UDP_HLEN || udp_len > room {
        return Parsed::Malformed { port: Some(dst_port) };
    }
    udp.src_port = src_port;
    udp.dst_port = dst_port;
    udp.payload_offset = l4 + UDP_HLEN;
    udp.payload_len = udp_len - UDP_HLEN;
    Parsed::Udp
}

/// The source and destination addresses of a datagram [`parse_udp`]
/// located (IPv4 mapped into IPv6); false if they cannot be read.
#[inline(always)]
pub fn read_addresses<P: PacketBytes + ?Sized>(pkt: &P, udp: &mut Udp) -> bool {
    if udp.ipv6 {
        // One read after the other, each with its own exit: read together,
        // LLVM may carry a failed read's undefined value into the other's
        // path, which the verifier refuses.
        let Some(src) = pkt.read::<16>(ETH_HLEN + 8) else { return false };
        let Some(dst) = pkt.read::<16>(ETH_HLEN + 24) else { return false };
        udp.src_addr = Addr(src);
        udp.dst_addr = Addr(dst);
    } else {
        let Some(src) = pkt.bytes4_at(ETH_HLEN + 12) else { return false };
        let Some(dst) = pkt.bytes4_at(ETH_HLEN + 16) else { return false };
        udp.src_addr = mapped(src);
        udp.dst_addr = mapped(dst);
    }
    true
}

#[inline(always)]
fn locate_udp4<P: PacketBytes + ?Sized>(pkt: &P, udp: &mut Udp) -> Result<Located, Parsed> {
    // The whole fixed header must be there; only the fields used are loaded,
    // 16 bits at a time: no copy of the header.
    let Some([version_tos, total_len, _, frag, ttl_protocol, ..]) = pkt.be16s::<10>(ETH_HLEN) else {
        return Err(Parsed::Other);
    };
    let version_ihl = (version_tos >> 8) as u8;
    if version_ihl >> 4 != 4 {
        return Err(Parsed::Other);
    }
    if ttl_protocol as u8 != IPPROTO_UDP {
        return Err(if ttl_protocol as u8 == IPPROTO_IPIP { Parsed::IpInIp } else { Parsed::Other });
    }
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if ihl < IPV4_HLEN {
        return Err(Parsed::Malformed { port: None });
    }
    let l4 = ETH_HLEN + ihl;
    // More-fragments flag or a non-zero offset; only the first has the port.
    if frag & 0x3fff != 0 {
        let port = if frag & 0x1fff == 0 { pkt.be16s::<2>(l4).map(|[_, dport]| dport) } else { None };
        return Err(Parsed::Fragment { port });
    }
    udp.ipv6 = false;
    Ok(Located { l4, room: (total_len as usize).saturating_sub(ihl) })
}

#[inline(always)]
fn locate_udp6<P: PacketBytes + ?Sized>(pkt: &P, udp: &mut Udp) -> Result<Located, Parsed> {
    let Some([version_class, _, payload_len, next_hop_limit]) = pkt.be16s::<4>(ETH_HLEN) else {
        return Err(Parsed::Other);
    };
    if version_class >> 12 != 6 {
        return Err(Parsed::Other);
    }
    let mut next = (next_hop_limit >> 8) as u8;
    // Bytes of extension headers between the IPv6 header and the UDP header.
    let mut ext = 0usize;
    let mut walked = 0;
    while next != IPPROTO_UDP {
        if walked == MAX_EXTENSION_HEADERS {
            return Err(Parsed::Unwalked);
        }
        walked += 1;
        let at = ETH_HLEN + IPV6_HLEN + ext;
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some([nh, len]) = pkt.read_in_loop::<2>(at) else { return Err(Parsed::Malformed { port: None }) };
                next = nh;
                ext += (len as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some(frag) = pkt.read_in_loop::<4>(at) else { return Err(Parsed::Malformed { port: None }) };
                let first = be16([frag[2], frag[3]]) & 0xfff8 == 0;
                let port =
                    if first && frag[0] == IPPROTO_UDP { pkt.be16s::<2>(at + 8).map(|[_, dport]| dport) } else { None };
                return Err(Parsed::Fragment { port });
            }
            // ESP, AH, no next header, another protocol: not plain UDP.
            _ => return Err(Parsed::Other),
        }
    }
    udp.ipv6 = true;
    // A jumbogram (payload length 0) has no room.
    let room = (payload_len as usize).saturating_sub(ext);
    Ok(Located { l4: ETH_HLEN + IPV6_HLEN + ext, room })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parse result, with the addressing where it was found.
    fn parse(f: &[u8]) -> Result<Udp, Parsed> {
        let mut udp = Udp::default();
        match parse_udp(f, &mut udp) {
            Parsed::Udp => {
                assert!(read_addresses(f, &mut udp), "a located datagram's addresses are in the frame");
                Ok(udp)
            }
            other => Err(other),
        }
    }

    /// Ethernet + IPv4 (with `options`) + UDP + payload, lengths consistent.
    fn frame(options: &[u8], proto: u8, frag: u16, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let ihl = 20 + options.len();
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        f.push(0x40 | (ihl / 4) as u8);
        f.push(0);
        f.extend_from_slice(&((ihl + 8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
        f.extend_from_slice(options);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn udp_headers_and_payload_are_located() {
        let f = frame(&[], IPPROTO_UDP, 0, 40000, 42424, b"hello");
        let u = parse(&f).unwrap();
        assert_eq!(u.src_addr, mapped([192, 0, 2, 7]));
        assert_eq!(u.src_addr.as_v4(), Some([192, 0, 2, 7]));
        assert_eq!(u.dst_addr, mapped([198, 51, 100, 1]));
        assert_eq!((u.src_port, u.dst_port), (40000, 42424));
        assert_eq!(&f[u.payload_offset..u.payload_offset + u.payload_len], b"hello");
    }

    #[test]
    fn ip_options_move_the_udp_header() {
        let f = frame(&[1, 1, 1, 0, 7, 3, 4, 0], IPPROTO_UDP, 0, 1, 42424, b"xy");
        let u = parse(&f).unwrap();
        assert_eq!(u.dst_port, 42424);
        assert_eq!(u.payload_offset, 14 + 28 + 8);
        assert_eq!(u.payload_len, 2);
    }

    #[test]
    fn fragments_are_reported_not_parsed() {
        let first = Parsed::Fragment { port: Some(42424) };
        assert_eq!(parse(&frame(&[], IPPROTO_UDP, 0x2000, 1, 42424, b"a")), Err(first));
        // A later fragment's payload is not a UDP header.
        assert_eq!(parse(&frame(&[], IPPROTO_UDP, 0x0010, 1, 42424, b"a")), Err(Parsed::Fragment { port: None }));
        // Don't-fragment alone is a whole datagram.
        assert!(parse(&frame(&[], IPPROTO_UDP, 0x4000, 1, 42424, b"a")).is_ok());
    }

    #[test]
    fn non_udp_and_non_ipv4_are_other() {
        assert_eq!(parse(&frame(&[], 6, 0, 1, 42424, b"a")), Err(Parsed::Other));
        let mut f = frame(&[], IPPROTO_UDP, 0, 1, 42424, b"a");
        f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        assert_eq!(parse(&f), Err(Parsed::Other));
        // IPv6's ethertype over an IPv4 header.
        f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
        assert_eq!(parse(&f), Err(Parsed::Other));
    }

    #[test]
    fn every_truncation_is_rejected_without_panicking() {
        let f = frame(&[1, 1, 1, 0], IPPROTO_UDP, 0, 1, 42424, b"payload");
        for len in 0..f.len() {
            let p = parse(&f[..len]);
            assert!(p.is_err() || len >= f.len() - 7, "len {len}: {p:?}");
        }
    }

    #[test]
    fn contradictory_lengths_are_malformed() {
        let mut f = frame(&[], IPPROTO_UDP, 0, 1, 42424, b"abc");
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(parse(&f), Err(Parsed::Malformed { port: Some(42424) }));
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parse(&f), Err(Parsed::Malformed { port: Some(42424) }));
        let mut g = frame(&[], IPPROTO_UDP, 0, 1, 42424, b"abc");
        g[14] = 0x43;
        assert_eq!(parse(&g), Err(Parsed::Malformed { port: None }));
    }

    const SRC6: Addr = Addr([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    const DST6: Addr = Addr([0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

    /// Ethernet + IPv6 + the given extension headers (each: its type and its
    /// whole bytes, next-header byte included and overwritten) + UDP + payload.
    fn frame6(ext: &[(u8, Vec<u8>)], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let ext_len: usize = ext.iter().map(|(_, b)| b.len()).sum();
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext_len + 8 + payload.len()) as u16).to_be_bytes());
        f.push(ext.first().map_or(IPPROTO_UDP, |(t, _)| *t));
        f.push(64);
        f.extend_from_slice(&SRC6.0);
        f.extend_from_slice(&DST6.0);
        for (i, (_, bytes)) in ext.iter().enumerate() {
            let mut b = bytes.clone();
            b[0] = ext.get(i + 1).map_or(IPPROTO_UDP, |(t, _)| *t);
            f.extend_from_slice(&b);
        }
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// An options header (hop-by-hop or destination) of `words` × 8 bytes.
    fn options(kind: u8, words: usize) -> (u8, Vec<u8>) {
        let mut b = vec![0u8; words * 8];
        b[1] = (words - 1) as u8;
        // PadN over the rest, so the header is valid as well as walkable.
        b[2] = 1;
        b[3] = (words * 8 - 4) as u8;
        (kind, b)
    }

    #[test]
    fn ipv6_udp_is_located_with_full_addresses() {
        let f = frame6(&[], 40000, 42424, b"hello");
        let u = parse(&f).unwrap();
        assert_eq!((u.src_addr, u.dst_addr), (SRC6, DST6));
        assert_eq!(u.src_addr.as_v4(), None);
        assert_eq!((u.src_port, u.dst_port), (40000, 42424));
        assert_eq!(&f[u.payload_offset..u.payload_offset + u.payload_len], b"hello");
    }

    #[test]
    fn ipv6_extension_headers_are_walked_up_to_the_limit() {
        let three = [
            options(IPPROTO_HOPOPTS, 1),
            (IPPROTO_ROUTING, vec![0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            options(IPPROTO_DSTOPTS, 2),
        ];
        let f = frame6(&three, 1, 42424, b"xy");
        let u = parse(&f).unwrap();
        assert_eq!(u.payload_offset, 14 + 40 + 8 + 24 + 16 + 8);
        assert_eq!((u.dst_port, u.payload_len), (42424, 2));
        let four: Vec<_> = (0..MAX_EXTENSION_HEADERS).map(|_| options(IPPROTO_DSTOPTS, 1)).collect();
        assert!(parse(&frame6(&four, 1, 42424, b"xy")).is_ok());
        let five: Vec<_> = (0..=MAX_EXTENSION_HEADERS).map(|_| options(IPPROTO_DSTOPTS, 1)).collect();
        assert_eq!(parse(&frame6(&five, 1, 42424, b"xy")), Err(Parsed::Unwalked));
    }

    #[test]
    fn ipv6_fragments_esp_and_bad_lengths() {
        let first = (IPPROTO_FRAGMENT, vec![0, 0, 0, 1, 0, 0, 0, 9]);
        assert_eq!(parse(&frame6(&[first], 1, 42424, b"a")), Err(Parsed::Fragment { port: Some(42424) }));
        let later = (IPPROTO_FRAGMENT, vec![0, 0, 0, 0x10, 0, 0, 0, 9]);
        assert_eq!(parse(&frame6(&[later], 1, 42424, b"a")), Err(Parsed::Fragment { port: None }));
        let mut esp = frame6(&[], 1, 42424, b"a");
        esp[14 + 6] = 50;
        assert_eq!(parse(&esp), Err(Parsed::Other));
        let mut long = frame6(&[], 1, 42424, b"abc");
        long[14 + 40 + 4..14 + 40 + 6].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(parse(&long), Err(Parsed::Malformed { port: Some(42424) }));
        // An extension header claiming more than the frame holds.
        let mut huge = frame6(&[options(IPPROTO_HOPOPTS, 1)], 1, 42424, b"abc");
        huge[14 + 40 + 1] = 255;
        assert_eq!(parse(&huge), Err(Parsed::Malformed { port: None }));
        for len in 0..long.len() {
            let f = frame6(&[options(IPPROTO_DSTOPTS, 1)], 1, 42424, b"payload");
            let p = parse(&f[..len.min(f.len())]);
            assert!(p.is_err() || len >= f.len() - 7, "len {len}: {p:?}");
        }
    }

    #[test]
    fn mapped_addresses_round_trip_and_compare() {
        assert_eq!(mapped([192, 0, 2, 1]).as_v4(), Some([192, 0, 2, 1]));
        assert_eq!(UNSPECIFIED.as_v4(), None);
        assert!(same_addr(&SRC6, &SRC6));
        assert!(!same_addr(&SRC6, &DST6));
        let mut low = SRC6;
        low.0[15] ^= 1;
        assert!(!same_addr(&SRC6, &low));
        let mut high = SRC6;
        high.0[0] ^= 0x80;
        assert!(!same_addr(&SRC6, &high));
        assert!(UNSPECIFIED.is_unspecified() && !mapped([0, 0, 0, 0]).is_unspecified());
        let v4: core::net::IpAddr = "192.0.2.1".parse().unwrap();
        let v6: core::net::IpAddr = "2001:db8:1::7".parse().unwrap();
        assert_eq!((Addr::from(v4).ip(), Addr::from(v6).ip()), (v4, v6));
        assert_eq!(Addr::from(v6), SRC6);
        assert!(!same_addr(&SRC6, &low));
    }
}
