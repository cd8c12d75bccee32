//! Optional link management, like `wg-quick up/down`: the FoU listener, the
//! ipip link with FoU encapsulation, its address. Idempotent: what exists
//! already is used and left alone; only what footunnel created is removed.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, TunnelEncapType,
};
use rtnetlink::Handle;
use serde::{Deserialize, Serialize};

use crate::{os::fou, os::link};

/// A tunnel link footunnel may create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSpec {
    pub name: String,
    /// None: `local any`, which survives changes of this host's address.
    pub local: Option<Ipv4Addr>,
    pub remote: Ipv4Addr,
    pub ttl: u8,
    pub sport: u16,
    pub dport: u16,
    /// This end's inner address and prefix length, e.g. 10.0.0.1/30.
    pub address: Option<(IpAddr, u8)>,
    pub mtu: u32,
}

/// What footunnel created, so it removes exactly that.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub fou_ports: Vec<u16>,
    pub links: Vec<String>,
}

impl Created {
    pub fn is_empty(&self) -> bool {
        self.fou_ports.is_empty() && self.links.is_empty()
    }

    /// Adds what `other` lists and this does not.
    pub fn absorb(&mut self, other: Created) {
        for port in other.fou_ports {
            if !self.fou_ports.contains(&port) {
                self.fou_ports.push(port);
            }
        }
        for link in other.links {
            if !self.links.contains(&link) {
                self.links.push(link);
            }
        }
    }
}

/// Creates the FoU listener for `spec.sport` and the link unless they exist;
/// records in `created` what it made. An existing link must match the spec.
pub async fn up(handle: &Handle, spec: &LinkSpec, created: &mut Created) -> Result<()> {
    if fou::ensure_listener(spec.sport, 4)? {
        created.fou_ports.push(spec.sport);
    }
    match link::get(handle, &spec.name).await {
        Ok(existing) => {
            if existing.encap_type() != Some(TunnelEncapType::Fou) || existing.encap_sport() != Some(spec.sport) {
                bail!(
                    "link {} exists but is not the FoU tunnel the configuration describes (encap fou encap-sport {}): \
                     remove it (`ip link del {}`) or stop managing it",
                    spec.name,
                    spec.sport,
                    spec.name
                );
            }
            Ok(())
        }
        Err(_) => {
            create_link(handle, spec).await?;
            created.links.push(spec.name.clone());
            Ok(())
        }
    }
}

async fn create_link(handle: &Handle, spec: &LinkSpec) -> Result<()> {
    let mut params = vec![
        InfoIpTunnel::Remote(IpAddr::V4(spec.remote)),
        InfoIpTunnel::Ttl(spec.ttl),
        InfoIpTunnel::PMtuDisc(true),
        InfoIpTunnel::EncapType(TunnelEncapType::Fou),
        InfoIpTunnel::EncapSPort(spec.sport),
        InfoIpTunnel::EncapDPort(spec.dport),
    ];
    if let Some(local) = spec.local {
        params.push(InfoIpTunnel::Local(IpAddr::V4(local)));
    }
    handle
        .link()
        .add(ipip_link(&spec.name, spec.mtu, params))
        .execute()
        .await
        .with_context(|| format!("cannot create link {}", spec.name))?;
    if let Some((addr, len)) = spec.address {
        add_address(handle, &spec.name, addr, len).await?;
    }
    Ok(())
}

/// A new ipip link `name`, up, of MTU `mtu` and tunnel parameters `params`
/// (the request that creates it).
pub fn ipip_link(name: &str, mtu: u32, params: Vec<InfoIpTunnel>) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::IfName(name.to_owned()));
    message.attributes.push(LinkAttribute::Mtu(mtu));
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::IpIp),
        LinkInfo::Data(InfoData::IpTunnel(params)),
    ]));
    message
}

/// Gives link `name` the address `addr/len`.
pub async fn add_address(handle: &Handle, name: &str, addr: IpAddr, len: u8) -> Result<()> {
    let index = link::get(handle, name).await?.index;
    handle.address().add(index, addr, len).execute().await.with_context(|| format!("cannot add {addr}/{len} to {name}"))
}

/// Removes what `created` lists; what footunnel did not create stays.
pub async fn down(handle: &Handle, created: &Created) -> Result<()> {
    for name in &created.links {
        if let Ok(l) = link::get(handle, name).await {
            handle.link().del(l.index).execute().await.with_context(|| format!("cannot remove link {name}"))?;
        }
    }
    for port in &created.fou_ports {
        // Another link may still use the listener; the kernel does not track that.
        if fou::listeners()?.iter().any(|l| l.port == *port) && !port_in_use(handle, *port, &created.links).await? {
            fou::remove_listener(*port)?;
        }
    }
    Ok(())
}

/// `result`, after removing what `created` lists if it is an error: a step
/// that fails leaves nothing of itself behind (what it created would be
/// recorded nowhere, and `unload` miss it). A removal that fails too is
/// logged; the step's own error is the one returned.
pub async fn undo_on_error<T>(result: Result<T>, handle: &Handle, created: &Created) -> Result<T> {
    if result.is_err()
        && let Err(undo) = down(handle, created).await
    {
        tracing::warn!("could not take back what this step created: {undo:#}");
    }
    result
}

/// True if any link other than those in `except` still sends from `port`.
pub async fn port_in_use(handle: &Handle, port: u16, except: &[String]) -> Result<bool> {
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await? {
        let Some(name) =
            msg.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
        else {
            continue;
        };
        if except.contains(&name) {
            continue;
        }
        if let Ok(l) = link::get(handle, &name).await
            && l.encap_sport() == Some(port)
        {
            return Ok(true);
        }
    }
    Ok(false)
}
