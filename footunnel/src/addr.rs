//! Address types and their parsing: a leaf that configuration, link
//! management and the controller all build on (dependencies point one way).

use std::{fmt, net::IpAddr, str::FromStr};

use anyhow::{Context, Result};

/// An endpoint as operators write it: `192.0.2.1:40001`, `[2001:db8::1]:40001`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// An IPv4 or IPv6 prefix without host bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The network containing `addr/len` (host bits cleared).
    pub fn containing(addr: IpAddr, len: u8) -> Prefix {
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(len)).into()),
        };
        Prefix { addr, len }
    }

    pub fn overlaps(&self, other: &Prefix) -> bool {
        let len = self.len.min(other.len);
        match (self.addr, other.addr) {
            (IpAddr::V4(a), IpAddr::V4(b)) => u32::from(a) & mask32(len) == u32::from(b) & mask32(len),
            (IpAddr::V6(a), IpAddr::V6(b)) => u128::from(a) & mask128(len) == u128::from(b) & mask128(len),
            _ => false,
        }
    }
}

/// A prefix and the tunnel that claims it.
pub type Claim<'a> = (Prefix, &'a str);

/// Two prefixes of different owners that overlap, if any. Sorted by start
/// address, a prefix can only overlap a later one by containing its start,
/// so one pass that remembers the farthest end seen so far finds them
/// (n log n: ten thousand tunnels are checked in moments).
pub fn find_overlap<'a>(claimed: &[Claim<'a>]) -> Option<(Claim<'a>, Claim<'a>)> {
    let span = |p: &Prefix| -> (bool, u128, u128) {
        match p.addr {
            IpAddr::V4(a) => {
                let start = u128::from(u32::from(a));
                (false, start, start + (1u128 << (32 - u32::from(p.len))) - 1)
            }
            IpAddr::V6(a) => {
                let start = u128::from(a);
                let size_minus_one = if p.len == 0 { u128::MAX } else { (1u128 << (128 - u32::from(p.len))) - 1 };
                (true, start, start.saturating_add(size_minus_one))
            }
        }
    };
    let mut sorted: Vec<(bool, u128, u128, Prefix, &str)> = claimed
        .iter()
        .map(|(p, owner)| {
            let (v6, start, end) = span(p);
            (v6, start, end, *p, *owner)
        })
        .collect();
    sorted.sort_by_key(|(v6, start, end, _, _)| (*v6, *start, std::cmp::Reverse(*end)));
    let mut widest: Option<(bool, u128, Prefix, &str)> = None;
    for (v6, start, end, p, owner) in sorted {
        if let Some((wv6, wend, wp, wowner)) = widest
            && wv6 == v6
            && start <= wend
        {
            if wowner != owner {
                return Some(((wp, wowner), (p, owner)));
            }
            if end <= wend {
                continue;
            }
        }
        widest = Some((v6, end, p, owner));
    }
    None
}

fn mask32(len: u8) -> u32 {
    if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) }
}
fn mask128(len: u8) -> u128 {
    if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix: write ADDRESS/LENGTH, e.g. 10.0.0.2/32"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 =
            len.parse().ok().filter(|l| *l <= max).ok_or_else(|| format!("{s:?}: the length must be 0 to {max}"))?;
        let prefix = Prefix::containing(addr, len);
        if prefix.addr != addr {
            return Err(format!("{s:?} has host bits set: did you mean {prefix}?"));
        }
        Ok(prefix)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Parses `ADDRESS/LENGTH` keeping the host part (an interface address).
pub fn parse_interface_address(s: &str) -> Result<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/').with_context(|| format!("{s:?}: write ADDRESS/LENGTH, e.g. 10.0.0.1/30"))?;
    let addr: IpAddr = addr.parse().with_context(|| format!("{s:?}: {addr:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 =
        len.parse().ok().filter(|l| *l <= max).with_context(|| format!("{s:?}: the length must be 0 to {max}"))?;
    Ok((addr, len))
}

/// The inner prefix an interface address lies in (the peer's side of it).
pub fn subnet_of(address: (IpAddr, u8)) -> Prefix {
    Prefix::containing(address.0, address.1)
}
