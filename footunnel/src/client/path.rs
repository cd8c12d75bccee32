//! The way the tunnel's own packets leave this host, so that heartbeats
//! leave the same way: from the link's local address, with its firewall
//! mark (policy routing), through its underlay device, with its TOS. On a
//! multi-WAN or policy-routed host a heartbeat that took another path would
//! show the broker another NAT than the tunnel's data does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMetric};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::os::link::TunnelLink;
use netlink_packet_route::link::InfoIpTunnel;

/// What the link says about how its packets leave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelPath {
    pub local: Option<IpAddr>,
    /// The underlay device (`ip link add … dev DEV`), by index.
    pub device: Option<u32>,
    pub mark: u32,
    /// The TOS of the outer header; the link's "inherit" bit is not a TOS.
    pub tos: u8,
}

impl TunnelPath {
    pub fn of(link: &TunnelLink) -> Self {
        let mut path = TunnelPath { local: link.local_ip(), ..Default::default() };
        for p in &link.params {
            match p {
                InfoIpTunnel::Link(index) if *index != 0 => path.device = Some(*index),
                InfoIpTunnel::FwMark(mark) => path.mark = *mark,
                InfoIpTunnel::Tos(tos) => path.tos = tos & !1,
                _ => {}
            }
        }
        path
    }
}

/// Where a packet to the broker goes, as the kernel's routing decides it
/// for the tunnel's path. A change of any of these is a change of path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    pub source: Option<IpAddr>,
    pub device: Option<u32>,
    pub gateway: Option<IpAddr>,
    /// The route's own MTU (a route metric, or what the kernel learned
    /// from ICMP), if it has one.
    pub mtu: Option<u32>,
}

/// Asks the kernel (RTM_GETROUTE, as `ip route get` does) how a packet of
/// the tunnel's to `broker` would leave; no packet is sent.
pub async fn route_to(handle: &Handle, broker: IpAddr, path: &TunnelPath) -> Option<Route> {
    let device = path.device.unwrap_or(0);
    let mut message = match broker {
        IpAddr::V4(broker) => {
            let mut query = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(broker, 32).mark(path.mark);
            if let Some(IpAddr::V4(local)) = path.local {
                query = query.source_prefix(local, 32);
            }
            if device != 0 {
                query = query.output_interface(device);
            }
            query.build()
        }
        IpAddr::V6(broker) => {
            let mut query = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(broker, 128).mark(path.mark);
            if let Some(IpAddr::V6(local)) = path.local {
                query = query.source_prefix(local, 128);
            }
            if device != 0 {
                query = query.output_interface(device);
            }
            query.build()
        }
    };
    message.header.tos = path.tos;
    let reply = handle.route().get(message).execute().try_next().await.ok()??;
    let mut route = Route::default();
    for attr in &reply.attributes {
        match attr {
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => route.source = Some((*a).into()),
            RouteAttribute::PrefSource(RouteAddress::Inet6(a)) => route.source = Some((*a).into()),
            RouteAttribute::Oif(i) => route.device = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some((*a).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => route.gateway = Some((*a).into()),
            RouteAttribute::Metrics(metrics) => {
                route.mtu = metrics.iter().find_map(|m| if let RouteMetric::Mtu(m) = m { Some(*m) } else { None })
            }
            _ => {}
        }
    }
    // The link's own address wins: that is what its packets carry.
    route.source = path.local.or(route.source);
    Some(route)
}

/// The source address for heartbeats to `broker`: the link's, else the
/// route's, else unspecified (the kernel picks).
pub fn source(route: Option<&Route>, broker: IpAddr) -> IpAddr {
    let unspecified = if broker.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
    route.and_then(|r| r.source).filter(|s| s.is_ipv6() == broker.is_ipv6()).unwrap_or(unspecified)
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::{InfoKind, TunnelEncapType};

    use super::*;

    fn link(params: Vec<InfoIpTunnel>) -> TunnelLink {
        TunnelLink { name: "fou0".into(), index: 7, kind: InfoKind::IpIp, params, up: true, mtu: None }
    }

    #[test]
    fn the_path_follows_every_parameter_of_the_link() {
        let l = link(vec![
            InfoIpTunnel::Local(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 3))),
            InfoIpTunnel::Link(4),
            InfoIpTunnel::FwMark(0x2a),
            InfoIpTunnel::Tos(0x11),
            InfoIpTunnel::EncapType(TunnelEncapType::Fou),
        ]);
        assert_eq!(
            TunnelPath::of(&l),
            TunnelPath { local: Some(Ipv4Addr::new(198, 51, 100, 3).into()), device: Some(4), mark: 0x2a, tos: 0x10 }
        );
        let any = link(vec![InfoIpTunnel::Local(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), InfoIpTunnel::Link(0)]);
        assert_eq!(TunnelPath::of(&any), TunnelPath::default(), "local any and no device are no constraint");
    }

    #[test]
    fn the_source_is_the_routes_or_unspecified() {
        let broker: IpAddr = Ipv4Addr::new(198, 51, 100, 1).into();
        let r = Route { source: Some(Ipv4Addr::new(192, 0, 2, 7).into()), device: Some(2), ..Default::default() };
        assert_eq!(source(Some(&r), broker), IpAddr::from(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(source(None, broker), IpAddr::from(Ipv4Addr::UNSPECIFIED));
        let broker6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(source(None, broker6), IpAddr::from(Ipv6Addr::UNSPECIFIED));
        assert_eq!(
            source(Some(&r), broker6),
            IpAddr::from(Ipv6Addr::UNSPECIFIED),
            "never a source of the other family"
        );
    }
}
