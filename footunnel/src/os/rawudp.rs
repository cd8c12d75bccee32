//! UDP datagrams from a port the kernel's FoU socket owns. A raw socket
//! lets broker and client send control messages from the tunnel's own port,
//! so every NAT maps them exactly like the tunnel's data (no SNAT rule), and
//! receive copies of what arrives there. One socket per family: IPv4 with
//! the IP header built here, IPv6 with the kernel building it.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

use super::datagram::{Datagram, build, build6, parse, parse_udp, udp_datagram};

pub struct RawUdp {
    fd: OwnedFd,
    ipv6: bool,
    /// IPv6 with the header built here (`IPPROTO_RAW`: receives nothing).
    header_included: bool,
    /// Type of service (IPv4) or traffic class (IPv6) of what this sends.
    tos: std::cell::Cell<u8>,
    /// The firewall mark and underlay device last set ([`RawUdp::set_path`]):
    /// a new socket has neither, so nothing is set until one is wanted
    /// (qemu-user, where the router client is tested, passes neither option).
    path: std::cell::Cell<(u32, Option<u32>)>,
    /// Routes each packet by its source address (IP_PKTINFO/IPV6_PKTINFO),
    /// which must then be one of this host's.
    by_source: bool,
}

impl RawUdp {
    /// An IPv4 socket that sends and also receives a copy of every UDP
    /// datagram delivered to this host: only for whoever must read them.
    pub fn open() -> Result<Self> {
        Self::v4(libc::IPPROTO_UDP)
    }

    /// An IPv4 socket that only sends: `IPPROTO_RAW` receives nothing, so the
    /// kernel does not copy every UDP datagram (all FoU data among them) to it.
    pub fn send_only() -> Result<Self> {
        Self::v4(libc::IPPROTO_RAW)
    }

    /// The IPv6 socket: sends, and receives a copy of every IPv6 UDP
    /// datagram (filter it: [`RawUdp::only_control_messages`]).
    pub fn open6() -> Result<Self> {
        let fd = socket(libc::AF_INET6, libc::IPPROTO_UDP)?;
        let raw = RawUdp {
            fd,
            ipv6: true,
            header_included: false,
            tos: Default::default(),
            path: Default::default(),
            by_source: false,
        };
        // The kernel computes the UDP checksum (mandatory over IPv6) at offset 6.
        raw.setsockopt(libc::IPPROTO_IPV6, libc::IPV6_CHECKSUM, &6i32.to_ne_bytes(), "IPV6_CHECKSUM")?;
        Ok(raw)
    }

    /// For the family of `addr`: [`RawUdp::open`] or [`RawUdp::open6`].
    pub fn open_for(addr: IpAddr) -> Result<Self> {
        if addr.is_ipv6() { Self::open6() } else { Self::open() }
    }

    /// An IPv6 socket that only sends, from a given source address: as
    /// `send_only`, `IPPROTO_RAW` receives nothing (an `IPPROTO_UDP` one
    /// would be handed a clone of every IPv6 UDP datagram, the tunnels'
    /// data among them), and the IPv6 header is built here.
    pub fn send_only6() -> Result<Self> {
        let fd = socket(libc::AF_INET6, libc::IPPROTO_RAW)?;
        Ok(RawUdp {
            fd,
            ipv6: true,
            header_included: true,
            tos: Default::default(),
            path: Default::default(),
            by_source: false,
        })
    }

    fn v4(protocol: libc::c_int) -> Result<Self> {
        let raw = RawUdp {
            fd: socket(libc::AF_INET, protocol)?,
            ipv6: false,
            header_included: true,
            tos: Default::default(),
            path: Default::default(),
            by_source: false,
        };
        raw.setsockopt(libc::IPPROTO_IP, libc::IP_HDRINCL, &1i32.to_ne_bytes(), "IP_HDRINCL")?;
        Ok(raw)
    }

    /// Routes what this sends by its source address, as a socket bound to
    /// it would be: on a policy-routed, multi-homed host an answer then
    /// leaves by the uplink its source belongs to. Sources must be local.
    pub fn routed_by_source(mut self) -> Self {
        self.by_source = true;
        self
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
        let (old_mark, old_device) = self.path.get();
        if mark != old_mark {
            self.setsockopt(libc::SOL_SOCKET, libc::SO_MARK, &mark.to_ne_bytes(), "SO_MARK")?;
        }
        if device != old_device {
            let ifindex = device.unwrap_or(0) as libc::c_int;
            self.setsockopt(libc::SOL_SOCKET, libc::SO_BINDTOIFINDEX, &ifindex.to_ne_bytes(), "SO_BINDTOIFINDEX")?;
        }
        self.path.set((mark, device));
        if self.ipv6 {
            self.setsockopt(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &i32::from(tos).to_ne_bytes(), "IPV6_TCLASS")?;
        }
        self.tos.set(tos);
        Ok(())
    }

    /// Receives only UDP datagrams from `peer`:`peer_port` to `port` whose
    /// payload starts like a footunnel control message (high nibble 0xF):
    /// without a filter, a raw UDP socket gets a copy of every UDP datagram
    /// this host receives, the tunnel's data among them.
    /// Over IPv6 the filter sees the packet from its UDP header on, so the
    /// source address is checked by whoever reads (as the client does).
    pub fn only_control_messages(&self, peer: IpAddr, peer_port: u16, port: u16) -> Result<()> {
        let filter = match peer {
            IpAddr::V4(peer) if !self.ipv6 => control_message_filter(Peers::V4(peer), peer_port, port),
            IpAddr::V6(_) if self.ipv6 => control_message_filter(Peers::V6, peer_port, port),
            _ => bail!("a filter for {peer} on a socket of the other family"),
        };
        self.attach_filter(&filter)
    }

    /// As [`RawUdp::only_control_messages`], from any address (several
    /// brokers: the caller tells them apart).
    pub fn only_control_messages_from_any(&self, peer_port: u16, port: u16) -> Result<()> {
        let filter = control_message_filter(if self.ipv6 { Peers::V6 } else { Peers::AnyV4 }, peer_port, port);
        self.attach_filter(&filter)
    }

    fn attach_filter(&self, filter: &[libc::sock_filter]) -> Result<()> {
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
    /// `src` lets the kernel pick the address (over IPv4 the datagram then
    /// carries no UDP checksum).
    pub fn send(
        &self,
        src: impl Into<IpAddr>,
        sport: u16,
        dst: impl Into<IpAddr>,
        dport: u16,
        payload: &[u8],
    ) -> Result<()> {
        match (src.into(), dst.into()) {
            (IpAddr::V4(src), IpAddr::V4(dst)) if !self.ipv6 => self.send4(src, sport, dst, dport, payload),
            (IpAddr::V6(src), IpAddr::V6(dst)) if self.ipv6 => self.send6(src, sport, dst, dport, payload),
            (IpAddr::V4(src), IpAddr::V6(dst)) if self.ipv6 && src.is_unspecified() => {
                self.send6(Ipv6Addr::UNSPECIFIED, sport, dst, dport, payload)
            }
            (src, dst) => bail!("cannot send from {src} to {dst} over an IPv{} socket", if self.ipv6 { 6 } else { 4 }),
        }
    }

    /// The kernel builds the IPv6 header; the source, when given, travels
    /// as IPV6_PKTINFO (where the socket routes by source).
    fn send6(&self, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Result<()> {
        if self.header_included {
            return self.send6_built(src, sport, dst, dport, payload);
        }
        let udp = udp_datagram(sport, dport, payload);
        self.sendmsg(&udp, &sockaddr6(dst), Source::V6(src)).with_context(|| format!("cannot send to [{dst}]:{dport}"))
    }

    fn send6_built(&self, src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Result<()> {
        if src.is_unspecified() {
            bail!("cannot answer [{dst}]:{dport}: no source address to send from");
        }
        let packet = build6(self.tos.get(), src, sport, dst, dport, payload);
        self.sendmsg(&packet, &sockaddr6(dst), Source::V6(src))
            .with_context(|| format!("cannot send to [{dst}]:{dport}"))
    }

    /// The header says where the packet is from, but the kernel routes a
    /// raw packet by its socket's address: see [`RawUdp::routed_by_source`].
    fn send4(&self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Result<()> {
        let mut packet = build(src, sport, dst, dport, payload);
        packet[1] = self.tos.get();
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(dst).to_be() },
            sin_zero: [0; 8],
        };
        self.sendmsg(&packet, &addr, Source::V4(src)).with_context(|| format!("cannot send to {dst}:{dport}"))
    }

    /// One packet to the socket address `addr`, from `source` (routed by
    /// it) unless that is unspecified.
    fn sendmsg<A>(&self, packet: &[u8], addr: &A, source: Source) -> io::Result<()> {
        let mut iov = libc::iovec { iov_base: packet.as_ptr().cast_mut().cast(), iov_len: packet.len() };
        // Room for one pktinfo control message, 8-aligned.
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (addr as *const A).cast_mut().cast();
        msg.msg_namelen = size_of::<A>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let (level, kind, data): (i32, i32, Vec<u8>) = match source {
            // With the header built here, the header carries the source;
            // without, IPV6_PKTINFO is the only way to set it.
            _ if self.header_included && !self.by_source => (0, 0, Vec::new()),
            Source::V4(a) if !a.is_unspecified() => {
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from(a).to_be() },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                (libc::IPPROTO_IP, libc::IP_PKTINFO, plain_bytes(&info))
            }
            Source::V6(a) if !a.is_unspecified() => {
                let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: a.octets() }, ipi6_ifindex: 0 };
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, plain_bytes(&info))
            }
            _ => (0, 0, Vec::new()),
        };
        if !data.is_empty() {
            // SAFETY: CMSG_SPACE of a small length.
            let space = unsafe { libc::CMSG_SPACE(data.len() as u32) } as usize;
            assert!(space <= size_of_val(&control));
            msg.msg_control = control.as_mut_ptr().cast();
            // `as _`: size_t on glibc, socklen_t on musl.
            msg.msg_controllen = space as _;
            // SAFETY: the control buffer holds `space` bytes (checked above).
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = level;
                (*cmsg).cmsg_type = kind;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
            }
        }
        // SAFETY: every pointer in `msg` is valid for the call.
        if unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, 0) } < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The next datagram, or `None` if none is waiting (non-blocking socket).
    pub fn recv(&self) -> Result<Option<Datagram>> {
        // A PROBE_ACK is as large as the path: up to a jumbo frame and more.
        let mut buf = vec![0u8; 65_536];
        // SAFETY: an all-zero sockaddr_in6 is valid; it is large enough for either family.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_in6>() as u32;
        // SAFETY: valid buffer and address storage.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_in6).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e).context("raw UDP receive");
        }
        let packet = &buf[..n as usize];
        Ok(if self.ipv6 { parse_udp(Ipv6Addr::from(from.sin6_addr.s6_addr).into(), packet) } else { parse(packet) })
    }
}

impl AsRawFd for RawUdp {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

/// Whose control messages a raw socket's filter takes, before the ports.
#[derive(Clone, Copy)]
enum Peers {
    /// IPv4 from this address: raw IPv4 sockets see the IPv4 header.
    V4(Ipv4Addr),
    /// IPv4 from any address.
    AnyV4,
    /// IPv6: raw IPv6 sockets see the packet from its UDP header on, no address.
    V6,
}

/// A classic BPF socket filter for [`RawUdp::only_control_messages`].
fn control_message_filter(peers: Peers, peer_port: u16, port: u16) -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const LDX_MSH: u16 = 0xb1; // BPF_LDX | BPF_B | BPF_MSH: X = 4 * (P[k] & 0xf)
    const LD_H_IND: u16 = 0x48; // BPF_LD | BPF_H | BPF_IND
    const LD_B_IND: u16 = 0x50; // BPF_LD | BPF_B | BPF_IND
    const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    const LDX_IMM: u16 = 0x01; // BPF_LDX | BPF_W | BPF_IMM: X = k
    let header = match peers {
        Peers::AnyV4 => vec![op(LDX_MSH, 0, 0, 0)],
        Peers::V4(peer) => vec![
            op(LD_W_ABS, 0, 0, 12),           // source address
            op(JEQ_K, 0, 8, u32::from(peer)), // else → drop
            op(LDX_MSH, 0, 0, 0),             // X = IPv4 header length
        ],
        Peers::V6 => vec![op(LDX_IMM, 0, 0, 0)], // the UDP header is first
    };
    header
        .into_iter()
        .chain([
            op(LD_H_IND, 0, 0, 0), // UDP source port
            op(JEQ_K, 0, 5, u32::from(peer_port)),
            op(LD_H_IND, 0, 0, 2), // UDP destination port
            op(JEQ_K, 0, 3, u32::from(port)),
            op(LD_B_IND, 0, 0, 8), // first payload byte
            op(AND_K, 0, 0, 0xf0),
            op(JEQ_K, 1, 0, 0xf0),
            op(RET_K, 0, 0, 0),      // drop
            op(RET_K, 0, 0, 0xffff), // accept
        ])
        .collect()
}

fn socket(family: libc::c_int, protocol: libc::c_int) -> Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        let which = if family == libc::AF_INET6 { "IPv6" } else { "IPv4" };
        return Err(io::Error::last_os_error())
            .with_context(|| format!("cannot open a raw {which} UDP socket (needs CAP_NET_RAW)"));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where a sent packet is from, for the route lookup.
#[derive(Clone, Copy)]
enum Source {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

fn sockaddr6(dst: Ipv6Addr) -> libc::sockaddr_in6 {
    // SAFETY: an all-zero sockaddr_in6 is valid.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    addr.sin6_family = libc::AF_INET6 as u16;
    addr.sin6_addr.s6_addr = dst.octets();
    addr
}

/// The bytes of a plain C struct (these have no padding).
fn plain_bytes<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: `value` is a live, initialised `T` of size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}
