//! One run of the client against its broker: what it knows (link, path,
//! clocks, schedule, discovery) and a handler per thing that can happen —
//! a heartbeat due, a PROBE due, the broker's name resolved again, a
//! network change, a datagram. `serve` only dispatches to these.

use std::net::IpAddr;

use anyhow::Result;
use footunnel_ebpf::wire::{ControlMessage, Kind};
use rtnetlink::Handle;
use tracing::{debug, info, warn};

use super::{
    ClientConfig, ClientState, FromBroker, MtuMode, UNANSWERED_WARNING,
    answers::{broker_applied, handle_message},
    brokers::Brokers,
    clock, describe_broker, follow_local_address,
    message::from_broker,
    path, pmtu, probe,
    schedule::Schedule,
    verify_from_broker,
};
use crate::{
    addr::endpoint,
    mono_ns, next_timestamp, now_ns,
    os::link::{self, TunnelLink},
    os::{datagram::Datagram, rawudp::RawUdp},
    secret::TunnelIdentity,
    state::client::write_state,
};

pub(super) struct Session<'a> {
    config: &'a ClientConfig,
    handle: &'a Handle,
    broker: IpAddr,
    pub(super) link: TunnelLink,
    sport: u16,
    dport: u16,
    identity: TunnelIdentity,
    tunnel_path: path::TunnelPath,
    route: Option<path::Route>,
    pub(super) state: ClientState,
    pub(super) schedule: Schedule,
    /// The last timestamp sent (heartbeats and PROBEs): strictly increasing.
    last_sent_ts: u64,
    /// The last accepted broker timestamp (the increasing rule, that direction).
    last_broker_ts: u64,
    clock: clock::Clock,
    pub(super) pmtu: pmtu::PathMtu,
    /// The brokers in order, and which is in use.
    brokers: Brokers,
    /// A PROBE to an earlier broker, to see whether it is back: its
    /// address, timestamp and when it left (monotonic).
    returning: Option<(IpAddr, u64, u64)>,
}

/// How long a PROBE to an earlier broker is waited for.
const RETURN_WAIT_NS: u64 = 5_000_000_000;

impl<'a> Session<'a> {
    pub(super) async fn new(
        config: &'a ClientConfig,
        handle: &'a Handle,
        brokers: Brokers,
        mut link: TunnelLink,
        (sport, dport): (u16, u16),
        tunnel_path: path::TunnelPath,
    ) -> Session<'a> {
        let broker = brokers.current();
        let mut state = ClientState {
            broker: describe_broker(&config.broker, broker),
            link: link.name.clone(),
            ..Default::default()
        };
        if brokers.only().is_none() {
            state.broker = broker.to_string();
            state.brokers = brokers.addrs().map(|a| a.to_string()).collect();
            state.broker_why = Some(brokers.why().describe().to_owned());
        }
        if let MtuMode::Fixed(mtu) = config.mtu {
            pmtu::set_link_mtu(handle, &mut link, mtu, false).await;
            state.mtu = Some(mtu);
        }
        Session {
            config,
            handle,
            broker,
            route: path::route_to(handle, broker, &tunnel_path).await,
            link,
            sport,
            dport,
            identity: TunnelIdentity::derive(&config.secret),
            tunnel_path,
            state,
            // Timers run on the monotonic clock: a wall clock stepped back must
            // not silence the client. Only the wire timestamps are wall time.
            schedule: Schedule::new(config.interval, mono_ns()),
            last_sent_ts: 0,
            last_broker_ts: 0,
            clock: clock::Clock::default(),
            pmtu: pmtu::PathMtu::new(config.mtu),
            brokers,
            returning: None,
        }
    }

    /// The next wire timestamp: on the broker's clock if TIME said ours is
    /// wrong, and after every one sent before.
    fn stamp(&mut self) -> u64 {
        self.last_sent_ts = next_timestamp(self.clock.now(now_ns()), self.last_sent_ts);
        self.last_sent_ts
    }

    /// Sends from the tunnel's port and the address its route to the broker uses.
    fn send(&self, socket: &RawUdp, payload: &[u8]) -> Result<IpAddr> {
        let src = path::source(self.route.as_ref(), self.broker);
        socket.send(src, self.sport, self.broker, self.dport, payload).map(|()| src)
    }

    /// The heartbeat timer.
    pub(super) async fn heartbeat(&mut self, socket: &RawUdp) {
        let now = mono_ns();
        if !self.schedule.due(now) {
            return;
        }
        let ts = self.stamp();
        self.clock.sent(ts, now);
        let msg = ControlMessage::new(Kind::Heartbeat, self.identity.id, ts, self.schedule.nonce())
            .sign(self.identity.sip_key());
        self.route = path::route_to(self.handle, self.broker, &self.tunnel_path).await.or(self.route);
        match self.send(socket, &msg.to_bytes()) {
            Ok(src) => {
                debug!("heartbeat from {}", endpoint(src, self.sport));
                self.state.heartbeats += 1;
            }
            Err(e) => warn!("{e:#}"),
        }
        self.schedule.sent(now);
        if let Some(next) = self.brokers.unanswered(self.schedule.unanswered(), now) {
            let from = self.broker;
            warn!("broker {from}: {} heartbeats unanswered; moving on to {next}", self.schedule.unanswered());
            self.move_to(next).await;
            return;
        }
        self.try_return(socket, now);
        if self.schedule.unanswered() == UNANSWERED_WARNING {
            warn!(
                "no ACK for the last {UNANSWERED_WARNING} heartbeats: the tunnel may be down. Check that the \
                 broker runs and has this secret, that {} is reachable, and this host's clock \
                 (the broker refuses heartbeats outside its freshness window; `footunnel show` on the \
                 broker counts them as stale)",
                endpoint(self.broker, self.dport)
            );
        }
    }

    /// The discovery timer: a PROBE to send, an MTU to set, or the end.
    pub(super) async fn probe(&mut self, socket: &RawUdp) {
        let now = mono_ns();
        let before = self.pmtu.discovery.phase();
        match self.pmtu.discovery.step(now) {
            Some(probe::Step::Send(p)) => {
                let ts = self.stamp();
                match self.send(socket, &pmtu::probe_bytes(&self.identity, ts, p)) {
                    Ok(_) if p.mtu != 0 => debug!("PROBE telling the broker MTU {}", p.mtu),
                    Ok(_) => debug!("PROBE of {} bytes", p.len),
                    Err(e) => debug!("PROBE of {} bytes not sent: {e:#}", p.len),
                }
                self.pmtu.discovery.sent(ts);
            }
            Some(probe::Step::SetMtu(mtu)) => {
                pmtu::set_link_mtu(self.handle, &mut self.link, mtu, true).await;
                (self.state.mtu, self.state.mtu_discovered, self.state.broker_mtu) = (Some(mtu), true, None);
                write_state(&self.config.state_dir, &self.state);
                self.pmtu.discovery.mtu_set(mtu, now);
            }
            Some(probe::Step::Failed) => {
                warn!("{}", pmtu::failed(&self.link));
                self.pmtu.ended(now);
            }
            None => {
                if let (probe::Phase::Announcing { .. }, probe::Phase::Done { mtu, .. }) =
                    (before, self.pmtu.discovery.phase())
                {
                    warn!(
                        "the broker did not confirm MTU {mtu} for its end of the tunnel: check its log; large \
                         packets from it may be dropped"
                    );
                    self.pmtu.ended(now);
                }
            }
        }
    }

    /// Heartbeats and PROBEs go to `to` from now on (the link: the caller's
    /// business). Its messages are another sender's (another machine, as a
    /// rule, when a name resolves elsewhere): the increasing rule for them
    /// starts over.
    async fn now_sending_to(&mut self, to: IpAddr) {
        self.broker = to;
        self.last_broker_ts = 0;
        self.route = path::route_to(self.handle, to, &self.tunnel_path).await;
        self.pmtu.path_changed();
    }

    /// Moves to broker `to` of the list; heartbeats go there at once.
    async fn move_to(&mut self, to: IpAddr) {
        match link::repoint(self.handle, &self.link, to, self.dport).await {
            Ok(updated) => self.link = updated,
            Err(e) => {
                warn!(
                    "link {} cannot be pointed at broker {to}: {e:#}; heartbeats go there all the same",
                    self.link.name
                )
            }
        }
        self.now_sending_to(to).await;
        info!("broker {to} now ({}): link {} points there", self.brokers.why().describe(), self.link.name);
        self.state.broker = to.to_string();
        self.state.broker_why = Some(self.brokers.why().describe().to_owned());
        self.state.failovers += 1;
        write_state(&self.config.state_dir, &self.state);
        self.schedule.moved(mono_ns());
    }

    /// On a broker after the first: a PROBE (which moves nothing) to an
    /// earlier one whose hold has ended, to see whether it is back.
    fn try_return(&mut self, socket: &RawUdp, now: u64) {
        if let Some((addr, _, sent)) = self.returning {
            if now.saturating_sub(sent) < RETURN_WAIT_NS {
                return;
            }
            debug!("broker {addr} did not answer a PROBE: still avoided");
            self.brokers.still_gone(addr, now);
            self.returning = None;
        }
        let Some(addr) = self.brokers.to_try(now) else { return };
        let ts = self.stamp();
        let probe = footunnel_ebpf::wire::Probe { len: footunnel_ebpf::wire::MESSAGE_LEN as u16, mtu: 0 };
        let src = path::source(self.route.as_ref(), addr);
        match socket.send(src, self.sport, addr, self.dport, &pmtu::probe_bytes(&self.identity, ts, probe)) {
            Ok(()) => {
                debug!("PROBE to broker {addr}: is it back?");
                self.returning = Some((addr, ts, now));
            }
            Err(e) => debug!("PROBE to broker {addr} not sent: {e:#}"),
        }
    }

    /// A PROBE_ACK from an earlier broker answering [`Session::try_return`].
    async fn returned(&mut self, d: &Datagram) -> bool {
        let Some((addr, ts, _)) = self.returning else { return false };
        let Some(msg) = from_broker(d, addr, self.sport, self.dport) else { return false };
        match verify_from_broker(msg, &self.identity, 0, 0, 0) {
            Ok(FromBroker::ProbeAck { echo_ns, .. }) if echo_ns == ts => {
                self.returning = None;
                if self.brokers.returned(addr) {
                    self.move_to(addr).await;
                }
            }
            _ => debug!("dropped a message from broker {addr}"),
        }
        true
    }

    /// The broker's name resolved again: a new address is followed.
    pub(super) async fn broker_resolved(&mut self, answer: Result<IpAddr>, socket: &RawUdp) -> Result<()> {
        let now_at = match answer {
            Ok(a) if a != self.broker => a,
            Ok(_) => return Ok(()),
            Err(e) => {
                warn!("{e:#}; still sending to {}", self.broker);
                return Ok(());
            }
        };
        // Only where the link can point: a link elsewhere carries no traffic.
        match link::repoint(self.handle, &self.link, now_at, self.dport).await {
            Ok(updated) => self.link = updated,
            Err(e) => {
                warn!(
                    "broker {} now resolves to {now_at}, but link {} cannot be pointed there: {e:#}; still sending \
                     to {}",
                    self.config.broker, self.link.name, self.broker
                );
                return Ok(());
            }
        }
        let was = self.broker;
        self.now_sending_to(now_at).await;
        socket.only_control_messages(now_at, self.dport, self.sport)?;
        // Logged once done: whoever reads this may read the link next.
        info!(
            "broker {} now resolves to {now_at} (was {was}): link {} points there",
            self.config.broker, self.link.name
        );
        self.state.broker = describe_broker(&self.config.broker, now_at);
        write_state(&self.config.state_dir, &self.state);
        self.schedule.network_changed(mono_ns());
        Ok(())
    }

    /// Links, addresses or routes changed somewhere on this host.
    pub(super) async fn network_changed(&mut self) {
        if follow_local_address(self.handle, &mut self.link, self.broker, &mut self.tunnel_path).await {
            self.schedule.network_changed(mono_ns());
        }
        // Container churn and the like change links and addresses all the
        // time; only a new path to the broker needs a heartbeat.
        let now_route = path::route_to(self.handle, self.broker, &self.tunnel_path).await;
        if now_route != self.route {
            debug!("the path to the broker changed ({:?} → {now_route:?}); heartbeat soon", self.route);
            self.route = now_route;
            self.schedule.network_changed(mono_ns());
            self.pmtu.path_changed();
        }
    }

    /// A datagram on the tunnel's port: the broker's, if it verifies.
    pub(super) async fn datagram(&mut self, d: &Datagram) {
        if d.src != self.broker && self.returned(d).await {
            return;
        }
        let Some(msg) = from_broker(d, self.broker, self.sport, self.dport) else { return };
        let now = now_ns();
        let window = self.config.freshness_window_ns;
        match verify_from_broker(msg, &self.identity, self.last_broker_ts, self.clock.now(now), window) {
            Ok(FromBroker::ProbeAck { echo_ns, probe }) => self.probe_acked(echo_ns, probe),
            Ok(m) => {
                self.last_broker_ts = m.timestamp_ns();
                let (schedule, state, clock) = (&mut self.schedule, &mut self.state, &mut self.clock);
                if handle_message(&m, now, mono_ns(), schedule, state, clock) {
                    // Stamped on the wrong clock, the last heartbeats were refused:
                    // the next is stamped on the broker's, also if that is earlier.
                    self.last_sent_ts = 0;
                }
                if matches!(m, FromBroker::Ack { .. }) {
                    self.brokers.acked();
                }
                write_state(&self.config.state_dir, &self.state);
                if matches!(m, FromBroker::Ack { .. }) && self.pmtu.due(mono_ns()) {
                    let rtt_ns = self.state.rtt_us.unwrap_or(0) * 1_000;
                    self.pmtu.start(self.handle, &self.link, self.route.as_ref(), rtt_ns, mono_ns()).await;
                }
            }
            Err(r) => debug!("dropped a message from the broker: {r:?}"),
        }
    }

    fn probe_acked(&mut self, echo_ns: u64, probe: footunnel_ebpf::wire::Probe) {
        if !self.pmtu.discovery.acked(echo_ns, probe, mono_ns()) {
            return;
        }
        debug!("PROBE_ACK: {} bytes pass both ways", probe.len);
        if let probe::Phase::Done { mtu, broker: Some(applied) } = self.pmtu.discovery.phase() {
            self.pmtu.ended(mono_ns());
            broker_applied(mtu, applied);
            self.state.broker_mtu = Some(applied);
            write_state(&self.config.state_dir, &self.state);
        }
    }
}
