//! The effects around path MTU discovery ([`super::probe`] decides): when
//! a discovery starts, its bounds as the kernel knows them, the PROBEs on
//! the wire, the link's MTU.

use footunnel_ebpf::wire::{ControlMessage, Kind, Probe};
use rtnetlink::Handle;
use tracing::{info, warn};

use super::{
    MtuMode,
    path::Route,
    probe::{Discovery, Phase, REDISCOVER_NS},
};
use crate::{os::link::TunnelLink, secret::TunnelIdentity};

/// Discovery, and when the last one ended.
#[derive(Debug)]
pub struct PathMtu {
    pub mode: MtuMode,
    pub discovery: Discovery,
    ended_ns: u64,
}

impl PathMtu {
    pub fn new(mode: MtuMode) -> Self {
        PathMtu { mode, discovery: Discovery::default(), ended_ns: 0 }
    }

    /// Whether an ACK at `now` should start a discovery: none ran on this
    /// path yet, or the last ended [`REDISCOVER_NS`] ago.
    pub fn due(&self, now: u64) -> bool {
        match self.discovery.phase() {
            Phase::Idle => self.mode != MtuMode::Off,
            Phase::Done { .. } | Phase::Failed => {
                self.mode == MtuMode::Auto && now.saturating_sub(self.ended_ns) >= REDISCOVER_NS
            }
            Phase::Searching | Phase::Announcing { .. } => false,
        }
    }

    /// Starts discovering (`Auto`) or announcing (`Fixed`), at an ACK.
    pub async fn start(&mut self, handle: &Handle, link: &TunnelLink, route: Option<&Route>, rtt_ns: u64, now: u64) {
        match self.mode {
            MtuMode::Off => {}
            MtuMode::Fixed(mtu) => self.discovery.announce(mtu, now),
            MtuMode::Auto => {
                let (floor, ceiling) = bounds(handle, link, route).await;
                tracing::debug!("path MTU discovery between {floor} and {ceiling} bytes inside");
                self.discovery.start(floor, ceiling, rtt_ns, now);
            }
        }
    }

    /// The route to the broker changed, or the broker moved: discover again at the next ACK.
    pub fn path_changed(&mut self) {
        self.discovery = Discovery::default();
    }

    /// Marks the end of a discovery (found, failed, or announced).
    pub fn ended(&mut self, now: u64) {
        self.ended_ns = now;
    }
}

/// The range to search, as inner sizes: from the least the link may carry
/// to what its route's device (or the route's own MTU) lets out.
async fn bounds(handle: &Handle, link: &TunnelLink, route: Option<&Route>) -> (u16, u16) {
    let floor = crate::mtu::floor(link.inner_protocol() != Some(4));
    let mut device_mtu = 1500;
    if let Some(index) = route.and_then(|r| r.device)
        && let Ok(message) = crate::os::link::by_index(handle, index).await
        && let Some(mtu) = crate::os::link::message_mtu(&message)
    {
        device_mtu = mtu;
    }
    if let Some(route_mtu) = route.and_then(|r| r.mtu) {
        device_mtu = device_mtu.min(route_mtu);
    }
    (floor, crate::mtu::ceiling(device_mtu, link.outer_ipv6()).max(floor))
}

/// A PROBE on the wire: signed, padded to its length.
pub fn probe_bytes(identity: &TunnelIdentity, timestamp_ns: u64, probe: Probe) -> Vec<u8> {
    let msg = ControlMessage::new(Kind::Probe, identity.id, timestamp_ns, probe.detail()).sign(identity.sip_key());
    let mut bytes = vec![0; usize::from(probe.len)];
    probe.write(&msg, &mut bytes);
    bytes
}

/// Sets the link's MTU to what discovery found; the link as it is then.
pub async fn set_link_mtu(handle: &Handle, link: &mut TunnelLink, mtu: u16, found: bool) {
    let how = if found { "the largest the path to the broker carries" } else { "as --mtu says" };
    if link.mtu == Some(u32::from(mtu)) {
        info!("tunnel MTU {mtu}, {how}: link {} has it already", link.name);
        return;
    }
    match crate::os::link::set_mtu(handle, link.index, u32::from(mtu)).await {
        Ok(()) => {
            info!(
                "tunnel MTU {mtu}, {how}: link {} set (was {})",
                link.name,
                link.mtu.map_or("unknown".into(), |m| m.to_string())
            );
            link.mtu = Some(u32::from(mtu));
        }
        Err(e) => {
            warn!("{e:#}: the tunnel may drop large packets; set it by hand (`ip link set {} mtu {mtu}`)", link.name)
        }
    }
}

/// What a failed discovery means, and what to do.
pub fn failed(link: &TunnelLink) -> String {
    let floor = crate::mtu::floor(link.inner_protocol() != Some(4));
    format!(
        "path MTU discovery failed: no PROBE was answered, not even one for {floor}-byte packets. The broker may \
         be an older footunnel without PROBE, or the path is smaller than the tunnel may be; link {}'s MTU stays {}. \
         Set one with --mtu, or --mtu off to stop probing",
        link.name,
        link.mtu.map_or("as it is".into(), |m| m.to_string())
    )
}
