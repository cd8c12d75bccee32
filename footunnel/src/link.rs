//! Tunnel links (ipip/sit with FoU encapsulation), read over rtnetlink.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use netlink_packet_route::{
    address::AddressAttribute,
    link::{InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, TunnelEncapType},
};
use rtnetlink::Handle;

/// An ipip or sit link and its tunnel parameters (`IFLA_INFO_DATA`), kept
/// whole: a changelink must send them all back (DESIGN.md §3).
#[derive(Clone, Debug)]
pub struct TunnelLink {
    pub name: String,
    pub index: u32,
    pub kind: InfoKind,
    pub params: Vec<InfoIpTunnel>,
    /// Administratively up (`ip link set … up`).
    pub up: bool,
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
    pub fn endpoint(&self) -> crate::decide::LinkEndpoint {
        crate::decide::LinkEndpoint {
            remote: match self.remote() {
                Some(IpAddr::V4(a)) if !a.is_unspecified() => Some(a),
                _ => None,
            },
            dport: self.encap_dport(),
        }
    }

    pub fn local_v4(&self) -> Option<Ipv4Addr> {
        match self.local() {
            Some(IpAddr::V4(a)) if !a.is_unspecified() => Some(a),
            _ => None,
        }
    }

    /// The kernel cannot re-point a link created with `remote any` (it
    /// refuses the change: the device's point-to-point flag would change).
    pub fn check_repointable(&self) -> Result<()> {
        if self.endpoint().remote.is_none() {
            let name = &self.name;
            bail!(
                "link {name:?} has `remote any`, and the kernel refuses to point such a link at a client \
                 (EINVAL): recreate it with a placeholder remote, e.g. `ip link add {name} type {} remote 192.0.2.1 \
                 local … encap fou …` (any address will do: the broker replaces it with the client's)",
                if self.kind == InfoKind::SitTun { "sit" } else { "ipip" }
            );
        }
        Ok(())
    }

    /// The FoU listener on the link's port must deliver what the link carries:
    /// protocol 4 for ipip, 41 for sit.
    pub fn check_listener(&self, listeners: &[crate::fou::Listener]) -> Result<()> {
        let want = if self.kind == InfoKind::SitTun { 41 } else { 4 };
        let Some(port) = self.encap_sport() else { return Ok(()) };
        match listeners.iter().find(|l| l.port == port && !l.ipv6) {
            Some(l) if l.ipproto != want => bail!(
                "link {:?} is {} (protocol {want}) but the FoU listener on port {port} delivers protocol {}: \
                 its packets would never reach the link; run `ip fou del port {port}` and \
                 `ip fou add port {port} ipproto {want}`",
                self.name,
                self.kind,
                l.ipproto
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

/// Reads link `name`, which must be an ipip or sit tunnel.
pub async fn get(handle: &Handle, name: &str) -> Result<TunnelLink> {
    let message = handle
        .link()
        .get()
        .match_name(name.to_owned())
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
    let kind =
        kind.with_context(|| format!("link {name:?} has no kind: it is a plain device, not an ipip/sit tunnel"))?;
    if !matches!(kind, InfoKind::IpIp | InfoKind::SitTun) {
        bail!("link {name:?} is of kind {kind}, not an ipip or sit tunnel");
    }
    Ok(TunnelLink {
        name: name.to_owned(),
        index: message.header.index,
        kind,
        params: params.with_context(|| format!("the kernel reported no tunnel parameters for link {name:?}"))?,
        up: message.header.flags.contains(LinkFlags::Up),
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

/// Points the link at `remote`:`dport` in one request that carries every
/// other tunnel parameter unchanged: a changelink of an ipip/sit link
/// rebuilds its parameters from the message alone (DESIGN.md §3).
pub async fn repoint(handle: &Handle, link: &TunnelLink, remote: Ipv4Addr, dport: u16) -> Result<TunnelLink> {
    let mut params = link.params_but_endpoint();
    params.push(InfoIpTunnel::Remote(IpAddr::V4(remote)));
    params.push(InfoIpTunnel::EncapDPort(dport));
    let mut message = LinkMessage::default();
    message.header.index = link.index;
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(link.kind.clone()),
        LinkInfo::Data(InfoData::IpTunnel(params.clone())),
    ]));
    handle
        .link()
        .change(message)
        .execute()
        .await
        .with_context(|| format!("cannot point link {} at {remote}:{dport}", link.name))?;
    Ok(TunnelLink { params, ..link.clone() })
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

async fn name_of(handle: &Handle, index: u32) -> Result<String> {
    let msg = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await?
        .with_context(|| format!("no link with index {index}"))?;
    msg.attributes
        .iter()
        .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
        .with_context(|| format!("link {index} has no name"))
}
