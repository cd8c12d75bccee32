//! Parse: Ethernet → IPv4 → UDP. Shared by the XDP and TC entry points (each
//! supplies its own bounds-checked byte access) and by host unit tests.
//!
//! Every read is bounds-checked against the packet end, which is also what
//! the verifier needs to see; offsets stay bounded (IHL ≤ 15 words).

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const IPPROTO_UDP: u8 = 17;
pub const UDP_HLEN: usize = 8;

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
}

impl PacketBytes for [u8] {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }
}

/// An IPv4/UDP datagram's addressing, as seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Udp4 {
    pub src_addr: [u8; 4],
    pub dst_addr: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset of the UDP payload from the start of the Ethernet frame.
    pub payload_offset: usize,
    /// UDP payload length as the UDP header states it.
    pub payload_len: usize,
}

/// What the first headers say about a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4, not UDP, or too short to tell: none of our business.
    Other,
    /// An IPv4 fragment: passed untouched, its UDP header may be elsewhere.
    Fragment,
    /// Headers claim more than the frame holds, or lengths contradict.
    Malformed,
    Udp(Udp4),
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parse an Ethernet frame down to its UDP payload.
#[inline(always)]
pub fn parse_udp4<P: PacketBytes + ?Sized>(pkt: &P) -> Parsed {
    let Some(ethertype) = pkt.read::<2>(12) else {
        return Parsed::Other;
    };
    if be16(ethertype) != ETH_P_IP {
        return Parsed::Other;
    }
    // version/IHL .. protocol: the first 10 bytes of the IPv4 header.
    let Some(ip) = pkt.read::<20>(ETH_HLEN) else {
        return Parsed::Other;
    };
    if ip[0] >> 4 != 4 || ip[9] != IPPROTO_UDP {
        return Parsed::Other;
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Parsed::Malformed;
    }
    // More-fragments flag or a non-zero offset.
    if be16([ip[6], ip[7]]) & 0x3fff != 0 {
        return Parsed::Fragment;
    }
    let total_len = be16([ip[2], ip[3]]) as usize;
    let l4 = ETH_HLEN + ihl;
    let Some(udp) = pkt.read::<UDP_HLEN>(l4) else {
        return Parsed::Malformed;
    };
    let udp_len = be16([udp[4], udp[5]]) as usize;
    if udp_len < UDP_HLEN || ihl + udp_len > total_len {
        return Parsed::Malformed;
    }
    Parsed::Udp(Udp4 {
        src_addr: [ip[12], ip[13], ip[14], ip[15]],
        dst_addr: [ip[16], ip[17], ip[18], ip[19]],
        src_port: be16([udp[0], udp[1]]),
        dst_port: be16([udp[2], udp[3]]),
        payload_offset: l4 + UDP_HLEN,
        payload_len: udp_len - UDP_HLEN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let Parsed::Udp(u) = parse_udp4(&f[..]) else { panic!("not parsed: {:?}", parse_udp4(&f[..])) };
        assert_eq!(u.src_addr, [192, 0, 2, 7]);
        assert_eq!(u.dst_addr, [198, 51, 100, 1]);
        assert_eq!((u.src_port, u.dst_port), (40000, 42424));
        assert_eq!(&f[u.payload_offset..u.payload_offset + u.payload_len], b"hello");
    }

    #[test]
    fn ip_options_move_the_udp_header() {
        let f = frame(&[1, 1, 1, 0, 7, 3, 4, 0], IPPROTO_UDP, 0, 1, 42424, b"xy");
        let Parsed::Udp(u) = parse_udp4(&f[..]) else { panic!() };
        assert_eq!(u.dst_port, 42424);
        assert_eq!(u.payload_offset, 14 + 28 + 8);
        assert_eq!(u.payload_len, 2);
    }

    #[test]
    fn fragments_are_reported_not_parsed() {
        assert_eq!(parse_udp4(&frame(&[], IPPROTO_UDP, 0x2000, 1, 42424, b"a")[..]), Parsed::Fragment);
        assert_eq!(parse_udp4(&frame(&[], IPPROTO_UDP, 0x0010, 1, 42424, b"a")[..]), Parsed::Fragment);
        // Don't-fragment alone is a whole datagram.
        assert!(matches!(parse_udp4(&frame(&[], IPPROTO_UDP, 0x4000, 1, 42424, b"a")[..]), Parsed::Udp(_)));
    }

    #[test]
    fn non_udp_and_non_ipv4_are_other() {
        assert_eq!(parse_udp4(&frame(&[], 6, 0, 1, 42424, b"a")[..]), Parsed::Other);
        let mut f = frame(&[], IPPROTO_UDP, 0, 1, 42424, b"a");
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(parse_udp4(&f[..]), Parsed::Other);
    }

    #[test]
    fn every_truncation_is_rejected_without_panicking() {
        let f = frame(&[1, 1, 1, 0], IPPROTO_UDP, 0, 1, 42424, b"payload");
        for len in 0..f.len() {
            let p = parse_udp4(&f[..len]);
            assert!(!matches!(p, Parsed::Udp(_)) || len >= f.len() - 7, "len {len}: {p:?}");
        }
    }

    #[test]
    fn contradictory_lengths_are_malformed() {
        let mut f = frame(&[], IPPROTO_UDP, 0, 1, 42424, b"abc");
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(parse_udp4(&f[..]), Parsed::Malformed);
        f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(parse_udp4(&f[..]), Parsed::Malformed);
        let mut g = frame(&[], IPPROTO_UDP, 0, 1, 42424, b"abc");
        g[14] = 0x43;
        assert_eq!(parse_udp4(&g[..]), Parsed::Malformed);
    }
}
