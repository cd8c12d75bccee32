//! `footunnel client`: tells the broker where this end of the tunnel is.
//! Heartbeats leave from the tunnel's own UDP port through a raw socket, so
//! the NAT maps them exactly like the tunnel's data: no SNAT rule.

mod answers;
pub mod brokers;
pub mod clock;
pub mod message;
pub mod metrics;
pub mod path;
pub mod pmtu;
pub mod probe;
pub mod resolve;
pub mod schedule;
mod session;

use std::{net::IpAddr, path::PathBuf, time::Duration};

use crate::addr::endpoint;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::link::{InfoData, InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::{Handle, MulticastGroup};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

pub use crate::state::client::{ClientState, STATE_FILE, read_state, render};
use crate::{
    mono_ns, now_ns,
    os::link::{self, TunnelLink},
    os::manage::{self, Created, LinkSpec},
    os::rawudp::RawUdp,
};
pub use message::{FromBroker, verify_from_broker};
use resolve::BrokerAddress;
use session::Session;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The broker: an IP address, or a name re-resolved every interval.
    pub broker: BrokerAddress,
    /// More brokers (`--broker`), in order after `broker`: with them (or a
    /// name with several addresses) the client fails over ([`brokers`]).
    pub also: Vec<BrokerAddress>,
    /// `-4`/`-6`: the family to reach the broker over (`None`: see [`BrokerAddress::resolve`]).
    pub family: Option<resolve::Family>,
    pub secret: String,
    /// The tunnel's link; default: the ipip/sit link whose remote is the broker.
    pub link: Option<String>,
    pub interval: Duration,
    pub freshness_window_ns: u64,
    pub state_dir: PathBuf,
    /// Where to serve Prometheus metrics; `None`: not at all.
    pub metrics: Option<std::net::SocketAddr>,
    /// Create the FoU listener and the link at start, remove them at exit.
    pub manage: Option<ManagedClient>,
    pub mtu: MtuMode,
}

/// How the client sets the tunnel's MTU (`--mtu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtuMode {
    /// Discover the path's with PROBEs; set the link's and the broker's.
    Auto,
    /// This one, on the link and the broker's end.
    Fixed(u16),
    /// Leave the link's MTU alone; no PROBEs.
    Off,
}

/// The link the client creates when it manages its own end (`--manage`).
#[derive(Clone, Debug)]
pub struct ManagedClient {
    /// This end's inner address, e.g. 10.0.0.2/30.
    pub address: (IpAddr, u8),
    /// This end's FoU port (the link's encap-sport).
    pub port: u16,
    /// The broker's FoU port.
    pub broker_port: u16,
}

/// After this many heartbeats without an ACK the client says so.
pub const UNANSWERED_WARNING: u32 = 4;

/// The ipip/sit/ip6tnl link named `name`, or the one whose remote is one of `brokers`.
async fn find_link(handle: &Handle, brokers: &[IpAddr], name: Option<&str>) -> Result<TunnelLink> {
    let broker = brokers[0];
    if let Some(name) = name {
        return link::get(handle, name).await;
    }
    let mut names = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("cannot list links")? {
        let tunnel = msg.attributes.iter().any(|a| {
            matches!(a, LinkAttribute::LinkInfo(info) if info.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::IpIp | InfoKind::SitTun | InfoKind::Ip6Tnl)))
                && info.iter().any(|i| matches!(i, LinkInfo::Data(InfoData::IpTunnel(_)))))
        });
        if let (true, Some(n)) = (
            tunnel,
            msg.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None }),
        ) {
            names.push(n);
        }
    }
    for n in names {
        let l = link::get(handle, &n).await?;
        if l.remote().is_some_and(|r| brokers.contains(&r)) {
            return Ok(l);
        }
    }
    let kind = if broker.is_ipv6() { "ip6tnl mode ipip6" } else { "ipip" };
    bail!(
        "no ipip/sit/ip6tnl link has remote {broker}: create the tunnel's link \
         (`ip link add fou0 type {kind} remote {broker} encap fou encap-sport 42424 encap-dport 42424`) or name it with --link"
    )
}

pub async fn run(config: ClientConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let metrics = match config.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open rtnetlink")?;
    tokio::spawn(connection);
    tokio::pin!(shutdown);
    let all: Vec<BrokerAddress> = std::iter::once(config.broker.clone()).chain(config.also.iter().cloned()).collect();
    // Addresses alone cannot resolve later: a mistake in them is final.
    let first = if all.iter().any(BrokerAddress::is_name) {
        first_resolution(&all, config.family, config.interval, shutdown.as_mut()).await
    } else {
        Some(resolve::resolve_all(&all, config.family).await?)
    };
    let Some(addrs) = first else {
        info!("client stopped before the broker's name resolved");
        return Ok(());
    };
    let broker = addrs[0];
    let mut created = Created::default();
    if let Some(m) = &config.manage {
        let IpAddr::V4(broker) = broker else {
            bail!(
                "--manage creates an ipip link over IPv4, and the broker is at {broker}: create the ip6tnl link and \
                 its IPv6 FoU listener yourself (`footunnel client --help` shows how)"
            );
        };
        let spec = LinkSpec {
            name: config.link.clone().unwrap_or_else(|| "fou0".into()),
            // `local any`: the link keeps working when this host's address changes.
            local: None,
            remote: broker,
            ttl: 64,
            sport: m.port,
            dport: m.broker_port,
            address: Some(m.address),
            mtu: 1472,
        };
        manage::up(&handle, &spec, &mut created).await?;
        if !created.is_empty() {
            info!("created link {:?} and FoU listeners on ports {:?}", created.links, created.fou_ports);
        }
    }
    let result = serve(&config, &handle, brokers::Brokers::new(&addrs), metrics, shutdown).await;
    if let Err(e) = manage::down(&handle, &created).await {
        warn!("{e:#}");
    } else if !created.is_empty() {
        info!("removed what the client created");
    }
    result
}

/// Resolves the brokers' names until that works (a name that does not
/// resolve yet, say at boot before DNS is up, is retried, not fatal): every
/// address, in order; `None` if `shutdown` comes first.
async fn first_resolution(
    brokers: &[BrokerAddress],
    family: Option<resolve::Family>,
    interval: Duration,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<Vec<IpAddr>> {
    let retry = interval.min(Duration::from_secs(5));
    loop {
        match resolve::resolve_all(brokers, family).await {
            Ok(addrs) => {
                if brokers.iter().any(BrokerAddress::is_name) {
                    let names = brokers.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", ");
                    let at = addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
                    info!("broker {names} resolves to {at}");
                }
                return Some(addrs);
            }
            Err(e) => warn!("{e:#}; retrying in {retry:?}"),
        }
        tokio::select! {
            _ = &mut shutdown => return None,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Re-resolves the broker's name every interval in the background; each
/// answer arrives on the channel (nothing arrives for a literal address).
fn re_resolve(
    broker: &BrokerAddress,
    family: Option<resolve::Family>,
    interval: Duration,
) -> tokio::sync::mpsc::Receiver<Result<IpAddr>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if broker.is_name() {
        let broker = broker.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if tx.send(broker.resolve(family).await).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

async fn serve(
    config: &ClientConfig,
    handle: &Handle,
    brokers: brokers::Brokers,
    mut metrics: Option<crate::metrics::Server>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<()> {
    let broker = brokers.current();
    let name = config.link.as_deref().or(config.manage.as_ref().map(|_| "fou0"));
    let mut link = find_link(handle, &brokers.addrs().collect::<Vec<_>>(), name).await?;
    let (sport, dport) = check_link(&link, broker, config)?;
    if link.remote() != Some(broker) {
        link = link::repoint(handle, &link, broker, dport).await?;
        info!("link {} points at the first broker, {broker}", link.name);
    }
    let mut changes = network_changes()?;
    let mut tunnel_path = path::TunnelPath::of(&link);
    follow_local_address(handle, &mut link, broker, &mut tunnel_path).await;
    let socket = control_socket(&brokers, &tunnel_path, (sport, dport))?;
    let mut resolved = follow_brokers(config, &brokers);
    let mut s = Session::new(config, handle, brokers, link, (sport, dport), tunnel_path).await;
    info!(
        "client for broker {} on link {}, heartbeats from port {sport} every {:?}",
        endpoint(broker, dport),
        s.link.name,
        config.interval
    );
    loop {
        let heartbeat_wait = Duration::from_nanos(s.schedule.next_ns().saturating_sub(mono_ns()));
        let probe_wait = Duration::from_nanos(s.pmtu.discovery.next_ns().saturating_sub(mono_ns()));
        tokio::select! {
            _ = &mut shutdown => break,
            work = crate::metrics::next(metrics.as_mut()) => {
                if let Some(server) = metrics.as_mut() {
                    server.handle(work, || metrics::text(&s.state, now_ns()));
                }
            }
            _ = tokio::time::sleep(heartbeat_wait) => s.heartbeat(socket.get_ref()).await,
            _ = tokio::time::sleep(probe_wait) => s.probe(socket.get_ref()).await,
            Some(answer) = resolved.recv() => s.broker_resolved(answer, socket.get_ref()).await?,
            Some(_) = changes.next() => s.network_changed().await,
            guard = socket.readable() => {
                let mut guard = guard?;
                while let Some(d) = guard.get_inner().recv()? {
                    s.datagram(&d).await;
                }
                guard.clear_ready();
            }
        }
    }
    // A stopped client reports nothing: `show` must not present its last
    // ACK as current.
    let _ = std::fs::remove_file(config.state_dir.join(STATE_FILE));
    info!("client stopped");
    Ok(())
}

/// Link, address and route notifications: what may change the path.
fn network_changes() -> Result<impl futures::Stream<Item = impl Sized> + Unpin> {
    let (monitor_conn, _, changes) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv6Route,
    ])
    .context("cannot watch for network changes")?;
    tokio::spawn(monitor_conn);
    Ok(changes)
}

/// The raw socket heartbeats leave by and answers arrive on, the tunnel's
/// own path set; it reads only control messages to our FoU port (from the
/// one broker, or from any of several).
fn control_socket(
    brokers: &brokers::Brokers,
    tunnel_path: &path::TunnelPath,
    (sport, dport): (u16, u16),
) -> Result<AsyncFd<RawUdp>> {
    let socket = RawUdp::open_for(brokers.current())?;
    socket.set_nonblocking()?;
    socket.set_path(tunnel_path.mark, tunnel_path.device, tunnel_path.tos)?;
    match brokers.only() {
        Some(broker) => socket.only_control_messages(broker, dport, sport)?,
        None => socket.only_control_messages_from_any(dport, sport)?,
    }
    // SAFETY: the socket owns its descriptor for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register(socket) }.map_err(|e| anyhow::anyhow!("cannot poll the raw socket: {e}"))
}

/// One broker by name: its new addresses, as the name is looked up again.
/// Several are resolved once, at start: nothing arrives.
fn follow_brokers(config: &ClientConfig, brokers: &brokers::Brokers) -> tokio::sync::mpsc::Receiver<Result<IpAddr>> {
    if brokers.only().is_some() {
        return re_resolve(&config.broker, config.family, config.interval);
    }
    let all = brokers.addrs().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    info!("brokers in order: {all}; moving on after {} unanswered heartbeats", brokers::FAILOVER_AFTER);
    tokio::sync::mpsc::channel(1).1
}

/// The link's FoU ports (ours, the broker's), if it can carry the tunnel to `broker`.
fn check_link(link: &TunnelLink, broker: IpAddr, config: &ClientConfig) -> Result<(u16, u16)> {
    let sport = link.encap_sport().with_context(|| {
        format!(
            "link {} has no fixed encap-sport: set one (`encap-sport 42424`) so heartbeats and data share a port",
            link.name
        )
    })?;
    let dport =
        link.encap_dport().with_context(|| format!("link {} has no encap-dport (the broker's FoU port)", link.name))?;
    if link.encap_type() != Some(netlink_packet_route::link::TunnelEncapType::Fou) {
        bail!("link {} has no FoU encapsulation: add `encap fou encap-sport {sport} encap-dport {dport}`", link.name);
    }
    if link.outer_ipv6() != broker.is_ipv6() {
        bail!(
            "link {} is {} and cannot reach the broker at {broker}: use an {} link{}",
            link.name,
            link.kind_name(),
            if broker.is_ipv6() { "ip6tnl" } else { "ipip or sit" },
            if config.broker.is_name() { " or force the family with -4/-6" } else { "" }
        );
    }
    Ok((sport, dport))
}

/// An ip6tnl link sends only from a `local` address this host has (the
/// kernel checks each packet), so for such a link the client keeps `local`
/// at the address its route to the broker uses: at start, and when the
/// address it had is gone (a new SLAAC or DHCPv6 address, another network).
/// ipip and sit links leave `local` unset and need none of this. True if
/// the link changed.
async fn follow_local_address(
    handle: &Handle,
    link: &mut TunnelLink,
    broker: IpAddr,
    tunnel_path: &mut path::TunnelPath,
) -> bool {
    if !link.outer_ipv6() {
        return false;
    }
    if let Some(local) = link.local_ip()
        && link::interface_with_address(handle, local).await.is_ok()
    {
        return false;
    }
    let free = path::TunnelPath { local: None, ..*tunnel_path };
    let Some(source) = path::route_to(handle, broker, &free).await.and_then(|r| r.source) else {
        warn!("link {}: no route to the broker at {broker}, so no local address for it yet", link.name);
        return false;
    };
    let was = link.local_ip().map_or("none".to_owned(), |a| a.to_string());
    match link::set_local(handle, link, source).await {
        Ok(updated) => {
            info!("link {}: local address {source} (was {was}), the one the route to the broker uses", link.name);
            *link = updated;
            tunnel_path.local = Some(source);
            true
        }
        Err(e) => {
            warn!("{e:#}");
            false
        }
    }
}

/// "198.51.100.1", or "broker.example.net (198.51.100.1)".
fn describe_broker(broker: &BrokerAddress, at: IpAddr) -> String {
    if broker.is_name() { format!("{broker} ({at})") } else { at.to_string() }
}
