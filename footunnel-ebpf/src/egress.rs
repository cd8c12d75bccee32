//! Shared-device mode's transmit path: an inner IPv4 packet routed into the
//! shared device leaves for its tunnel's current endpoint. inner destination
//! ─LPM─► tunnel ─► ENDPOINTS ─► outer IPv4 + UDP headers. The headers are
//! built here (host-tested); the TC egress entry point inserts them in front
//! of the packet and hands it to the uplink.
//!
//! The endpoint is the one the heartbeat verifier wrote: the packet after an
//! accepted heartbeat goes to the new address and port, with no userspace step.

use crate::{
    maps::{Counter, PrefixOwner, Settings},
    packet::PacketBytes,
    path::Env,
};

/// Outer IPv4 header and UDP header: what FoU adds.
pub const OUTER_LEN: usize = 28;
const TTL: u8 = 64;
const IPPROTO_UDP: u8 = 17;
/// Don't fragment: the shared device's MTU leaves room for the outer
/// headers, and a fragmented FoU packet would reach the client's NAT in
/// pieces it may not reassemble.
const DF: u16 = 0x4000;

/// The outer headers for the inner IPv4 packet at the start of `pkt`
/// (`len` bytes in all), or the counter saying why it cannot leave.
/// `settings` is read once per packet, by the caller, which needs it too.
#[inline(always)]
pub fn outer_headers<P: PacketBytes + ?Sized, E: Env>(
    pkt: &P,
    len: u32,
    settings: &Settings,
    env: &E,
) -> Result<[u8; OUTER_LEN], Counter> {
    let (owner, addr, port) = match inner_endpoint(pkt, INNER_DST, env) {
        Ok(found) => found,
        Err(NoEndpoint::NoTunnel) => return Err(Counter::EgressNoTunnel),
        Err(NoEndpoint::NotYet) => return Err(Counter::EgressNoEndpoint),
    };
    let local = owner.local.as_v4().ok_or(Counter::EgressFailed)?;
    Ok(build(local, addr, settings.shared_port, port, len))
}

/// Where an inner IPv4 header holds its source and its destination.
pub const INNER_SRC: usize = 12;
pub const INNER_DST: usize = 16;

/// Why an inner packet has no endpoint in this mode.
pub enum NoEndpoint {
    /// Not IPv4, too short, or no tunnel owns the address.
    NoTunnel,
    /// Its tunnel has no IPv4 endpoint (yet, or a client at an IPv6 one).
    NotYet,
}

/// The tunnel owning the inner IPv4 address at `offset` ([`INNER_SRC`] or
/// [`INNER_DST`]) of the packet at the start of `pkt`, and its endpoint's
/// IPv4 address and port: the lookup both directions of the device make.
#[inline(always)]
pub fn inner_endpoint<P: PacketBytes + ?Sized, E: Env>(
    pkt: &P,
    offset: usize,
    env: &E,
) -> Result<(PrefixOwner, [u8; 4], u16), NoEndpoint> {
    let Some([version_ihl]) = pkt.read::<1>(0) else { return Err(NoEndpoint::NoTunnel) };
    if version_ihl >> 4 != 4 {
        return Err(NoEndpoint::NoTunnel);
    }
    let inner = pkt.read::<4>(offset).ok_or(NoEndpoint::NoTunnel)?;
    let owner = env.tunnel_by_v4(inner).ok_or(NoEndpoint::NoTunnel)?;
    // This mode's device and listener are IPv4 only: an IPv6 endpoint is none.
    let endpoint = env.endpoint(owner.id()).filter(|e| e.heartbeats != 0).ok_or(NoEndpoint::NotYet)?;
    let addr = endpoint.addr.as_v4().ok_or(NoEndpoint::NotYet)?;
    Ok((owner, addr, endpoint.port))
}

/// IPv4 (with its checksum) + UDP (checksum 0, as FoU over IPv4 allows).
#[inline(always)]
fn build(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, inner_len: u32) -> [u8; OUTER_LEN] {
    let total = (inner_len + OUTER_LEN as u32) as u16;
    let udp_len = (inner_len + 8) as u16;
    let mut h = [0u8; OUTER_LEN];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&DF.to_be_bytes());
    h[8] = TTL;
    h[9] = IPPROTO_UDP;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    let checksum = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&checksum.to_be_bytes());
    h[20..22].copy_from_slice(&sport.to_be_bytes());
    h[22..24].copy_from_slice(&dport.to_be_bytes());
    h[24..26].copy_from_slice(&udp_len.to_be_bytes());
    h
}

/// The header checksum over the first 20 bytes (checksum field zero).
#[inline(always)]
fn ipv4_checksum(h: &[u8; OUTER_LEN]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    // Ten words fit 20 bits: two folds always finish.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
