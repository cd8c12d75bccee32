//! FoU listeners (`ip fou`), over generic netlink.

use std::io;

use anyhow::{Context, Result, bail};

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const FOU_CMD_ADD: u8 = 1;
const FOU_CMD_DEL: u8 = 2;
const FOU_CMD_GET: u8 = 3;
const FOU_ATTR_TYPE: u16 = 4;
const FOU_ENCAP_DIRECT: u8 = 1;
const NLM_F_ACK: u16 = 4;
const FOU_ATTR_PORT: u16 = 1;
const FOU_ATTR_AF: u16 = 2;
const FOU_ATTR_IPPROTO: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

/// A FoU receive port and the protocol it carries (4: ipip, 41: sit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub port: u16,
    pub ipproto: u8,
    pub ipv6: bool,
}

/// The FoU listeners in the current network namespace.
pub fn listeners() -> Result<Vec<Listener>> {
    let (sock, family) = open_fou()?;
    let replies = sock.request(family, FOU_CMD_GET, NLM_F_DUMP, &[])?;
    Ok(replies
        .iter()
        .filter_map(|attrs| {
            let port = attrs.iter().find(|(t, _)| *t == FOU_ATTR_PORT)?.1.get(..2)?;
            let ipproto = *attrs.iter().find(|(t, _)| *t == FOU_ATTR_IPPROTO)?.1.first()?;
            let af = attrs.iter().find(|(t, _)| *t == FOU_ATTR_AF).and_then(|(_, v)| v.first().copied());
            Some(Listener {
                port: u16::from_be_bytes([port[0], port[1]]),
                ipproto,
                ipv6: af == Some(libc::AF_INET6 as u8),
            })
        })
        .collect())
}

fn open_fou() -> Result<(Socket, u16)> {
    let sock = Socket::open()?;
    let family = sock.family_id("fou").context(
        "the kernel has no FoU support (is the fou module loaded? `modprobe fou`); footunnel needs Linux ≥ 3.18 with fou",
    )?;
    Ok((sock, family))
}

fn port_attrs(port: u16) -> Vec<(u16, Vec<u8>)> {
    vec![(FOU_ATTR_PORT, port.to_be_bytes().to_vec()), (FOU_ATTR_AF, vec![libc::AF_INET as u8])]
}

/// Adds an IPv4 FoU listener (`ip fou add port PORT ipproto IPPROTO`) unless
/// one exists; true if this call created it.
pub fn ensure_listener(port: u16, ipproto: u8) -> Result<bool> {
    if let Some(l) = listeners()?.into_iter().find(|l| l.port == port && !l.ipv6) {
        if l.ipproto != ipproto {
            bail!("UDP port {port} already has a FoU listener for protocol {}, not {ipproto}", l.ipproto);
        }
        return Ok(false);
    }
    let (sock, family) = open_fou()?;
    let mut attrs = port_attrs(port);
    attrs.push((FOU_ATTR_IPPROTO, vec![ipproto]));
    attrs.push((FOU_ATTR_TYPE, vec![FOU_ENCAP_DIRECT]));
    sock.request(family, FOU_CMD_ADD, NLM_F_ACK, &attrs)
        .with_context(|| format!("cannot add a FoU listener on port {port}"))?;
    Ok(true)
}

/// Removes the IPv4 FoU listener on `port`.
pub fn remove_listener(port: u16) -> Result<()> {
    let (sock, family) = open_fou()?;
    sock.request(family, FOU_CMD_DEL, NLM_F_ACK, &port_attrs(port))
        .with_context(|| format!("cannot remove the FoU listener on port {port}"))?;
    Ok(())
}

/// Fails unless every port in `ports` has a FoU listener (IPv4 or IPv6:
/// each link checks for the one of its family); returns the listeners.
pub fn require_listeners(ports: &[u16]) -> Result<Vec<Listener>> {
    let have = listeners()?;
    for port in ports {
        if !have.iter().any(|l| l.port == *port) {
            bail!(
                "UDP port {port} has no FoU listener: run `ip fou add port {port} ipproto 4` (41 for sit; add `-6` \
                 for ip6tnl links, whose FoU packets arrive over IPv6)"
            );
        }
    }
    Ok(have)
}

struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

type Attrs = Vec<(u16, Vec<u8>)>;

impl Socket {
    fn open() -> Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_GENERIC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("cannot open a generic netlink socket");
        }
        Ok(Socket(fd))
    }

    fn family_id(&self, name: &str) -> Result<u16> {
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        let replies = self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 0, &[(CTRL_ATTR_FAMILY_NAME, value)])?;
        replies
            .iter()
            .flatten()
            .find(|(t, v)| *t == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
            .map(|(_, v)| u16::from_ne_bytes([v[0], v[1]]))
            .with_context(|| format!("no generic netlink family {name:?}"))
    }

    /// Sends one request and collects the attributes of every reply.
    fn request(&self, family: u16, cmd: u8, flags: u16, attrs: &[(u16, Vec<u8>)]) -> Result<Vec<Attrs>> {
        let mut msg = vec![0u8; 16];
        msg.extend_from_slice(&[cmd, 1, 0, 0]);
        for (kind, value) in attrs {
            msg.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            msg.extend_from_slice(&kind.to_ne_bytes());
            msg.extend_from_slice(value);
            msg.resize(msg.len().next_multiple_of(4), 0);
        }
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&family.to_ne_bytes());
        msg[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // SAFETY: a valid buffer; the kernel is the default destination.
        if unsafe { libc::send(self.0, msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error()).context("generic netlink send");
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: a valid buffer of its length.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error()).context("generic netlink receive");
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                if len < 16 || len > rest.len() {
                    bail!("generic netlink: truncated reply");
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = i32::from_ne_bytes(rest[16..20].try_into().unwrap());
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code).into());
                    }
                    _ => out.push(parse_attrs(&rest[20.min(len)..len])),
                }
                if flags & (NLM_F_DUMP | NLM_F_ACK) == 0 {
                    return Ok(out);
                }
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
            }
        }
    }
}

fn parse_attrs(mut bytes: &[u8]) -> Attrs {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & 0x3fff;
        if len < 4 || len > bytes.len() {
            break;
        }
        out.push((kind, bytes[4..len].to_vec()));
        bytes = &bytes[len.next_multiple_of(4).min(bytes.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_with_padding_and_stop_at_garbage() {
        let bytes = [6, 0, 1, 0, 0xa5, 0xb8, 0, 0, 5, 0, 3, 0, 4, 0, 0, 0, 200, 0];
        assert_eq!(parse_attrs(&bytes), vec![(1, vec![0xa5, 0xb8]), (3, vec![4])]);
    }
}
