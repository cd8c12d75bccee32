//! Tunnel links (ipip/sit with FoU encapsulation), read over rtnetlink.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use netlink_packet_route::link::{InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkInfo, TunnelEncapType};
use rtnetlink::Handle;

/// An ipip or sit link and its tunnel parameters (`IFLA_INFO_DATA`), kept
/// whole: a changelink must send them all back (DESIGN.md §3).
#[derive(Clone, Debug)]
pub struct TunnelLink {
    pub name: String,
    pub index: u32,
    pub kind: InfoKind,
    pub params: Vec<InfoIpTunnel>,
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
    })
}
