//! Tunnel links (ipip/sit over IPv4, ip6tnl over IPv6, with FoU
//! encapsulation), read over rtnetlink.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{
        InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
        TunnelEncapType,
    },
};
use rtnetlink::Handle;

/// A tunnel's endpoint as the kernel link knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkEndpoint {
    pub remote: Option<IpAddr>,
    pub dport: Option<u16>,
}

/// An ipip or sit link and its tunnel parameters (`IFLA_INFO_DATA`), kept
/// whole: a changelink must send them all back (see [`repoint`]).
#[derive(Clone, Debug)]
pub struct TunnelLink {
    pub name: String,
    pub index: u32,
    pub kind: InfoKind,
    pub params: Vec<InfoIpTunnel>,
    /// Administratively up (`ip link set … up`).
    pub up: bool,
    /// The MTU as read: sent back with an ip6tnl link's changes, since its
    /// changelink recomputes the MTU from the route to the new remote and
    /// loses one the operator set.
    pub mtu: Option<u32>,
}

impl TunnelLink {
    fn find<T>(&self, pick: impl Fn(&InfoIpTunnel) -> Option<T>) -> Option<T> {
        self.params.iter().find_map(pick)
    }
    pub fn remote(&self) -> Option<IpAddr> {
        self.find(|p| if let InfoIpTunnel::Remote(a) = p { Some(*a) } else { None })
    }
    pub fn local(&self) -> Option<IpAddr> {
        self.find(|p| if let InfoIpTunnel::Local(a) = p { Some(*a) } else { None })
    }
    pub fn ttl(&self) -> Option<u8> {
        self.find(|p| if let InfoIpTunnel::Ttl(t) = p { Some(*t) } else { None })
    }
    pub fn encap_type(&self) -> Option<TunnelEncapType> {
        self.find(|p| if let InfoIpTunnel::EncapType(t) = p { Some(*t) } else { None })
    }
    pub fn encap_sport(&self) -> Option<u16> {
        self.find(|p| if let InfoIpTunnel::EncapSPort(v) = p { Some(*v) } else { None })
    }
    pub fn encap_dport(&self) -> Option<u16> {
        self.find(|p| if let InfoIpTunnel::EncapDPort(v) = p { Some(*v) } else { None })
    }
}

impl TunnelLink {
    /// Every tunnel parameter but `remote` and `encap-dport`: what a re-point
    /// must carry over unchanged.
    pub fn params_but_endpoint(&self) -> Vec<InfoIpTunnel> {
        self.params
            .iter()
            .filter(|p| !matches!(p, InfoIpTunnel::Remote(_) | InfoIpTunnel::EncapDPort(_)))
            .cloned()
            .collect()
    }

    /// `remote` and `encap-dport`, as the controller compares them.
    pub fn endpoint(&self) -> LinkEndpoint {
        LinkEndpoint { remote: self.remote().filter(|a| !a.is_unspecified()), dport: self.encap_dport() }
    }

    /// The link's `local`, unless it is "any".
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local().filter(|a| !a.is_unspecified())
    }

    /// Whether the outer packets are IPv6 (ip6tnl) rather than IPv4 (ipip, sit).
    pub fn outer_ipv6(&self) -> bool {
        self.kind == InfoKind::Ip6Tnl
    }

    /// What the link carries inside, as a FoU listener's `ipproto`: 4
    /// (IPv4) or 41 (IPv6); `None` for an ip6tnl link in mode `any`.
    pub fn inner_protocol(&self) -> Option<u8> {
        match self.kind {
            InfoKind::IpIp => Some(4),
            InfoKind::SitTun => Some(41),
            _ => match self.find(|p| if let InfoIpTunnel::Protocol(p) = p { Some(u8::from(*p)) } else { None }) {
                Some(0) | None => None,
                Some(p) => Some(p),
            },
        }
    }

    /// How `ip link add … type …` names this kind of link.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            InfoKind::SitTun => "sit",
            InfoKind::Ip6Tnl => "ip6tnl",
            _ => "ipip",
        }
    }

    /// The kernel cannot re-point a link created with `remote any` (it
    /// refuses the change: the device's point-to-point flag would change).
    pub fn check_repointable(&self) -> Result<()> {
        if self.endpoint().remote.is_none() {
            let name = &self.name;
            bail!(
                "link {name:?} has `remote any`, and the kernel refuses to point such a link at a client \
                 (EINVAL): recreate it with a placeholder remote, e.g. `ip link add {name} type {} remote {} \
                 local … encap fou …` (any address will do: the broker replaces it with the client's)",
                self.kind_name(),
                if self.outer_ipv6() { "2001:db8::1" } else { "192.0.2.1" }
            );
        }
        Ok(())
    }

    /// The FoU listener on the link's port (of the link's outer family) must
    /// deliver what the link carries: protocol 4 for ipip, 41 for sit, the
    /// link's protocol for ip6tnl.
    pub fn check_listener(&self, listeners: &[crate::os::fou::Listener]) -> Result<()> {
        let Some(port) = self.encap_sport() else { return Ok(()) };
        let (six, dash6) = if self.outer_ipv6() { (true, " -6") } else { (false, "") };
        let want = self.inner_protocol();
        match listeners.iter().find(|l| l.port == port && l.ipv6 == six) {
            None => bail!(
                "link {:?} is {}: its FoU packets arrive over IPv{}, and UDP port {port} has no IPv{2} FoU listener: \
                 run `ip fou add port {port} ipproto {}{dash6}`",
                self.name,
                self.kind_name(),
                if six { 6 } else { 4 },
                want.unwrap_or(4)
            ),
            Some(l) if want.is_some_and(|want| l.ipproto != want) => bail!(
                "link {:?} is {} (protocol {2}) but the FoU listener on port {port} delivers protocol {3}: \
                 its packets would never reach the link; run `ip fou del port {port}{dash6}` and \
                 `ip fou add port {port} ipproto {2}{dash6}`",
                self.name,
                self.kind,
                want.unwrap_or(4),
                l.ipproto,
            ),
            _ => Ok(()),
        }
    }

    /// The link must carry FoU encapsulation from one of `fou_ports`.
    pub fn check_fou(&self, fou_ports: &[u16]) -> Result<()> {
        let name = &self.name;
        if self.encap_type() != Some(TunnelEncapType::Fou) {
            bail!(
                "link {name:?} has no FoU encapsulation: recreate it with \
                 `ip link add {name} type ipip remote … local … encap fou encap-sport {port} encap-dport {port}`",
                port = fou_ports[0]
            );
        }
        match self.encap_sport() {
            Some(sport) if fou_ports.contains(&sport) => Ok(()),
            sport => bail!(
                "link {name:?} sends from UDP port {} but the FoU ports are {fou_ports:?}: \
                 set `encap-sport` to a FoU port so clients' NATs see one flow",
                sport.map_or("auto".to_owned(), |p| p.to_string())
            ),
        }
    }
}

/// Reads link `name`, which must be an ipip, sit or ip6tnl tunnel.
pub async fn get(handle: &Handle, name: &str) -> Result<TunnelLink> {
    let message = handle
        .link()
        .get()
        .match_name(name.to_owned())
        // Counters are not read here, and the sweep reads every link every
        // 10 s: the kernel leaves them out of the reply.
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
        .execute()
        .try_next()
        .await
        .with_context(|| {
            format!("no link named {name:?}: create it (`ip link add {name} type ipip … encap fou …`) or fix the name")
        })?
        .with_context(|| format!("no link named {name:?}"))?;
    let info = message.attributes.iter().find_map(|a| if let LinkAttribute::LinkInfo(i) = a { Some(i) } else { None });
    let mut kind = None;
    let mut params = None;
    for item in info.into_iter().flatten() {
        match item {
            LinkInfo::Kind(k) => kind = Some(k.clone()),
            LinkInfo::Data(InfoData::IpTunnel(p)) => params = Some(p.clone()),
            _ => {}
        }
    }
    let kind = kind
        .with_context(|| format!("link {name:?} has no kind: it is a plain device, not an ipip/sit/ip6tnl tunnel"))?;
    if !matches!(kind, InfoKind::IpIp | InfoKind::SitTun | InfoKind::Ip6Tnl) {
        bail!("link {name:?} is of kind {kind}, not an ipip, sit or ip6tnl tunnel");
    }
    Ok(TunnelLink {
        name: name.to_owned(),
        index: message.header.index,
        kind,
        params: params.with_context(|| format!("the kernel reported no tunnel parameters for link {name:?}"))?,
        up: message.header.flags.contains(LinkFlags::Up),
        mtu: message_mtu(&message),
    })
}

/// Sets link `index` administratively up or down, changing nothing else.
pub async fn set_up(handle: &Handle, index: u32, up: bool) -> Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
    message.header.change_mask = LinkFlags::Up;
    handle
        .link()
        .change(message)
        .execute()
        .await
        .with_context(|| format!("cannot set link {index} {}", if up { "up" } else { "down" }))
}

/// Sets link `index`'s MTU, changing nothing else.
pub async fn set_mtu(handle: &Handle, index: u32, mtu: u32) -> Result<()> {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    handle.link().change(message).execute().await.with_context(|| format!("cannot set link {index}'s MTU to {mtu}"))
}

/// Sets the link's `local` address, every other parameter unchanged (as
/// [`repoint`] does).
pub async fn set_local(handle: &Handle, link: &TunnelLink, local: IpAddr) -> Result<TunnelLink> {
    let mut params: Vec<InfoIpTunnel> =
        link.params.iter().filter(|p| !matches!(p, InfoIpTunnel::Local(_))).cloned().collect();
    params.push(InfoIpTunnel::Local(local));
    change(handle, link, params)
        .await
        .with_context(|| format!("cannot set link {}'s local address to {local}", link.name))
}

/// Sends `params` whole as the link's tunnel parameters.
async fn change(handle: &Handle, link: &TunnelLink, params: Vec<InfoIpTunnel>) -> Result<TunnelLink> {
    let mut message = LinkMessage::default();
    message.header.index = link.index;
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(link.kind.clone()),
        LinkInfo::Data(InfoData::IpTunnel(params.clone())),
    ]));
    // Applied after the tunnel parameters in the same request. Only where the
    // kernel would reset it: a copy read earlier must not undo a later change.
    if let (InfoKind::Ip6Tnl, Some(mtu)) = (&link.kind, link.mtu) {
        message.attributes.push(LinkAttribute::Mtu(mtu));
    }
    handle.link().change(message).execute().await?;
    Ok(TunnelLink { params, ..link.clone() })
}

/// Points the link at `remote`:`dport` in one request that carries every
/// other tunnel parameter unchanged: a changelink of an ipip/sit/ip6tnl
/// link rebuilds its parameters from the message alone: one left out
/// falls back to its default (ttl, local, encap-sport, pmtudisc…).
pub async fn repoint(handle: &Handle, link: &TunnelLink, remote: IpAddr, dport: u16) -> Result<TunnelLink> {
    if remote.is_ipv6() != link.outer_ipv6() {
        bail!(
            "link {} is {} and cannot point at {remote}: its outer packets are IPv{}",
            link.name,
            link.kind_name(),
            if link.outer_ipv6() { 6 } else { 4 }
        );
    }
    let mut params = link.params_but_endpoint();
    params.push(InfoIpTunnel::Remote(remote));
    params.push(InfoIpTunnel::EncapDPort(dport));
    change(handle, link, params)
        .await
        .with_context(|| format!("cannot point link {} at {}", link.name, crate::addr::endpoint(remote, dport)))
}

/// The addresses (with prefix lengths) assigned to link `index`.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>> {
    let mut out = Vec::new();
    let mut stream = handle.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = stream.try_next().await.context("cannot list addresses")? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(addr) = attr {
                out.push((*addr, msg.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// The name of the interface that holds `addr`.
pub async fn interface_with_address(handle: &Handle, addr: IpAddr) -> Result<String> {
    let mut stream = handle.address().get().set_address_filter(addr).execute();
    while let Some(msg) = stream.try_next().await.context("cannot list addresses")? {
        if msg
            .attributes
            .iter()
            .any(|a| matches!(a, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == addr))
        {
            return name_of(handle, msg.header.index).await;
        }
    }
    bail!("no interface has the address {addr}: name the uplink with --interface")
}

/// Whether interface `name` is a loopback device, where an anycast node
/// holds its service address.
pub async fn is_loopback(handle: &Handle, name: &str) -> Result<bool> {
    let msg = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .with_context(|| format!("cannot read interface {name}"))?
        .with_context(|| format!("no interface named {name}"))?;
    Ok(msg.header.flags.contains(LinkFlags::Loopback))
}

async fn name_of(handle: &Handle, index: u32) -> Result<String> {
    let msg = by_index(handle, index).await?;
    message_name(&msg).cloned().with_context(|| format!("link {index} has no name"))
}

/// The link with ifindex `index`, as rtnetlink reports it.
pub async fn by_index(handle: &Handle, index: u32) -> Result<LinkMessage> {
    handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await?
        .with_context(|| format!("no link with index {index}"))
}

/// The name in a link message (a notification or a reply).
pub fn message_name(msg: &LinkMessage) -> Option<&String> {
    msg.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n) } else { None })
}

/// The MTU in a link message.
pub fn message_mtu(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None })
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::{IpProtocol, link::TunnelEncapType};

    use super::*;
    use crate::os::fou::Listener;

    fn link(kind: InfoKind, protocol: Option<IpProtocol>) -> TunnelLink {
        let mut params = vec![InfoIpTunnel::EncapType(TunnelEncapType::Fou), InfoIpTunnel::EncapSPort(42424)];
        params.extend(protocol.map(InfoIpTunnel::Protocol));
        TunnelLink { name: "fou0".into(), index: 7, kind, params, up: true, mtu: None }
    }

    fn listener(ipproto: u8, ipv6: bool) -> Listener {
        Listener { port: 42424, ipproto, ipv6 }
    }

    #[test]
    fn each_link_needs_the_listener_of_its_outer_family_and_inner_protocol() {
        let ipip6 = link(InfoKind::Ip6Tnl, Some(IpProtocol::Ipip));
        assert!(ipip6.outer_ipv6() && ipip6.inner_protocol() == Some(4));
        assert!(ipip6.check_listener(&[listener(4, true)]).is_ok());
        let e = ipip6.check_listener(&[listener(4, false)]).unwrap_err().to_string();
        assert!(e.contains("no IPv6 FoU listener") && e.contains("ip fou add port 42424 ipproto 4 -6"), "{e}");
        let e = ipip6.check_listener(&[listener(41, true), listener(4, false)]).unwrap_err().to_string();
        assert!(e.contains("delivers protocol 41") && e.contains("ipproto 4 -6"), "{e}");
        // ip6tnl in mode any takes both.
        assert!(link(InfoKind::Ip6Tnl, Some(IpProtocol::from(0))).check_listener(&[listener(41, true)]).is_ok());
        let ipip = link(InfoKind::IpIp, None);
        assert!(!ipip.outer_ipv6());
        assert!(ipip.check_listener(&[listener(4, true)]).unwrap_err().to_string().contains("no IPv4 FoU listener"));
        assert!(link(InfoKind::SitTun, None).check_listener(&[listener(4, false)]).is_err());
        assert!(link(InfoKind::SitTun, None).check_listener(&[listener(41, false)]).is_ok());
    }
}
