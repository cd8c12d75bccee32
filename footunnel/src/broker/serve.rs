//! The broker's event loop: a dispatcher to a handler per source — SIGHUP,
//! data-plane events, link changes, metrics requests, the sweep.

use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
};
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use footunnel_ebpf::maps::{self, Event};

use super::{Broker, Mode, ReloadOutcome, Reread, metrics, peers::PeerSocket, program, settings};
use crate::{broker::dataplane, broker::decide, broker::tunnels, now_ns};

/// What the sweep carries from one second to the next.
struct Sweep {
    ticks: u64,
    /// EVENTS_LOST as last read: a change means events were missed.
    lost: u64,
    pacer: decide::SweepPacer,
}

/// Every event waiting in the ring buffer.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<Event> {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<Event>() {
            batch.push(*bytemuck::from_bytes::<Event>(&item[..size_of::<Event>()]));
        }
    }
    batch
}

/// The next datagram on the peer socket; never, without one.
async fn peer_datagram(socket: Option<&PeerSocket>) -> Option<Result<(Vec<u8>, std::net::IpAddr)>> {
    match socket {
        Some(s) => Some(s.receive().await),
        None => std::future::pending().await,
    }
}

impl Broker {
    /// A peer's query about a tunnel's prefixes (only listed peers are answered).
    async fn answer_peer(&mut self, received: Result<(Vec<u8>, std::net::IpAddr)>) {
        let (payload, from) = match received {
            Ok(r) => r,
            Err(e) => return warn!("{e:#}"),
        };
        let Some(socket) = &self.peer_socket else { return };
        if !self.config.peers.contains(&from) {
            return tracing::debug!("dropped a datagram on peer_port from {from}, which is not in peers");
        }
        socket.answer(&socket.running, &payload, from, self.config.freshness_window_ns).await;
    }

    /// SIGHUP: re-reads the configuration and applies the difference; a bad
    /// one changes nothing. The outcome goes to the log and the state file.
    async fn on_hangup(&mut self, reread: &Reread) {
        info!("SIGHUP: reloading the configuration");
        let result = match reread() {
            Ok(new) => self.reload(new).await,
            Err(e) => Err(e),
        };
        let generation = self.last_reload.as_ref().map_or(0, |r| r.generation) + 1;
        let outcome = match result {
            Ok(summary) => {
                info!("configuration reloaded: {summary}");
                ReloadOutcome { generation, ok: true, message: summary }
            }
            Err(e) => {
                warn!("reload refused, the running configuration stays: {e:#}");
                ReloadOutcome { generation, ok: false, message: format!("{e:#}") }
            }
        };
        self.last_reload = Some(outcome);
        if let Err(e) = self.write_state() {
            warn!("{e:#}");
        }
    }

    /// The metrics page: `footunnel show`'s report, and what only this process knows.
    fn metrics_text(&self) -> String {
        let report = match crate::broker::show::collect(&self.config.state_dir) {
            Ok(r) => r,
            Err(e) => return format!("# footunnel cannot read its own state: {e:#}\n"),
        };
        let extra = metrics::BrokerExtra {
            challenges_sent: self.table.tunnels.iter().map(|t| (t.config.name.clone(), t.challenges_sent)).collect(),
            // Per-link mode: where each link points as the controller last read it.
            links: match self.mode {
                Mode::Shared(_) => Vec::new(),
                Mode::PerLink => self
                    .table
                    .tunnels
                    .iter()
                    .map(|t| (t.config.name.clone(), tunnels::describe(t.link.endpoint())))
                    .collect(),
            },
            programs: self.program_stats(),
        };
        metrics::text(&report, &extra, now_ns())
    }

    /// (program, runs, seconds) of the attached program while the kernel
    /// keeps BPF run-time statistics (`sysctl kernel.bpf_stats_enabled=1`).
    fn program_stats(&self) -> Vec<(String, u64, f64)> {
        let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1");
        let name = match self.config.attach {
            crate::config::Attach::Xdp => dataplane::XDP_PROGRAM,
            crate::config::Attach::Tc => dataplane::TC_PROGRAM,
        };
        match self.ebpf.program(name).map(|p| p.info()) {
            Some(Ok(info)) if enabled => {
                vec![(name.to_owned(), info.run_count(), info.run_time().as_secs_f64())]
            }
            _ => Vec::new(),
        }
    }

    pub(super) async fn serve(
        mut self,
        reread: Reread,
        mut metrics: Option<crate::metrics::Server>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP (reload)")?;
        crate::os::service::release_hangups();
        let events = self.ebpf.take_map(maps::EVENTS).context("the eBPF object has no EVENTS map")?;
        // SAFETY: the ring buffer owns its descriptor for as long as the AsyncFd holds it.
        let mut events = unsafe { AsyncFd::register(RingBuf::try_from(events)?) }
            .map_err(|e| anyhow::anyhow!("cannot poll the event ring buffer: {e}"))?;
        // Links edited or re-created by someone else (an operator, systemd-networkd)
        // are noticed at once and put back on their endpoints.
        let (monitor, _, mut link_changes) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .context("cannot watch for link changes over rtnetlink")?;
        tokio::spawn(monitor);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        // A tick that came late (a slow sweep) is not made up in a burst.
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pass = Sweep {
            ticks: 0,
            lost: dataplane::counter(&self.ebpf, maps::Counter::EventsLost).unwrap_or(0),
            pacer: decide::SweepPacer::default(),
        };
        tokio::pin!(shutdown);
        let running = format!("{} tunnel(s) on {}", self.table.tunnels.len(), self.interfaces.join(", "));
        info!("broker running: {running}");
        crate::os::service::notify_ready(&running);
        loop {
            tokio::select! {
                // In this order: the sweep only when nothing else is ready.
                biased;
                _ = &mut shutdown => break,
                Some(()) = hangups.recv() => self.on_hangup(&reread).await,
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    let batch = drain(guard.get_inner_mut());
                    guard.clear_ready();
                    for event in batch {
                        self.handle(event).await;
                    }
                }
                Some((message, _)) = link_changes.next() => self.link_changed(&message).await,
                // After events and link changes: local connections never hold
                // up re-pointing (the page is rendered at most once a second).
                work = crate::metrics::next(metrics.as_mut()) => {
                    if let Some(server) = metrics.as_mut() {
                        server.handle(work, || self.metrics_text());
                    }
                }
                Some(received) = peer_datagram(self.peer_socket.as_ref()) => self.answer_peer(received).await,
                _ = sweep.tick() => self.sweep(&mut pass).await,
                // Last, and one link a turn: events and link changes never
                // wait behind the sweep.
                _ = std::future::ready(()), if pass.pacer.is_due() => {
                    if let Some(i) = pass.pacer.next(self.table.tunnels.len()) {
                        self.reconcile(i).await;
                    }
                }
            }
        }
        info!(
            "shutting down; the data plane stays attached and keeps recording (state in {})",
            self.config.pin_dir.display()
        );
        Ok(())
    }

    /// An uplink deleted and created again under its name gets the program
    /// back (and, in shared-device mode, becomes the way out again).
    fn follow_uplink(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) {
        let (link, deleted) = match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, false),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, true),
            _ => return,
        };
        let Some(name) = crate::os::link::message_name(link) else { return };
        let Some(&before) = self.uplink_index.get(name) else { return };
        let now = link.header.index;
        if deleted {
            if now == before {
                warn!(
                    "uplink {name} was deleted: no heartbeat is seen until it is back (the program is attached again then)"
                );
            }
            return;
        }
        if now == before {
            return;
        }
        let name = name.clone();
        match program::reattach(&mut self.ebpf, &self.config, &name) {
            Ok(()) => {
                self.uplink_index.insert(name.clone(), now);
                info!("uplink {name} was re-created (ifindex {before} → {now}): its program is attached again");
            }
            Err(e) => {
                warn!(
                    "uplink {name} was re-created (ifindex {before} → {now}) and its program cannot be attached again: {e:#}; restart the broker"
                );
                return;
            }
        }
        if let Some(shared) = self.mode.shared_mut()
            && shared.device.uplink == before
        {
            shared.device.uplink = now;
            let device = &shared.device;
            if let Err(e) = dataplane::set_settings(&mut self.ebpf, settings(&self.config, Some(device))) {
                warn!("{e:#}");
            }
            info!("shared device {}: packets leave by ifindex {now} again", device.name);
        }
    }

    /// The tunnel whose link a link notification is about, by name (a
    /// re-created link has a new index) or by index (a renamed one).
    fn changed_tunnel(&self, message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<usize> {
        let link = match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l)) => l,
            _ => return None,
        };
        crate::os::link::message_name(link)
            .and_then(|n| self.table.by_link(n))
            .or_else(|| self.table.tunnels.iter().position(|t| t.link.index == link.header.index))
    }
    /// A link changed: an uplink to follow, a tunnel's link to put back.
    async fn link_changed(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) {
        self.follow_uplink(message);
        let Some(i) = self.changed_tunnel(message) else { return };
        match self.mode {
            // Every tunnel's "link" is the device.
            Mode::Shared(_) => self.check_shared_device().await,
            Mode::PerLink => {
                self.reconcile(i).await;
            }
        }
    }

    /// The once-a-second sweep: silence, the state file, which links to
    /// re-read, and every 10 s the data plane's clock.
    async fn sweep(&mut self, pass: &mut Sweep) {
        self.check_silence_all().await;
        if std::mem::take(&mut self.state_dirty)
            && let Err(e) = self.write_state()
        {
            warn!("{e:#}");
        }
        // A tenth of the links due each second, each read every 10 s:
        // catches what events missed and links changed by hand. All
        // of them when the ring buffer overflowed.
        pass.ticks += 1;
        let now_lost = dataplane::counter(&self.ebpf, maps::Counter::EventsLost).unwrap_or(pass.lost);
        let everything = now_lost != pass.lost;
        pass.lost = now_lost;
        match self.mode {
            // One device for all, checked once; its local address is
            // the configuration's, so the data plane has nothing to follow.
            Mode::Shared(_) => {
                if everything || pass.ticks.is_multiple_of(decide::SWEEP_TICKS) {
                    self.check_shared_device().await;
                }
            }
            Mode::PerLink if everything => pass.pacer.all(self.table.tunnels.len()),
            Mode::PerLink => pass.pacer.tick(self.table.tunnels.len()),
        }
        if pass.ticks.is_multiple_of(decide::SWEEP_TICKS) {
            // Follows clock steps.
            let mut settings = self.settings();
            settings.realtime_offset_ns = dataplane::realtime_offset_ns();
            if let Err(e) = dataplane::set_settings(&mut self.ebpf, settings) {
                warn!("{e:#}");
            }
        }
    }
}
