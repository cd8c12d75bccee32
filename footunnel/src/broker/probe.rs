//! PROBE: the PROBE_ACK, and the MTU a client asks for applied to its
//! tunnel's link (per-link mode) or its prefixes' routes (shared mode).

use std::net::IpAddr;

use footunnel_ebpf::{maps::Event, wire::Probe};
use tracing::{debug, info, warn};

use super::{Broker, Mode, answer::Answer, shared};
use crate::addr::endpoint;
use crate::os::sys::ifindex;

impl Broker {
    /// A verified PROBE (the data plane announces at most ten a second per
    /// tunnel): a PROBE_ACK as long as the PROBE, under its key; and, if it
    /// asks for an MTU and comes from the tunnel's endpoint, that MTU.
    pub(super) async fn answer_probe(&mut self, i: usize, event: &Event, source: (IpAddr, u16)) {
        let (key_id, probe) = (event.key_id(), event.probe());
        let name = self.table.tunnels[i].config.name.clone();
        if self.table.tunnels[i].config.identity_for(key_id).is_none() {
            debug!("tunnel {name}: no PROBE_ACK to {}: an old key", endpoint(source.0, source.1));
            return;
        }
        let mut applied = 0;
        if probe.mtu != 0 {
            let from_endpoint =
                self.endpoint(event.record_id).is_some_and(|e| (e.addr.ip(), e.port) == (source.0, source.1));
            if from_endpoint {
                applied = self.apply_mtu(i, probe.mtu, source.0.is_ipv6()).await.unwrap_or(0);
            } else {
                info!(
                    "tunnel {name}: a PROBE from {} asks for MTU {}, but that is not the tunnel's endpoint: \
                     not applied (the client's next heartbeat makes it the endpoint)",
                    endpoint(source.0, source.1),
                    probe.mtu
                );
            }
        }
        let answer = Answer::ProbeAck(Probe { len: probe.len, mtu: applied }, event.timestamp_ns);
        self.send(i, answer, key_id, event.dst_addr.ip(), source);
    }

    /// Applies the inner MTU a tunnel's client discovered: its link's MTU
    /// (per-link mode) or the route MTU of its prefixes (shared mode). The
    /// MTU applied, or `None` (refused or failed, with a log line).
    async fn apply_mtu(&mut self, i: usize, asked: u16, outer_ipv6: bool) -> Option<u16> {
        let t = &self.table.tunnels[i];
        let name = t.config.name.clone();
        let carries_ipv6 = match &self.mode {
            Mode::Shared(_) => false,
            Mode::PerLink => t.link.inner_protocol() != Some(4),
        };
        let mut ceiling = 0;
        for iface in &self.interfaces {
            let index = self.uplink_index.get(iface).copied().unwrap_or_else(|| ifindex(iface));
            if let Ok(link) = crate::os::link::by_index(&self.handle, index).await
                && let Some(device_mtu) = crate::os::link::message_mtu(&link)
            {
                ceiling = ceiling.max(crate::mtu::ceiling(device_mtu, outer_ipv6));
            }
        }
        let mtu = match crate::mtu::check(asked, crate::mtu::floor(carries_ipv6), ceiling) {
            Ok(mtu) => mtu,
            Err(why) => {
                warn!("tunnel {name}: its client asks for an MTU the broker refuses: {why}");
                return None;
            }
        };
        let applied = match &mut self.mode {
            Mode::Shared(shared) => {
                let prefixes = t.prefixes.clone();
                let before: Vec<_> = prefixes.iter().map(|p| shared.route_mtus.insert(*p, u32::from(mtu))).collect();
                if before.iter().all(|b| *b == Some(u32::from(mtu))) {
                    return Some(mtu);
                }
                shared::route(&self.handle, &shared.device, &prefixes, &shared.route_mtus).await.map(|()| {
                    format!("the routes of {}", prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "))
                })
            }
            Mode::PerLink => {
                if t.link.mtu == Some(u32::from(mtu)) {
                    return Some(mtu);
                }
                let (index, link) = (t.link.index, t.link.name.clone());
                crate::os::link::set_mtu(&self.handle, index, u32::from(mtu)).await.map(|()| {
                    self.table.tunnels[i].link.mtu = Some(u32::from(mtu));
                    format!("link {link}")
                })
            }
        };
        match applied {
            Ok(what) => {
                info!("tunnel {name}: MTU {mtu}, as its client discovered, on {what}");
                Some(mtu)
            }
            Err(e) => {
                warn!("tunnel {name}: {e:#}");
                None
            }
        }
    }
}
