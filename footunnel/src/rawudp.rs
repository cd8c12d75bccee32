//! UDP datagrams from a port the kernel's FoU socket owns. A raw socket
//! lets broker and client send control messages from the tunnel's own port,
//! so every NAT maps them exactly like the tunnel's data (no SNAT rule), and
//! receive copies of what arrives there.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};

pub struct RawUdp {
    fd: OwnedFd,
    /// Type of service for the IPv4 header of what this socket sends.
    tos: std::cell::Cell<u8>,
}

/// A UDP datagram as a raw socket received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Vec<u8>,
}

impl RawUdp {
    /// A socket that sends and also receives a copy of every UDP datagram
    /// delivered to this host: only for whoever must read them.
    pub fn open() -> Result<Self> {
        Self::with_protocol(libc::IPPROTO_UDP)
    }

    /// A socket that only sends: `IPPROTO_RAW` receives nothing, so the kernel
    /// does not copy every UDP datagram (all FoU data among them) to it.
    pub fn send_only() -> Result<Self> {
        Self::with_protocol(libc::IPPROTO_RAW)
    }

    fn with_protocol(protocol: libc::c_int) -> Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("cannot open a raw UDP socket (needs CAP_NET_RAW)");
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let on: libc::c_int = 1;
        // SAFETY: valid option pointer and length.
        let rc = unsafe {
            libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_HDRINCL, (&on as *const libc::c_int).cast(), 4)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("IP_HDRINCL");
        }
        Ok(RawUdp { fd, tos: std::cell::Cell::new(0) })
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, value: &[u8], what: &str) -> Result<()> {
        // SAFETY: a valid buffer of the given length.
        let rc =
            unsafe { libc::setsockopt(self.fd.as_raw_fd(), level, name, value.as_ptr().cast(), value.len() as u32) };
        if rc < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("cannot set {what} on a raw socket"));
        }
        Ok(())
    }

    /// Sends with these tunnel parameters, as the tunnel's own packets leave:
    /// the firewall mark (policy routing), the underlay device, the TOS.
    pub fn set_path(&self, mark: u32, device: Option<u32>, tos: u8) -> Result<()> {
        self.setsockopt(libc::SOL_SOCKET, libc::SO_MARK, &mark.to_ne_bytes(), "SO_MARK")?;
        let ifindex = device.unwrap_or(0) as libc::c_int;
        self.setsockopt(libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX, &ifindex.to_ne_bytes(), "SO_BINDTOIFINDEX")?;
        self.tos.set(tos);
        Ok(())
    }

    /// Receives only UDP datagrams from `peer`:`peer_port` to `port` whose
    /// payload starts like a footunnel control message (high nibble 0xF):
    /// without a filter, a raw UDP socket gets a copy of every UDP datagram
    /// this host receives, the tunnel's data among them.
    pub fn only_control_messages(&self, peer: Ipv4Addr, peer_port: u16, port: u16) -> Result<()> {
        let filter = control_message_filter(peer, peer_port, port);
        let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr().cast_mut() };
        // SAFETY: a valid program for the duration of the call (the kernel copies it).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&program as *const libc::sock_fprog).cast::<u8>(),
                size_of::<libc::sock_fprog>(),
            )
        };
        self.setsockopt(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, bytes, "SO_ATTACH_FILTER")
    }

    pub fn set_nonblocking(&self) -> Result<()> {
        // SAFETY: fcntl on our descriptor.
        let flags = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error()).context("O_NONBLOCK");
        }
        Ok(())
    }

    /// Sends `payload` from `src`:`sport` to `dst`:`dport`. An unspecified
    /// `src` lets the kernel pick the address (and then carries no UDP checksum).
    pub fn send(&self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Result<()> {
        let mut packet = build(src, sport, dst, dport, payload);
        packet[1] = self.tos.get();
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(dst).to_be() },
            sin_zero: [0; 8],
        };
        // SAFETY: valid buffer and address.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("cannot send to {dst}:{dport}"));
        }
        Ok(())
    }

    /// The next datagram, or `None` if none is waiting (non-blocking socket).
    pub fn recv(&self) -> Result<Option<Datagram>> {
        let mut buf = [0u8; 2048];
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e).context("raw UDP receive");
        }
        Ok(parse(&buf[..n as usize]))
    }
}

impl AsRawFd for RawUdp {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// A classic BPF socket filter for [`RawUdp::only_control_messages`]. Raw
/// sockets see the packet from its IPv4 header on.
fn control_message_filter(peer: Ipv4Addr, peer_port: u16, port: u16) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const LDX_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH: X = 4 * (P[k] & 0xf)
    const LD_H_IND: u16 = 0x48; // BPF_LD | BPF_H | BPF_IND
    const LD_B_IND: u16 = 0x50; // BPF_LD | BPF_B | BPF_IND
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        op(LD_W_ABS, 0, 0, 12),           // source address
        op(JEQ_K, 0, 8, u32::from(peer)), // else → drop
        op(LDX_MSH, 0, 0, 0),             // X = IPv4 header length
        op(LD_H_IND, 0, 0, 0),            // UDP source port
        op(JEQ_K, 0, 5, u32::from(peer_port)),
        op(LD_H_IND, 0, 0, 2), // UDP destination port
        op(JEQ_K, 0, 3, u32::from(port)),
        op(LD_B_IND, 0, 0, 8), // first payload byte
        op(AND_K, 0, 0, 0xf0),
        op(JEQ_K, 1, 0, 0xf0),
        op(RET_K, 0, 0, 0),      // drop
        op(RET_K, 0, 0, 0xffff), // accept
    ]
}

/// IPv4 header (the kernel fills ID and header checksum) + UDP header + payload.
pub fn build(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    if !src.is_unspecified() {
        let checksum = udp_checksum(src, dst, &p[20..]);
        p[26..28].copy_from_slice(&checksum.to_be_bytes());
    }
    p
}

fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            sum += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, libc::IPPROTO_UDP as u8]);
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

/// An IPv4 packet as raw sockets deliver it, if it is a whole UDP datagram.
pub fn parse(packet: &[u8]) -> Option<Datagram> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.first()? >> 4 != 4 || *packet.get(9)? != libc::IPPROTO_UDP as u8 || ihl < 20 {
        return None;
    }
    let udp = packet.get(ihl..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some(Datagram {
        src: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        dst: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
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
        assert_eq!((d.src, d.dst, d.sport, d.dport, d.payload.as_slice()), (src, dst, 42424, 40001, &b"hello"[..]));
        // Verifying a correct checksum over the pseudo-header yields 0 (RFC 768).
        let mut check = p.clone();
        let stored = u16::from_be_bytes([check[26], check[27]]);
        check[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(udp_checksum(src, dst, &check[20..]), stored);
        assert_ne!(stored, 0);
    }
}
