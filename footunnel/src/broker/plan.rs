//! Everything checked against the system before anything changes: links,
//! FoU listeners, inner prefixes, uplinks.

use crate::{
    addr::Prefix,
    config::{BrokerConfig, Shared, Tunnel},
    os::fou,
    os::link::{self, TunnelLink},
};
use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use netlink_packet_route::link::LinkLayerType;
use rtnetlink::Handle;
use std::net::IpAddr;

/// A configured tunnel, checked against the system.
pub(super) struct Planned {
    pub(super) config: Tunnel,
    pub(super) link: TunnelLink,
    pub(super) prefixes: Vec<Prefix>,
}

/// Everything checked before anything changes.
pub(super) struct Plan {
    pub(super) tunnels: Vec<Planned>,
    pub(super) interfaces: Vec<String>,
    /// Shared-device mode: the device and the uplink packets leave by.
    pub(super) shared: Option<super::shared::SharedDevice>,
}

impl Plan {
    /// What peers are told of each tunnel: its secrets and prefixes.
    pub(super) fn peer_tunnels(&self) -> super::peers::PeerTunnels {
        super::peers::PeerTunnels::of(self.tunnels.iter().map(|t| (&t.config, t.prefixes.as_slice())))
    }
}

/// Checks the configuration against the system: links, FoU listeners,
/// interfaces. Changes nothing.
pub(super) async fn plan(config: &BrokerConfig, handle: &Handle) -> Result<Plan> {
    if let Some(shared) = &config.shared {
        return plan_shared(config, shared, handle).await;
    }
    let listeners = fou::require_listeners(&config.fou_ports)?;
    let mut tunnels = Vec::new();
    for t in &config.tunnels {
        let link = link::get(handle, &t.link).await.with_context(|| format!("tunnel {:?}", t.name))?;
        link.check_fou(&config.fou_ports)
            .and_then(|()| link.check_repointable())
            .and_then(|()| link.check_listener(&listeners))
            .with_context(|| format!("tunnel {:?}", t.name))?;
        let mut prefixes = t.peer_prefixes.clone();
        if prefixes.is_empty() {
            prefixes = link::addresses(handle, link.index)
                .await?
                .into_iter()
                .filter(|(a, _)| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
                .map(|(addr, len)| Prefix::containing(addr, len))
                .collect();
            if prefixes.is_empty() {
                bail!(
                    "tunnel {:?}: link {} has no addresses to derive the client's inner prefixes from: \
                     add its address (`ip addr add 10.0.0.1/30 dev {}`) or set peer_prefixes",
                    t.name,
                    t.link,
                    t.link
                );
            }
        }
        tunnels.push(Planned { config: t.clone(), link, prefixes });
    }
    check_overlap(&tunnels)?;
    let mut interfaces = config.interfaces.clone();
    if interfaces.is_empty() {
        let mut seen = std::collections::HashSet::new();
        for t in &tunnels {
            let local = t.link.local_ip().with_context(|| {
                format!("link {} has no local address, so its uplink is unknown: name it with --interface", t.link.name)
            })?;
            if !seen.insert(local) {
                continue;
            }
            let name = link::interface_with_address(handle, local).await?;
            if link::is_loopback(handle, &name).await? {
                bail!(
                    "link {}'s local address {local} is on {name}, as an anycast service address is: heartbeats \
                     to it arrive on an uplink, and footunnel cannot tell which: name it with --interface \
                     (`interfaces = [\"eth0\"]` in the configuration)",
                    t.link.name
                );
            }
            if !interfaces.contains(&name) {
                interfaces.push(name);
            }
        }
    }
    check_interfaces(handle, &interfaces).await?;
    Ok(Plan { tunnels, interfaces, shared: None })
}

/// Shared-device mode: every tunnel's "link" is the shared device (which
/// `shared::bring_up` made sure of), its prefixes are configured, and the
/// uplink is the interface holding the broker's public address.
async fn plan_shared(config: &BrokerConfig, shared: &Shared, handle: &Handle) -> Result<Plan> {
    fou::require_listeners(&config.fou_ports)?;
    let device = super::shared::as_link(handle, shared, config.fou_ports[0]).await?;
    let tunnels: Vec<Planned> = config
        .tunnels
        .iter()
        .map(|t| Planned { config: t.clone(), link: device.clone(), prefixes: t.peer_prefixes.clone() })
        .collect();
    check_overlap(&tunnels)?;
    // Not here at all on a VRRP backup; on lo on an anycast node.
    let holder = match link::interface_with_address(handle, IpAddr::V4(shared.local)).await {
        Ok(name) => Some((link::is_loopback(handle, &name).await?, name)),
        Err(_) => None,
    };
    let uplink = shared_uplink(shared.local, holder, &config.interfaces)?;
    let mut interfaces = config.interfaces.clone();
    if interfaces.is_empty() {
        interfaces.push(uplink.clone());
    }
    check_interfaces(handle, &interfaces).await?;
    let (uplink_index, uplink_mtu) = match handle.link().get().match_name(uplink.clone()).execute().try_next().await {
        Ok(Some(l)) => (l.header.index, link::message_mtu(&l)),
        _ => bail!("uplink interface {uplink:?} does not exist"),
    };
    if let Some(problem) = uplink_mtu.and_then(|m| super::shared::mtu_problem(shared.mtu, &uplink, m)) {
        bail!(problem);
    }
    let shared = super::shared::SharedDevice { name: device.name.clone(), index: device.index, uplink: uplink_index };
    Ok(Plan { tunnels, interfaces, shared: Some(shared) })
}

/// The interface shared-device mode's packets leave by: the one holding
/// `shared.local`, unless that is a loopback (an anycast service address)
/// or none (a VRRP backup): then the one uplink `interfaces` names.
fn shared_uplink(local: std::net::Ipv4Addr, holder: Option<(bool, String)>, interfaces: &[String]) -> Result<String> {
    let why = match holder {
        Some((false, name)) => return Ok(name),
        Some((true, name)) => format!("is on {name}, as an anycast service address is"),
        None => "is on no interface here (a VRRP backup's address, until it takes over)".to_owned(),
    };
    match interfaces {
        [one] => Ok(one.clone()),
        [] => bail!(
            "shared.local = {local} {why}: name the uplink the tunnels' packets leave by with \
             interfaces = [\"eth0\"] (or --interface eth0)"
        ),
        _ => bail!(
            "shared.local = {local} {why}, and shared-device mode sends every tunnel's packets by one uplink: \
             list only that one in interfaces"
        ),
    }
}

fn check_overlap(tunnels: &[Planned]) -> Result<()> {
    let claimed: Vec<(Prefix, &str)> =
        tunnels.iter().flat_map(|t| t.prefixes.iter().map(|p| (*p, t.config.name.as_str()))).collect();
    if let Some(((p, a), (q, b))) = crate::addr::find_overlap(&claimed) {
        bail!("tunnels {a:?} ({p}) and {b:?} ({q}) claim overlapping inner prefixes: set distinct peer_prefixes");
    }
    Ok(())
}

async fn check_interfaces(handle: &Handle, interfaces: &[String]) -> Result<()> {
    for name in interfaces {
        match handle.link().get().match_name(name.clone()).execute().try_next().await {
            Ok(Some(link)) => check_link_layer(name, link.header.link_layer_type)?,
            _ => bail!("uplink interface {name:?} does not exist"),
        }
    }
    Ok(())
}

/// The uplink program parses from an Ethernet header: on ppp0, wg0 or a tun
/// device it would recognise nothing, silently (issue 21, item 10).
fn check_link_layer(name: &str, kind: LinkLayerType) -> Result<()> {
    match kind {
        // Loopback frames carry an all-zero Ethernet header.
        LinkLayerType::Ether | LinkLayerType::Loopback => Ok(()),
        other => bail!(
            "uplink interface {name:?} is not Ethernet (link type {other:?}): the data plane parses Ethernet \
             frames and would recognise nothing there; attach to the Ethernet interface below it \
             (`interfaces = [\"eth0\"]` or --interface eth0)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ethernet_uplinks_are_taken() {
        assert!(check_link_layer("eth0", LinkLayerType::Ether).is_ok());
        assert!(check_link_layer("lo", LinkLayerType::Loopback).is_ok());
    }

    #[test]
    fn shared_mode_leaves_by_the_address_holder_unless_it_is_lo_or_absent() {
        let local = "192.0.2.53".parse().unwrap();
        let eth = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(shared_uplink(local, Some((false, "eth0".into())), &eth(&["eth1"])).unwrap(), "eth0");
        assert_eq!(shared_uplink(local, Some((true, "lo".into())), &eth(&["eth1"])).unwrap(), "eth1");
        assert_eq!(shared_uplink(local, None, &eth(&["eth1"])).unwrap(), "eth1");
        for (holder, interfaces, expected) in [
            (Some((true, "lo".to_owned())), eth(&[]), "is on lo, as an anycast service address is: name the uplink"),
            (None, eth(&[]), "is on no interface here"),
            (Some((true, "lo".to_owned())), eth(&["eth0", "eth1"]), "list only that one in interfaces"),
        ] {
            let e = format!("{:#}", shared_uplink(local, holder, &interfaces).unwrap_err());
            assert!(e.contains(expected), "{expected:?} not in: {e}");
        }
        for (name, kind) in [("ppp0", LinkLayerType::Ppp), ("wg0", LinkLayerType::None)] {
            let e = check_link_layer(name, kind).unwrap_err().to_string();
            assert!(e.contains("is not Ethernet") && e.contains(name) && e.contains("--interface"), "{e}");
        }
    }
}
