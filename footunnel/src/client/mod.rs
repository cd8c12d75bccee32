//! `footunnel client`: tells the broker where this end of the tunnel is.
//! Heartbeats leave from the tunnel's own UDP port through a raw socket, so
//! the NAT maps them exactly like the tunnel's data: no SNAT rule.

pub mod clock;
pub mod message;
pub mod metrics;
pub mod path;
pub mod pmtu;
pub mod probe;
pub mod resolve;
pub mod schedule;

use std::{net::IpAddr, path::PathBuf, time::Duration};

use crate::addr::endpoint;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::link::{InfoData, InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::{Handle, MulticastGroup};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use footunnel_ebpf::wire::{ControlMessage, Kind};

use crate::state::client::write_state;
pub use crate::state::client::{ClientState, STATE_FILE, read_state, render};
use crate::{
    decide::next_timestamp,
    link::{self, TunnelLink},
    manage::{self, Created, LinkSpec},
    mono_ns, now_ns,
    rawudp::RawUdp,
    secret::TunnelIdentity,
};
use message::from_broker;
pub use message::{FromBroker, verify_from_broker};
use resolve::BrokerAddress;
use schedule::Schedule;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The broker: an IP address, or a name re-resolved every interval.
    pub broker: BrokerAddress,
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

/// The ipip/sit/ip6tnl link named `name`, or the one whose remote is `broker`.
async fn find_link(handle: &Handle, broker: IpAddr, name: Option<&str>) -> Result<TunnelLink> {
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
        if l.remote() == Some(broker) {
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
    let Some(broker) = first_resolution(&config.broker, config.family, config.interval, shutdown.as_mut()).await else {
        info!("client stopped before the broker's name resolved");
        return Ok(());
    };
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
    let result = serve(&config, &handle, broker, metrics, shutdown).await;
    if let Err(e) = manage::down(&handle, &created).await {
        warn!("{e:#}");
    } else if !created.is_empty() {
        info!("removed what the client created");
    }
    result
}

/// Resolves the broker's name until it works (a name that does not resolve
/// yet, say at boot before DNS is up, is retried, not fatal); `None` if
/// `shutdown` comes first.
async fn first_resolution(
    broker: &BrokerAddress,
    family: Option<resolve::Family>,
    interval: Duration,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Option<IpAddr> {
    let retry = interval.min(Duration::from_secs(5));
    loop {
        match broker.resolve(family).await {
            Ok(a) => {
                if broker.is_name() {
                    info!("broker {broker} resolves to {a}");
                }
                return Some(a);
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
    mut broker: IpAddr,
    mut metrics: Option<crate::metrics::Server>,
    shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<()> {
    let mut link = find_link(handle, broker, config.link.as_deref().or(config.manage.as_ref().map(|_| "fou0"))).await?;
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
    let identity = TunnelIdentity::derive(&config.secret);
    let (monitor_conn, _, mut changes) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv6Route,
    ])
    .context("cannot watch for network changes")?;
    tokio::spawn(monitor_conn);
    if link.outer_ipv6() != broker.is_ipv6() {
        bail!(
            "link {} is {} and cannot reach the broker at {broker}: use an {} link{}",
            link.name,
            link.kind_name(),
            if broker.is_ipv6() { "ip6tnl" } else { "ipip or sit" },
            if config.broker.is_name() { " or force the family with -4/-6" } else { "" }
        );
    }
    let mut tunnel_path = path::TunnelPath::of(&link);
    follow_local_address(handle, &mut link, broker, &mut tunnel_path).await;
    let socket = RawUdp::open_for(broker)?;
    socket.set_nonblocking()?;
    socket.set_path(tunnel_path.mark, tunnel_path.device, tunnel_path.tos)?;
    socket.only_control_messages(broker, dport, sport)?;
    let mut route = path::route_to(handle, broker, &tunnel_path).await;
    // SAFETY: the socket owns its descriptor for as long as the AsyncFd holds it.
    let socket =
        unsafe { AsyncFd::register(socket) }.map_err(|e| anyhow::anyhow!("cannot poll the raw socket: {e}"))?;
    let mut resolved = re_resolve(&config.broker, config.family, config.interval);

    let mut state =
        ClientState { broker: describe_broker(&config.broker, broker), link: link.name.clone(), ..Default::default() };
    // Timers run on the monotonic clock: a wall clock stepped back must not
    // silence the client. Only the wire timestamps are wall time.
    let mut schedule = Schedule::new(config.interval, mono_ns());
    let mut last_sent_ts = 0u64;
    let mut last_broker_ts = 0u64;
    let mut clock = clock::Clock::default();
    let mut pmtu = pmtu::PathMtu::new(config.mtu);
    if let MtuMode::Fixed(mtu) = config.mtu {
        pmtu::set_link_mtu(handle, &mut link, mtu, false).await;
        state.mtu = Some(mtu);
    }
    info!(
        "client for broker {} on link {}, heartbeats from port {sport} every {:?}",
        endpoint(broker, dport),
        link.name,
        config.interval
    );
    let mut shutdown = shutdown;
    loop {
        let wait = Duration::from_nanos(schedule.next_ns().saturating_sub(mono_ns()));
        tokio::select! {
            _ = &mut shutdown => break,
            work = crate::metrics::next(metrics.as_mut()) => {
                if let Some(server) = metrics.as_mut() {
                    server.handle(work, || metrics::text(&state, now_ns()));
                }
            }
            _ = tokio::time::sleep(wait) => {
                let now = mono_ns();
                if !schedule.due(now) {
                    continue;
                }
                last_sent_ts = next_timestamp(clock.now(now_ns()), last_sent_ts);
                clock.sent(last_sent_ts, now);
                let msg = ControlMessage::new(Kind::Heartbeat, identity.id, last_sent_ts, schedule.nonce()).sign(identity.sip_key());
                route = path::route_to(handle, broker, &tunnel_path).await.or(route);
                let src = path::source(route.as_ref(), broker);
                match socket.get_ref().send(src, sport, broker, dport, &msg.to_bytes()) {
                    Ok(()) => {
                        debug!("heartbeat from {}", endpoint(src, sport));
                        state.heartbeats += 1;
                    }
                    Err(e) => warn!("{e:#}"),
                }
                schedule.sent(now);
                if schedule.unanswered() == UNANSWERED_WARNING {
                    warn!(
                        "no ACK for the last {UNANSWERED_WARNING} heartbeats: the tunnel may be down. Check that the \
                         broker runs and has this secret, that {} is reachable, and this host's clock \
                         (the broker refuses heartbeats outside its freshness window; `footunnel show` on the \
                         broker counts them as stale)",
                        endpoint(broker, dport)
                    );
                }
            }
            _ = tokio::time::sleep(Duration::from_nanos(pmtu.discovery.next_ns().saturating_sub(mono_ns()))) => {
                let now = mono_ns();
                let before = pmtu.discovery.phase();
                match pmtu.discovery.step(now) {
                    Some(probe::Step::Send(p)) => {
                        last_sent_ts = next_timestamp(clock.now(now_ns()), last_sent_ts);
                        let src = path::source(route.as_ref(), broker);
                        let bytes = pmtu::probe_bytes(&identity, last_sent_ts, p);
                        match socket.get_ref().send(src, sport, broker, dport, &bytes) {
                            Ok(()) if p.mtu != 0 => debug!("PROBE telling the broker MTU {}", p.mtu),
                            Ok(()) => debug!("PROBE of {} bytes", p.len),
                            Err(e) => debug!("PROBE of {} bytes not sent: {e:#}", p.len),
                        }
                        pmtu.discovery.sent(last_sent_ts);
                    }
                    Some(probe::Step::SetMtu(mtu)) => {
                        pmtu::set_link_mtu(handle, &mut link, mtu, true).await;
                        (state.mtu, state.mtu_discovered, state.broker_mtu) = (Some(mtu), true, None);
                        write_state(&config.state_dir, &state);
                        pmtu.discovery.mtu_set(mtu, now);
                    }
                    Some(probe::Step::Failed) => {
                        warn!("{}", pmtu::failed(&link));
                        pmtu.ended(now);
                    }
                    None => {
                        if let (probe::Phase::Announcing { .. }, probe::Phase::Done { mtu, .. }) = (before, pmtu.discovery.phase()) {
                            warn!("the broker did not confirm MTU {mtu} for its end of the tunnel: check its log; \
                                   large packets from it may be dropped");
                            pmtu.ended(now);
                        }
                    }
                }
            }
            Some(answer) = resolved.recv() => {
                match answer {
                    Ok(now_at) if now_at != broker => {
                        match link::repoint(handle, &link, now_at, dport).await {
                            Ok(updated) => {
                                // Logged once done: whoever reads this may read the link next.
                                info!("broker {} now resolves to {now_at} (was {broker}): link {} points there", config.broker, link.name);
                                link = updated;
                                broker = now_at;
                                socket.get_ref().only_control_messages(broker, dport, sport)?;
                                route = path::route_to(handle, broker, &tunnel_path).await;
                                state.broker = describe_broker(&config.broker, broker);
                                write_state(&config.state_dir, &state);
                                schedule.network_changed(mono_ns());
                                pmtu.path_changed();
                            }
                            Err(e) => warn!(
                                "broker {} now resolves to {now_at}, but link {} cannot be pointed there: {e:#}; still sending to {broker}",
                                config.broker, link.name
                            ),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!("{e:#}; still sending to {broker}"),
                }
            }
            Some(_) = changes.next() => {
                if follow_local_address(handle, &mut link, broker, &mut tunnel_path).await {
                    schedule.network_changed(mono_ns());
                }
                // Container churn and the like change links and addresses all
                // the time; only a new path to the broker needs a heartbeat.
                let now_route = path::route_to(handle, broker, &tunnel_path).await;
                if now_route != route {
                    debug!("the path to the broker changed ({route:?} → {now_route:?}); heartbeat soon");
                    route = now_route;
                    schedule.network_changed(mono_ns());
                    pmtu.path_changed();
                }
            }
            guard = socket.readable() => {
                let mut guard = guard?;
                while let Some(d) = guard.get_inner().recv()? {
                    if let Some(msg) = from_broker(&d, broker, sport, dport) {
                        let now = now_ns();
                        match verify_from_broker(msg, &identity, last_broker_ts, clock.now(now), config.freshness_window_ns) {
                            Ok(FromBroker::ProbeAck { echo_ns, probe }) => {
                                if pmtu.discovery.acked(echo_ns, probe, mono_ns()) {
                                    debug!("PROBE_ACK: {} bytes pass both ways", probe.len);
                                    if let probe::Phase::Done { mtu, broker: Some(applied) } = pmtu.discovery.phase() {
                                        pmtu.ended(mono_ns());
                                        broker_applied(mtu, applied);
                                        state.broker_mtu = Some(applied);
                                        write_state(&config.state_dir, &state);
                                    }
                                }
                            }
                            Ok(m) => {
                                last_broker_ts = m.timestamp_ns();
                                if handle_message(&m, now, mono_ns(), &mut schedule, &mut state, &mut clock) {
                                    // Stamped on the wrong clock, the last heartbeats were refused:
                                    // the next is stamped on the broker's, also if that is earlier.
                                    last_sent_ts = 0;
                                }
                                write_state(&config.state_dir, &state);
                                if matches!(m, FromBroker::Ack { .. }) && pmtu.due(mono_ns()) {
                                    let rtt_ns = state.rtt_us.unwrap_or(0) * 1_000;
                                    pmtu.start(handle, &link, route.as_ref(), rtt_ns, mono_ns()).await;
                                }
                            }
                            Err(r) => debug!("dropped a message from the broker: {r:?}"),
                        }
                    }
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

/// `now`: this host's wall time (uncorrected); `mono`: the schedule's clock.
/// True if a TIME corrected the clock.
fn handle_message(
    msg: &FromBroker,
    now: u64,
    mono: u64,
    schedule: &mut Schedule,
    state: &mut ClientState,
    clock: &mut clock::Clock,
) -> bool {
    if !matches!(msg, FromBroker::Time { .. } | FromBroker::ProbeAck { .. }) && clock.heard(msg.timestamp_ns(), now) {
        info!("this host's clock agrees with the broker's again: heartbeats use it");
        state.clock_offset_ns = None;
    }
    match *msg {
        FromBroker::Time { timestamp_ns, echo_ns } => {
            let corrected = time(clock.correct(timestamp_ns, echo_ns, now, mono), schedule, mono);
            state.clock_offset_ns = clock.offset_ns();
            return corrected;
        }
        FromBroker::Ack { seen, .. } => {
            if schedule.unanswered() >= UNANSWERED_WARNING {
                info!("the broker answers again (after {} unanswered heartbeats)", schedule.unanswered());
            }
            let seen = seen.to_string();
            let rtt = schedule.acked(mono);
            if state.public_endpoint.as_deref() != Some(seen.as_str()) {
                info!("the broker sees this end at {seen}");
            }
            if let Some(rtt) = rtt {
                debug!("ACK after {rtt:?}");
                state.rtt_us = Some(rtt.as_micros() as u64);
            }
            state.public_endpoint = Some(seen);
            state.last_ack_ns = Some(now);
            state.acks += 1;
        }
        FromBroker::Challenge { nonce, .. } => {
            info!("challenged by the broker (our traffic arrives from a new source): answering");
            schedule.challenged(mono, nonce);
            state.challenges += 1;
        }
        FromBroker::ProbeAck { .. } => {}
    }
    false
}

/// What the broker's answer to the MTU announcement says.
fn broker_applied(mtu: u16, applied: u16) {
    match applied {
        0 => warn!(
            "the broker did not apply MTU {mtu} to its end of the tunnel (its log says why): large packets from \
             it may be dropped"
        ),
        m if m == mtu => info!("the broker set its end of the tunnel to MTU {mtu}"),
        m => warn!("the broker set its end of the tunnel to MTU {m}, not {mtu}"),
    }
}

/// What a verified TIME did to the clock.
fn time(outcome: Result<i64, clock::TimeIgnored>, schedule: &mut Schedule, mono: u64) -> bool {
    match outcome {
        Ok(offset) => {
            warn!(
                "the broker refused a heartbeat as stale: this host's clock {} the broker's. Heartbeats use the \
                 broker's time until this host's agrees (check NTP)",
                crate::describe_offset(-i128::from(offset))
            );
            schedule.corrected(mono);
            return true;
        }
        Err(clock::TimeIgnored::Insane(offset)) => warn!(
            "ignored the broker's TIME: it says this host's clock {} the broker's, more than 10 years; \
             check the broker's clock",
            crate::describe_offset(-offset)
        ),
        Err(why) => debug!("ignored the broker's TIME: {why:?}"),
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use message::tests::{NOW, from_broker, identity};

    #[test]
    fn a_verified_time_corrects_the_clock_and_heartbeats_at_once() {
        let (mut state, mut clock) = (ClientState::default(), clock::Clock::default());
        let mut schedule = Schedule::new(Duration::from_secs(10), 0);
        let two_days = 2 * 86_400_000_000_000;
        clock.sent(NOW - two_days, 1_000);
        schedule.sent(1_000);
        let time = FromBroker::Time { timestamp_ns: NOW, echo_ns: NOW - two_days };
        handle_message(&time, NOW - two_days, 2_000, &mut schedule, &mut state, &mut clock);
        assert!(schedule.due(2_000), "the corrected heartbeat goes at once");
        let offset = state.clock_offset_ns.expect("an offset in use");
        assert!(offset.abs_diff(two_days as i64) < 1_000_000, "{offset}");
        assert!(render(&state, NOW).contains("clock: this host's is 2 days behind the broker's"));
        // NTP answered: the broker's next ACK agrees with our own clock.
        let ack = FromBroker::Ack { timestamp_ns: NOW + 5, seen: "203.0.113.5:40001".parse().unwrap() };
        handle_message(&ack, NOW, 3_000, &mut schedule, &mut state, &mut clock);
        assert_eq!((state.clock_offset_ns, clock.offset_ns()), (None, None));
    }

    #[test]
    fn an_ack_records_the_public_endpoint_and_a_challenge_its_nonce() {
        let id = identity();
        // The schedule's clock (monotonic) is far from the wall clock: the
        // RTT must come from the former alone.
        const MONO: u64 = 3_600_000_000_000;
        let mut schedule = Schedule::new(Duration::from_secs(10), 0);
        schedule.sent(MONO - 5_000_000);
        let mut state = ClientState::default();
        let ack = from_broker(Kind::Ack, NOW, [203, 0, 113, 5, 0x9c, 0x41, 0, 0]);
        let ack = verify_from_broker(&ack, &id, 0, NOW, 0).unwrap();
        handle_message(&ack, NOW, MONO, &mut schedule, &mut state, &mut Default::default());
        assert_eq!(state.public_endpoint.as_deref(), Some("203.0.113.5:40001"));
        assert_eq!(state.rtt_us, Some(5_000));
        let ch = from_broker(Kind::Challenge, NOW + 1, [7; 8]);
        let ch = verify_from_broker(&ch, &id, NOW, NOW, 0).unwrap();
        handle_message(&ch, NOW + 1, MONO + 1, &mut schedule, &mut state, &mut Default::default());
        assert_eq!((schedule.nonce(), schedule.due(MONO + 1), state.challenges), ([7; 8], true, 1));
        assert_eq!(state.last_ack_ns, Some(NOW), "show reports wall time");
    }
}
