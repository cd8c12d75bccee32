//! Shared-device mode (docs/shared-mode.md): one external-mode ipip device takes
//! every tunnel's FoU in, routes send each tunnel's inner prefixes into it,
//! and the TC egress program on it addresses each packet from the endpoint
//! map the heartbeat verifier writes. No link per tunnel, so clients behind
//! one NAT address are told apart by port, and failover needs no userspace.

use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use netlink_packet_route::{
    link::{InfoIpTunnel, LinkAttribute, LinkMessage},
    route::{RouteAttribute, RouteMetric, RouteScope},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use tracing::info;

use crate::{
    addr::Prefix,
    broker::decide::LinkEndpoint,
    config::Shared,
    os::fou,
    os::link::{self, TunnelLink},
    os::manage::Created,
};
use footunnel_ebpf::maps::Endpoint;

/// The first kernel with everything this mode uses: `bpf_redirect_neigh`
/// (5.10), and growing a packet past its device's MTU (5.12; before, a
/// full-size packet could not get its outer headers).
pub const KERNEL_NEEDED: (u32, u32) = (5, 12);

/// Refuses a kernel older than [`KERNEL_NEEDED`], by its release string
/// (`uname -r`, e.g. "6.1.0-40-amd64").
pub fn check_kernel(release: &str) -> Result<()> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (numbers.next(), numbers.next()) else {
        bail!("cannot read the kernel version from {release:?}");
    };
    let (need_major, need_minor) = KERNEL_NEEDED;
    if (major, minor) < KERNEL_NEEDED {
        bail!(
            "shared-device mode needs Linux {need_major}.{need_minor} or later (this is {release}): upgrade the \
             kernel, or use per-link mode (remove `mode` and [shared], and give each tunnel its link)"
        );
    }
    Ok(())
}

pub use crate::os::sys::kernel_release;

/// The shared device as the broker runs it.
#[derive(Clone, Debug)]
pub struct SharedDevice {
    pub name: String,
    pub index: u32,
    /// Where encapsulated packets leave: the interface holding `shared.local`.
    pub uplink: u32,
}

/// Creates what is missing: the FoU listener, the device (external mode,
/// up, with its MTU and address); records in `created` what it made. An
/// existing device of that name must be an external-mode ipip device.
pub(super) async fn bring_up(handle: &Handle, shared: &Shared, port: u16, created: &mut Created) -> Result<()> {
    check_kernel(&kernel_release())?;
    if fou::ensure_listener(port, 4)? {
        created.fou_ports.push(port);
    }
    if let Ok(existing) = link::get(handle, &shared.device).await {
        if !existing.params.contains(&InfoIpTunnel::CollectMetadata) {
            bail!(
                "{} exists but is not an external-mode ipip device: remove it (`ip link del {}`) or set \
                 shared.device to another name",
                shared.device,
                shared.device
            );
        }
        // The configuration's MTU, also on a device made by hand.
        let mut message = LinkMessage::default();
        message.header.index = existing.index;
        message.attributes.push(LinkAttribute::Mtu(shared.mtu));
        handle
            .link()
            .change(message)
            .execute()
            .await
            .with_context(|| format!("cannot set the MTU of {}", shared.device))?;
        return Ok(());
    }
    let device = crate::os::manage::ipip_link(&shared.device, shared.mtu, vec![InfoIpTunnel::CollectMetadata]);
    handle.link().add(device).execute().await.with_context(|| {
        format!(
            "cannot create the shared device {} (an external-mode ipip device; there can be only one per network \
             namespace: is another one there, `ip -d link show type ipip`?)",
            shared.device
        )
    })?;
    created.links.push(shared.device.clone());
    info!("created shared device {} (external-mode ipip, mtu {})", shared.device, shared.mtu);
    if let Some((addr, len)) = shared.address {
        crate::os::manage::add_address(handle, &shared.device, addr, len).await?;
    }
    Ok(())
}

/// The shared device as a tunnel's "link": its local address and FoU port
/// are where the data plane takes heartbeats and whence answers leave (the
/// device itself reports neither: it has no fixed encapsulation).
pub(super) async fn as_link(handle: &Handle, shared: &Shared, port: u16) -> Result<TunnelLink> {
    let mut device = link::get(handle, &shared.device).await?;
    device
        .params
        .retain(|p| !matches!(p, InfoIpTunnel::Local(_) | InfoIpTunnel::EncapSPort(_) | InfoIpTunnel::EncapDPort(_)));
    device.params.push(InfoIpTunnel::Local(IpAddr::V4(shared.local)));
    device.params.push(InfoIpTunnel::EncapSPort(port));
    Ok(device)
}

/// Routes each prefix through the device (replacing a route to the same
/// prefix elsewhere: the configuration says where it goes), with the MTU
/// its tunnel's client discovered (`mtus`, by prefix) if there is one.
pub(super) async fn route(
    handle: &Handle,
    device: &SharedDevice,
    prefixes: &[Prefix],
    mtus: &std::collections::HashMap<Prefix, u32>,
) -> Result<()> {
    for p in prefixes {
        let Some(mut message) = route_message(device, p) else {
            bail!("{p}: shared-device mode carries IPv4 inside only so far")
        };
        if let Some(mtu) = mtus.get(p) {
            message.attributes.push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(*mtu)]));
        }
        handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot route {p} through {}", device.name))?;
    }
    Ok(())
}

/// The route of an IPv4 prefix through the device; `None` for IPv6.
fn route_message(device: &SharedDevice, p: &Prefix) -> Option<netlink_packet_route::route::RouteMessage> {
    let IpAddr::V4(a) = p.addr else { return None };
    Some(
        RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(a, p.len)
            .output_interface(device.index)
            .scope(RouteScope::Link)
            .build(),
    )
}

/// Why the device's MTU does not fit the uplink, if it does not: the egress
/// program adds 28 bytes of outer headers and sets don't-fragment, so a
/// full-size packet would be dropped, without an ICMP error to say so.
pub(super) fn mtu_problem(device_mtu: u32, uplink: &str, uplink_mtu: u32) -> Option<String> {
    let needed = device_mtu + footunnel_ebpf::egress::OUTER_LEN as u32;
    (needed > uplink_mtu).then(|| {
        format!(
            "shared.mtu = {device_mtu} needs an uplink MTU of {needed}, and {uplink} has {uplink_mtu}: full-size packets \
             would be dropped; set shared.mtu = {} (or raise {uplink}'s MTU)",
            uplink_mtu.saturating_sub(footunnel_ebpf::egress::OUTER_LEN as u32)
        )
    })
}

/// Removes the routes of prefixes no tunnel has any more (a reload); one
/// already gone (by hand, or with the device) is no error.
pub(super) async fn unroute(handle: &Handle, device: &SharedDevice, prefixes: &[Prefix]) -> Result<()> {
    for p in prefixes {
        let Some(message) = route_message(device, p) else { continue };
        match handle.route().del(message).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -crate::os::sys::NO_SUCH_PROCESS => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove the route of {p} through {}", device.name)),
        }
    }
    Ok(())
}

/// Whether the device still carries the tunnels: there, the one the routes
/// and the egress program were set up on, and up. `Err`: why not, and the fix.
pub(super) async fn check_device(handle: &Handle, device: &SharedDevice) -> Result<()> {
    let now = link::get(handle, &device.name).await.with_context(|| format!("shared device {}", device.name))?;
    if now.index != device.index {
        bail!(
            "shared device {} was re-created (ifindex {} → {}): its routes and egress program are gone; restart \
             the broker",
            device.name,
            device.index,
            now.index
        );
    }
    if !now.up {
        bail!("shared device {} is down: `ip link set {} up`", device.name, device.name);
    }
    Ok(())
}

/// Where the data plane sends a tunnel's packets while the device is fine:
/// the recorded endpoint (the egress program reads the very entry the
/// heartbeat wrote).
/// IPv4 endpoints only: the device and its FoU listener are IPv4, and the
/// egress program drops what it cannot encapsulate, so an IPv6 client must
/// not be told (ACKed) that it is served.
pub(super) fn reaches(recorded: Option<&Endpoint>) -> LinkEndpoint {
    match recorded.filter(|e| e.heartbeats != 0 && e.addr.as_v4().is_some()) {
        Some(e) => LinkEndpoint { remote: Some(e.addr.ip()), dport: Some(e.port) },
        None => LinkEndpoint { remote: None, dport: None },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_mtu_must_leave_room_for_the_outer_headers() {
        assert_eq!(mtu_problem(1472, "up0", 1500), None);
        assert_eq!(mtu_problem(1464, "ppp0", 1492), None);
        let e = mtu_problem(1472, "ppp0", 1492).unwrap();
        assert!(
            e.contains("needs an uplink MTU of 1500, and ppp0 has 1492") && e.contains("set shared.mtu = 1464"),
            "{e}"
        );
    }

    #[test]
    fn only_ipv4_endpoints_are_reached() {
        let v4 = Endpoint {
            addr: footunnel_ebpf::packet::mapped([203, 0, 113, 5]),
            port: 40001,
            heartbeats: 1,
            ..Default::default()
        };
        assert_eq!(
            reaches(Some(&v4)),
            LinkEndpoint { remote: Some("203.0.113.5".parse().unwrap()), dport: Some(40001) }
        );
        let v6 = Endpoint { addr: "2001:db8::5".parse::<std::net::IpAddr>().unwrap().into(), ..v4 };
        assert_eq!(reaches(Some(&v6)), LinkEndpoint { remote: None, dport: None }, "no ACK6 from shared mode");
        assert_eq!(reaches(Some(&Endpoint { heartbeats: 0, ..v4 })).remote, None);
    }

    #[test]
    fn kernels_before_5_12_are_refused_naming_what_to_do() {
        for ok in ["5.12.0", "6.1.0-40-amd64", "6.12.117+deb12-amd64", "10.0"] {
            check_kernel(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
        for old in ["5.10.0-35-amd64", "5.11.22", "4.19.0-27-amd64"] {
            let e = format!("{:#}", check_kernel(old).unwrap_err());
            assert!(e.contains("needs Linux 5.12") && e.contains(old) && e.contains("per-link mode"), "{e}");
        }
        assert!(check_kernel("weird").is_err());
    }
}
