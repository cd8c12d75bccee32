//! UDP datagrams as raw sockets carry them: built with their IP header and
//! checksum for sending, parsed back from what a raw socket receives.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const IPPROTO_UDP: u8 = 17;

/// A UDP datagram as a raw socket received it. Over IPv6 the kernel does
/// not pass the destination address up: `dst` is then unspecified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

/// UDP header (checksum 0, for the caller to fill) + payload.
pub(super) fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    udp
}

/// IPv4 header (the kernel fills ID and header checksum) + UDP header + payload.
pub fn build(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&udp_datagram(sport, dport, payload));
    if !src.is_unspecified() {
        let checksum = udp_checksum(&src.octets(), &dst.octets(), &p[20..]);
        p[26..28].copy_from_slice(&checksum.to_be_bytes());
    }
    p
}

/// IPv6 header (traffic class `tclass`, hop limit 64) + UDP header, with
/// its checksum (mandatory over IPv6), + payload.
pub fn build6(tclass: u8, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0x60 | tclass >> 4, tclass << 4, 0, 0];
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[IPPROTO_UDP, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&udp_datagram(sport, dport, payload));
    let checksum = udp_checksum(&src.octets(), &dst.octets(), &p[40..]);
    p[46..48].copy_from_slice(&checksum.to_be_bytes());
    p
}

/// The UDP checksum over the pseudo-header of either family (RFC 768,
/// RFC 8200 §8.1): the same sum with 4- or 16-byte addresses.
fn udp_checksum(src: &[u8], dst: &[u8], udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        }
    };
    add(src);
    add(dst);
    add(&[0, IPPROTO_UDP]);
    add(&(udp.len() as u16).to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// A UDP datagram as raw IPv6 sockets deliver it (from the UDP header on).
pub(super) fn parse_udp(src: IpAddr, udp: &[u8]) -> Option<Datagram> {
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some(Datagram {
        src,
        dst: Ipv6Addr::UNSPECIFIED.into(),
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp.get(8..len.max(8))?.to_vec(),
    })
}

/// An IPv4 packet as raw sockets deliver it, if it is a whole UDP datagram.
pub fn parse(packet: &[u8]) -> Option<Datagram> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != IPPROTO_UDP || ihl < 20 {
        return None;
    }
    let udp = packet.get(ihl..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some(Datagram {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]).into(),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]).into(),
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp.get(8..len.max(8))?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_datagrams_parse_back_and_checksum_to_zero() {
        let (src, dst) = (Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(203, 0, 113, 5));
        let p = build(src, 42424, dst, 40001, b"hello");
        let d = parse(&p).unwrap();
        assert_eq!(
            (d.src, d.dst, d.sport, d.dport, d.payload.as_slice()),
            (src.into(), dst.into(), 42424, 40001, &b"hello"[..])
        );
        // Verifying a correct checksum over the pseudo-header yields 0 (RFC 768).
        let mut check = p.clone();
        let stored = u16::from_be_bytes([check[26], check[27]]);
        check[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(udp_checksum(&src.octets(), &dst.octets(), &check[20..]), stored);
        assert_ne!(stored, 0);
    }

    #[test]
    fn built_ipv6_datagrams_carry_their_lengths_and_a_checksum_that_verifies() {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = ("2001:db8::1".parse().unwrap(), "2001:db8:10::5".parse().unwrap());
        let p = build6(0xb8, src, 42424, dst, 40001, b"hello");
        assert_eq!((p[0], p[1] & 0xf0), (0x6b, 0x80), "version 6, traffic class 0xb8");
        assert_eq!((u16::from_be_bytes([p[4], p[5]]), p[6], p[7]), (13, 17, 64));
        assert_eq!((&p[8..24], &p[24..40]), (&src.octets()[..], &dst.octets()[..]));
        assert_eq!(parse_udp(src.into(), &p[40..]).unwrap().payload, b"hello");
        // Summing a datagram with its checksum in place gives all ones (RFC 1071).
        let mut sum: u32 = [&src.octets()[..], &dst.octets()[..], &[0, 17], &13u16.to_be_bytes(), &p[40..]]
            .iter()
            .flat_map(|b| b.chunks(2))
            .map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0)))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }
}
