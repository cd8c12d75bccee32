//! `footunnel broker`: checks the system, loads and attaches the data plane,
//! then turns what it records into link configuration, ACKs and CHALLENGEs.
//! Decisions come from `decide`; this module applies them.

pub mod metrics;
mod plan;
mod program;
mod reload;
mod shared;
mod silence;

use crate::{
    addr::endpoint,
    config::BrokerConfig,
    dataplane::{self},
    decide::{self, RateLimit},
    manage::{self, Created, LinkSpec},
    now_ns,
    rawudp::RawUdp,
    tunnels::{self, Running, TunnelTable},
};
use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
};
use footunnel_ebpf::{
    maps::{self, EVENT_HEARTBEAT, EVENT_LEGACY, EVENT_OBSERVED, EVENT_PROBE, EVENT_STALE, Endpoint, Event, Settings},
    wire::{Ack6, ControlMessage, Kind, Probe},
};
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::{Handle, MulticastGroup};
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use crate::state::broker::write_state;
pub use crate::state::broker::{ReloadOutcome, STATE_FILE, StateFile, StateTunnel, read_state};
use plan::{Plan, plan};
use program::{attach, ensure_pin_dir, fill_maps};
pub use program::{pinned_maps, unload};
pub use reload::request as request_reload;

/// What the broker sends a client.
#[derive(Clone, Copy)]
enum Answer {
    /// ACK, or ACK6 for a client at an IPv6 address.
    Ack,
    /// CHALLENGE with this nonce.
    Challenge([u8; 8]),
    /// TIME, echoing a refused heartbeat's timestamp.
    Time(u64),
    /// PROBE_ACK: the PROBE's length, the MTU applied, and its timestamp (echoed).
    ProbeAck(Probe, u64),
}

pub struct Broker {
    config: BrokerConfig,
    ebpf: Ebpf,
    handle: Handle,
    table: TunnelTable,
    sender: RawUdp,
    /// For clients at IPv6 addresses; the reason if this host has no IPv6.
    sender6: std::result::Result<RawUdp, String>,
    challenges: RateLimit,
    interfaces: Vec<String>,
    /// Each interface's ifindex when its program was attached: one deleted
    /// and re-created (ifdown/ifup of a VLAN or bond) has a new one, and no
    /// program until it is attached again.
    uplink_index: std::collections::HashMap<String, u32>,
    /// Shared-device mode's device.
    shared: Option<shared::SharedDevice>,
    /// Why the shared device does not carry the tunnels (no ACKs meanwhile),
    /// as last checked: at start, on its link notifications, every 10 s.
    shared_problem: Option<String>,
    /// Shared-device mode: why the uplink's MTU no longer fits the device's
    /// (changed since the start, which refuses a misfit), as last checked.
    shared_mtu_problem: Option<String>,
    /// Links and FoU listeners footunnel created, this run or earlier ones.
    created: Created,
    /// Shared-device mode: the MTU each tunnel's client discovered, on the
    /// routes of its prefixes (kept across reloads, which re-route).
    route_mtus: std::collections::HashMap<crate::addr::Prefix, u32>,
    last_reload: Option<ReloadOutcome>,
    /// A tunnel's problem changed since the state file was written.
    state_dirty: bool,
}

/// Reads the configuration again (SIGHUP): the file, with the command line's overrides.
pub type Reread = Box<dyn Fn() -> Result<BrokerConfig>>;

/// Runs the broker until `shutdown` resolves.
pub async fn run(config: BrokerConfig, reread: Reread, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    info!("footunnel {} broker starting", env!("CARGO_PKG_VERSION"));
    let metrics = match config.metrics {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open rtnetlink")?;
    tokio::spawn(connection);
    let mut created = bring_up_managed(&config, &handle, &HashSet::new()).await?;
    if let Some(shared) = &config.shared
        && let Err(e) = shared::bring_up(&handle, shared, config.fou_ports[0], &mut created).await
    {
        let _ = manage::down(&handle, &created).await;
        return Err(e);
    }
    let plan = match plan(&config, &handle).await {
        Ok(plan) => plan,
        Err(e) => {
            // Bad configuration changes nothing: take back what we just made.
            if let Err(undo) = manage::down(&handle, &created).await {
                warn!("{undo:#}");
            }
            return Err(e);
        }
    };
    debug!("configuration checked against the system");
    let mut table = TunnelTable::new(
        plan.tunnels.iter().map(|t| Running::new(t.config.clone(), t.link.clone(), t.prefixes.clone())).collect(),
    );
    if config.shared.is_none() {
        // Shared-device mode needs no catching up: its egress program reads
        // the pinned endpoints themselves, also while no controller runs.
        apply_pinned_endpoints(&handle, &config.pin_dir, &mut table).await;
    }
    let started = match Broker::start(config, handle.clone(), plan, table, created.clone()) {
        Ok(mut broker) => broker.serve_shared_device().await.map(|()| broker),
        Err(e) => Err(e),
    };
    let mut broker = match started {
        Ok(broker) => broker,
        Err(e) => {
            // A failed start leaves nothing of this run behind: what it
            // created would otherwise be recorded nowhere, and `unload` miss it.
            if let Err(undo) = manage::down(&handle, &created).await {
                warn!("{undo:#}");
            }
            return Err(e);
        }
    };
    broker.reconcile_all().await;
    for (a, b) in broker.table.collisions() {
        warn!(
            "tunnels {a:?} and {b:?} share a local address and their clients share a public address: \
             the kernel's FoU receive cannot tell them apart; give them distinct broker local addresses"
        );
    }
    broker.serve(reread, metrics, shutdown).await
}

/// Placeholder remotes for links footunnel creates, until the first
/// heartbeat, distinct per tunnel so links sharing a local address do not
/// collide: the 762 documentation addresses (RFC 5737) first, then the
/// reserved 240.0.0.0/4 (RFC 1112 §4), which no network routes either.
fn placeholder_remote(i: usize) -> Ipv4Addr {
    const DOCUMENTATION: usize = 3 * 254;
    if i < DOCUMENTATION {
        let (net, host) = (i / 254, (i % 254) as u8 + 1);
        return [Ipv4Addr::new(192, 0, 2, host), Ipv4Addr::new(198, 51, 100, host), Ipv4Addr::new(203, 0, 113, host)]
            [net];
    }
    // 240.0.0.1 onwards; 2^28 − 2 more before 255.255.255.255.
    Ipv4Addr::from(0xf000_0001 + (i - DOCUMENTATION) as u32 % 0x0fff_fffe)
}

/// Creates the FoU listener and the links of managed tunnels that are
/// missing; on failure, removes again what it created.
/// Placeholders in `in_use` (remotes of running links) are skipped.
async fn bring_up_managed(config: &BrokerConfig, handle: &Handle, in_use: &HashSet<Ipv4Addr>) -> Result<Created> {
    let mut created = Created::default();
    let mut placeholders = (0..).map(placeholder_remote).filter(|a| !in_use.contains(a));
    for t in &config.tunnels {
        let Some(m) = &t.manage else { continue };
        let remote = placeholders.next().expect("placeholders never run out");
        let spec = LinkSpec {
            name: t.link.clone(),
            local: Some(m.local),
            remote,
            ttl: m.ttl,
            sport: config.fou_ports[0],
            dport: config.fou_ports[0],
            address: Some(m.address),
            mtu: m.mtu,
        };
        if let Err(e) = manage::up(handle, &spec, &mut created).await {
            let _ = manage::down(handle, &created).await;
            return Err(e).with_context(|| format!("tunnel {:?}", t.name));
        }
    }
    if !created.is_empty() {
        info!("created links {:?} and FoU listeners on ports {:?}", created.links, created.fou_ports);
    }
    Ok(created)
}

impl Broker {
    fn start(
        config: BrokerConfig,
        handle: Handle,
        plan: Plan,
        table: TunnelTable,
        mut created: Created,
    ) -> Result<Self> {
        // What earlier runs created is still ours to remove.
        if let Ok(previous) = read_state(&config.state_dir) {
            for port in previous.created.fou_ports {
                if !created.fou_ports.contains(&port) {
                    created.fou_ports.push(port);
                }
            }
            for link in previous.created.links {
                if !created.links.contains(&link) {
                    created.links.push(link);
                }
            }
        }
        ensure_pin_dir(&config.pin_dir)?;
        dataplane::check_pinned_layouts(&config.pin_dir)?;
        let fresh = !config.pin_dir.join(maps::ENDPOINTS).exists();
        let paths: Vec<(&str, PathBuf)> = pinned_maps().map(|m| (m, config.pin_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(dataplane::OBJECT).context("loading the eBPF object with pinned maps failed")?;
        debug!("eBPF object loaded, maps open");
        let started = now_ns();
        let evicted = fill_maps(&mut ebpf, &config, &plan, started)?;
        let mut table = table;
        for t in &mut table.tunnels {
            t.evicted = evicted.contains(&t.config.record_id);
        }
        if fresh {
            info!(
                "fresh data plane state: only heartbeats newer than now are accepted (replays of older ones stay out)"
            );
        } else {
            info!("continuing from the pinned state in {}", config.pin_dir.display());
        }
        let mut uplink_index = std::collections::HashMap::new();
        for iface in &plan.interfaces {
            attach(&mut ebpf, &config, iface)?;
            uplink_index.insert(iface.clone(), ifindex(iface));
        }
        let challenges = RateLimit::new(config.challenge_rate, now_ns());
        let broker = Broker {
            config,
            ebpf,
            handle,
            table,
            sender: RawUdp::send_only()?.routed_by_source(),
            sender6: RawUdp::send_only6().map(RawUdp::routed_by_source).map_err(|e| format!("{e:#}")),
            challenges,
            interfaces: plan.interfaces,
            uplink_index,
            shared: plan.shared,
            shared_problem: None,
            shared_mtu_problem: None,
            route_mtus: Default::default(),
            created,
            last_reload: None,
            state_dirty: false,
        };
        broker.write_state()?;
        Ok(broker)
    }

    /// Shared-device mode: routes to every tunnel's prefixes through the
    /// device, and the program that addresses each packet on its egress.
    async fn serve_shared_device(&mut self) -> Result<()> {
        let Some(device) = self.shared.clone() else { return Ok(()) };
        let prefixes = self.table.prefixes();
        // The check first: nothing enters through the device unchecked.
        program::attach_device_ingress(&mut self.ebpf, &self.config.pin_dir, &device.name)?;
        shared::route(&self.handle, &device, &prefixes, &self.route_mtus).await?;
        program::attach_egress(&mut self.ebpf, &self.config.pin_dir, &device.name)?;
        info!(
            "shared device {}: {} tunnel(s), {} route(s); packets leave by ifindex {}",
            device.name,
            self.table.tunnels.len(),
            prefixes.len(),
            device.uplink
        );
        Ok(())
    }

    /// Re-reads the shared device; says so when it stops (or starts again)
    /// carrying the tunnels.
    async fn check_shared_device(&mut self) {
        let Some(device) = self.shared.clone() else { return };
        let mut problem = shared::check_device(&self.handle, &device).await.err().map(|e| format!("{e:#}"));
        if problem.is_none() && self.shared_problem.is_some() {
            // The kernel drops a device's routes when it goes down.
            if let Err(e) = shared::route(&self.handle, &device, &self.table.prefixes(), &self.route_mtus).await {
                problem = Some(format!("{e:#}"));
            }
        }
        let mtu = self.uplink_mtu_problem(&device).await;
        if mtu != self.shared_mtu_problem {
            match &mtu {
                Some(p) => warn!("{p}"),
                None => info!("the uplink's MTU fits shared device {} again", device.name),
            }
            self.shared_mtu_problem = mtu;
        }
        if problem != self.shared_problem {
            self.shared_problem = problem;
            // `footunnel show` says it too, by the time the log does.
            if let Err(e) = self.write_state() {
                warn!("{e:#}");
            }
            match &self.shared_problem {
                Some(p) => warn!("{p}; no ACKs until it is back"),
                None => info!("shared device {} carries the tunnels again (routes restored)", device.name),
            }
        }
    }

    /// Why the uplink's MTU (as it is now) does not fit the shared device's.
    async fn uplink_mtu_problem(&self, device: &shared::SharedDevice) -> Option<String> {
        let mtu = self.config.shared.as_ref()?.mtu;
        let link = crate::link::by_index(&self.handle, device.uplink).await.ok()?;
        let name = crate::link::message_name(&link).cloned().unwrap_or_else(|| format!("ifindex {}", device.uplink));
        shared::mtu_problem(mtu, &name, crate::link::message_mtu(&link)?)
    }

    /// What `footunnel show`, `reload` and `unload` read.
    fn write_state(&self) -> Result<()> {
        let state = StateFile {
            pid: Some(std::process::id()),
            pin_dir: self.config.pin_dir.clone(),
            attach: format!("{:?}", self.config.attach).to_lowercase(),
            interfaces: self.interfaces.clone(),
            fou_ports: self.config.fou_ports.clone(),
            legacy_port: self.config.tunnels.iter().any(|t| t.legacy).then_some(self.config.legacy_port),
            created: self.created.clone(),
            reload: self.last_reload.clone(),
            shared_device: self.shared.as_ref().map(|d| d.name.clone()),
            shared_problem: self.shared_problem.clone(),
            tunnels: self
                .table
                .tunnels
                .iter()
                .map(|t| StateTunnel {
                    name: t.config.name.clone(),
                    link: t.config.link.clone(),
                    id: t.config.identity.id,
                    next_id: t.config.next.as_ref().map(|n| n.identity.id),
                    record_id: t.config.record_id,
                    legacy: t.config.legacy,
                    peer_prefixes: t.prefixes.iter().map(|p| p.to_string()).collect(),
                    since_ns: t.since_ns,
                    silence_timeout_ns: t.config.silence.map(|s| s.timeout_ns),
                    on_silence: t.config.silence.map(|s| s.action),
                    problem: t.problem().map(str::to_owned),
                })
                .collect(),
        };
        write_state(&self.config.state_dir, &state)
    }

    fn endpoint(&self, id: u64) -> Option<Endpoint> {
        dataplane::endpoint(&self.ebpf, id).unwrap_or_else(|e| {
            warn!("{e:#}");
            None
        })
    }

    /// Makes every link match its recorded endpoint.
    async fn reconcile_all(&mut self) {
        if self.shared.is_some() {
            // One device for all, checked once; its local address is the
            // configuration's, so the data plane has nothing to follow.
            self.check_shared_device().await;
            return;
        }
        for i in 0..self.table.tunnels.len() {
            self.reconcile(i).await;
        }
    }

    /// Makes tunnel `i`'s link match its recorded endpoint; where the link
    /// points afterwards, as the kernel has it.
    async fn reconcile(&mut self, i: usize) -> Option<decide::LinkEndpoint> {
        let recorded = self.endpoint(self.table.tunnels[i].config.record_id);
        if self.shared.is_some() {
            // No link to change: the egress program reads the endpoint map.
            return self.shared_problem.is_none().then(|| shared::reaches(recorded.as_ref()));
        }
        let target = if self.parked(i) {
            // Silent under `on_silence = "down"`, or its endpoint forgotten
            // with a replaced secret: the link keeps its routes and
            // addresses, and sends to a place no network routes.
            let port = self.table.tunnels[i].link.encap_dport().unwrap_or(self.config.fou_ports[0]);
            Some(Endpoint { addr: self.parking_remote(i).into(), port, ..Endpoint::default() })
        } else {
            recorded
        };
        let after = self.table.reconcile(&self.handle, i, target.as_ref()).await;
        self.follow_local_address(i);
        let t = &mut self.table.tunnels[i];
        if t.problem_changed {
            // Written by the next sweep tick: a burst of problems is one write.
            t.problem_changed = false;
            self.state_dirty = true;
        }
        after
    }

    /// The data plane accepts a tunnel's packets only at its link's local
    /// address: when someone changes that, the data plane follows.
    fn follow_local_address(&mut self, i: usize) {
        let t = &self.table.tunnels[i];
        let local = t.link.local_ip();
        let wanted = program::key_entries(&t.config, local);
        let current =
            wanted.iter().all(|(id, config)| dataplane::tunnel(&self.ebpf, *id).ok().flatten() == Some(*config));
        if current {
            return;
        }
        info!(
            "tunnel {}: the data plane now takes its packets at {}",
            t.config.name,
            local.map_or("any local address".to_owned(), |a| a.to_string())
        );
        let prefixes: Vec<_> = t.prefixes.iter().map(|p| (p.addr, p.len, t.config.record_id, local)).collect();
        let name = t.config.name.clone();
        let result = wanted
            .iter()
            .try_for_each(|(id, c)| dataplane::add_key(&mut self.ebpf, *id, c.key.key, local, c.record))
            .and_then(|()| {
                prefixes
                    .iter()
                    .try_for_each(|(a, l, id, local)| dataplane::add_prefix(&mut self.ebpf, *a, *l, *id, *local))
            });
        if let Err(e) = result {
            warn!("tunnel {name}: {e:#}");
        }
    }

    async fn handle(&mut self, event: Event) {
        let Some(i) = self.table.by_record_id(event.record_id) else {
            debug!("event for unknown tunnel record {:016x}", event.record_id);
            return;
        };
        let source = (event.addr.ip(), event.port);
        let name = self.table.tunnels[i].config.name.clone();
        match event.kind {
            EVENT_HEARTBEAT | EVENT_LEGACY => {
                debug!("tunnel {name}: heartbeat from {}", endpoint(source.0, source.1));
                self.table.tunnels[i].legacy_client = event.kind == EVENT_LEGACY;
                // Accepted, so under a secret the tunnel has now.
                self.table.tunnels[i].evicted = false;
                self.check_silence(i).await;
                let after = self.reconcile(i).await;
                if event.kind != EVENT_HEARTBEAT {
                    return; // the proof of concept's client cannot read an ACK
                }
                let link_down = self.shared.is_none() && !self.table.tunnels[i].link.up;
                if link_down {
                    info!(
                        "tunnel {name}: no ACK to {}: link {} is down, so nothing passes; \
                         `ip link set {} up` (footunnel never sets a link down)",
                        endpoint(source.0, source.1),
                        self.table.tunnels[i].link.name,
                        self.table.tunnels[i].link.name
                    );
                } else if decide::may_ack(after, source) {
                    // Under the key of the heartbeat it answers, which the endpoint records.
                    let key_id = self.endpoint(event.record_id).map_or(0, |e| e.key_id);
                    self.send(i, Answer::Ack, key_id, event.dst_addr.ip(), source);
                } else if self.shared.is_some() && source.0.is_ipv6() {
                    info!(
                        "tunnel {name}: no ACK to {}: shared-device mode carries IPv4 endpoints only; \
                         use per-link mode with an ip6tnl link for IPv6 clients",
                        endpoint(source.0, source.1)
                    );
                } else {
                    info!(
                        "tunnel {name}: no ACK to {}: the link does not point there (it points at {})",
                        endpoint(source.0, source.1),
                        after.map_or("nothing: it is missing".to_owned(), tunnels::describe)
                    );
                }
            }
            EVENT_OBSERVED => self.challenge(i, event.dst_addr.ip(), source, event.observed_payload_len()),
            EVENT_STALE => self.tell_time(i, &event, source),
            EVENT_PROBE => self.answer_probe(i, &event, source).await,
            other => debug!("unknown event kind {other}"),
        }
    }

    fn challenge(&mut self, i: usize, to_local: IpAddr, source: (IpAddr, u16), trigger_len: u16) {
        let from = endpoint(source.0, source.1);
        let now = now_ns();
        let t = &self.table.tunnels[i];
        if t.legacy_client {
            debug!(
                "tunnel {}: FoU data from {from}, but its client speaks the proof of concept's protocol and \
                 cannot answer a challenge",
                t.config.name
            );
            return;
        }
        if !decide::may_challenge(trigger_len) {
            debug!("tunnel {}: {from} sent {trigger_len} bytes, too few to answer with a challenge", t.config.name);
            return;
        }
        if !decide::spaced(t.last_challenge_ns, now, self.config.challenge_interval_ns) || !self.challenges.allow(now) {
            debug!("tunnel {}: challenge to {from} rate-limited", t.config.name);
            return;
        }
        info!("tunnel {}: FoU data from {from}, not its endpoint: challenging", t.config.name);
        self.table.tunnels[i].last_challenge_ns = Some(now);
        self.table.tunnels[i].challenges_sent += 1;
        let mut nonce = [0u8; 8];
        getrandom(&mut nonce);
        // Under the key the client used last: during a rotation, the one it has.
        let key_id = self.endpoint(self.table.tunnels[i].config.record_id).map_or(0, |e| e.key_id);
        self.send(i, Answer::Challenge(nonce), key_id, to_local, source);
    }

    /// A correctly tagged heartbeat refused as stale or replayed (the data
    /// plane announces at most one a second per tunnel): TIME tells its
    /// sender the broker's clock, under the heartbeat's own key.
    fn tell_time(&mut self, i: usize, event: &Event, source: (IpAddr, u16)) {
        let t = &self.table.tunnels[i];
        let (key_id, echo) = (event.key_id(), event.timestamp_ns);
        if t.config.identity_for(key_id).is_none() || !self.challenges.allow(now_ns()) {
            debug!(
                "tunnel {}: no TIME to {} (rate-limited or an old key)",
                t.config.name,
                endpoint(source.0, source.1)
            );
            return;
        }
        let off = echo as i128 - now_ns() as i128;
        info!(
            "tunnel {}: heartbeat from {} refused, its clock {} ours: answering with TIME",
            t.config.name,
            endpoint(source.0, source.1),
            crate::describe_offset(off)
        );
        // Stamped after the tunnel's last accepted heartbeat: a client whose
        // clock is only a little behind its own earlier heartbeats (a reboot)
        // moves past them by this TIME.
        let last_accepted = self.endpoint(event.record_id).map_or(0, |e| e.last_timestamp_ns);
        let t = &mut self.table.tunnels[i];
        t.last_sent_ns = t.last_sent_ns.max(last_accepted);
        self.send(i, Answer::Time(echo), key_id, event.dst_addr.ip(), source);
    }

    /// A verified PROBE (the data plane announces at most ten a second per
    /// tunnel): a PROBE_ACK as long as the PROBE, under its key; and, if it
    /// asks for an MTU and comes from the tunnel's endpoint, that MTU.
    async fn answer_probe(&mut self, i: usize, event: &Event, source: (IpAddr, u16)) {
        let (key_id, probe) = (event.key_id(), event.probe());
        let name = self.table.tunnels[i].config.name.clone();
        if self.table.tunnels[i].config.identity_for(key_id).is_none() {
            debug!("tunnel {name}: no PROBE_ACK to {}: an old key", endpoint(source.0, source.1));
            return;
        }
        let mut applied = 0;
        if probe.mtu != 0 {
            let from_endpoint =
                self.endpoint(event.record_id).is_some_and(|e| (e.addr.ip(), e.port) == (source.0, source.1));
            if from_endpoint {
                applied = self.apply_mtu(i, probe.mtu, source.0.is_ipv6()).await.unwrap_or(0);
            } else {
                info!(
                    "tunnel {name}: a PROBE from {} asks for MTU {}, but that is not the tunnel's endpoint: \
                     not applied (the client's next heartbeat makes it the endpoint)",
                    endpoint(source.0, source.1),
                    probe.mtu
                );
            }
        }
        let answer = Answer::ProbeAck(Probe { len: probe.len, mtu: applied }, event.timestamp_ns);
        self.send(i, answer, key_id, event.dst_addr.ip(), source);
    }

    /// Applies the inner MTU a tunnel's client discovered: its link's MTU
    /// (per-link mode) or the route MTU of its prefixes (shared mode). The
    /// MTU applied, or `None` (refused or failed, with a log line).
    async fn apply_mtu(&mut self, i: usize, asked: u16, outer_ipv6: bool) -> Option<u16> {
        let t = &self.table.tunnels[i];
        let name = t.config.name.clone();
        let carries_ipv6 = match &self.shared {
            Some(_) => false,
            None => t.link.inner_protocol() != Some(4),
        };
        let mut ceiling = 0;
        for iface in &self.interfaces {
            let index = self.uplink_index.get(iface).copied().unwrap_or_else(|| ifindex(iface));
            if let Ok(link) = crate::link::by_index(&self.handle, index).await
                && let Some(device_mtu) = crate::link::message_mtu(&link)
            {
                ceiling = ceiling.max(crate::mtu::ceiling(device_mtu, outer_ipv6));
            }
        }
        let mtu = match crate::mtu::check(asked, crate::mtu::floor(carries_ipv6), ceiling) {
            Ok(mtu) => mtu,
            Err(why) => {
                warn!("tunnel {name}: its client asks for an MTU the broker refuses: {why}");
                return None;
            }
        };
        let applied = match &self.shared {
            Some(device) => {
                let prefixes = t.prefixes.clone();
                let before: Vec<_> = prefixes.iter().map(|p| self.route_mtus.insert(*p, u32::from(mtu))).collect();
                if before.iter().all(|b| *b == Some(u32::from(mtu))) {
                    return Some(mtu);
                }
                shared::route(&self.handle, device, &prefixes, &self.route_mtus).await.map(|()| {
                    format!("the routes of {}", prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "))
                })
            }
            None => {
                if t.link.mtu == Some(u32::from(mtu)) {
                    return Some(mtu);
                }
                let (index, link) = (t.link.index, t.link.name.clone());
                crate::link::set_mtu(&self.handle, index, u32::from(mtu)).await.map(|()| {
                    self.table.tunnels[i].link.mtu = Some(u32::from(mtu));
                    format!("link {link}")
                })
            }
        };
        match applied {
            Ok(what) => {
                info!("tunnel {name}: MTU {mtu}, as its client discovered, on {what}");
                Some(mtu)
            }
            Err(e) => {
                warn!("tunnel {name}: {e:#}");
                None
            }
        }
    }

    /// Sends a control message from the tunnel's FoU port and `from`: the
    /// address the packet it answers was sent to, so an endpoint-dependent
    /// NAT lets it through (the link's local address if that is unknown).
    /// An ACK to a client seen at an IPv6 address is an ACK6.
    fn send(&mut self, i: usize, answer: Answer, key_id: u64, from: IpAddr, to: (IpAddr, u16)) {
        let t = &mut self.table.tunnels[i];
        // A PROBE_ACK's timestamp is the PROBE's (an echo), outside the order
        // of the broker's own messages.
        let ts = match answer {
            Answer::ProbeAck(..) => 0,
            _ => {
                t.last_sent_ns = decide::next_timestamp(now_ns(), t.last_sent_ns);
                t.last_sent_ns
            }
        };
        // Answers use the key of the heartbeat they answer (the current one if unknown).
        let identity = t.config.identity_for(key_id).map_or(t.config.identity, |(_, identity)| identity);
        let key = identity.sip_key();
        let bytes = match (answer, to.0) {
            (Answer::Ack, IpAddr::V6(a)) => Ack6::new(identity.id, ts, a.octets(), to.1).sign(key).to_bytes().to_vec(),
            (Answer::Ack, IpAddr::V4(a)) => {
                let detail = ControlMessage::endpoint_detail(a.octets(), to.1);
                ControlMessage::new(Kind::Ack, identity.id, ts, detail).sign(key).to_bytes().to_vec()
            }
            (Answer::Challenge(nonce), _) => {
                ControlMessage::new(Kind::Challenge, identity.id, ts, nonce).sign(key).to_bytes().to_vec()
            }
            (Answer::Time(echo), _) => {
                ControlMessage::new(Kind::Time, identity.id, ts, echo.to_be_bytes()).sign(key).to_bytes().to_vec()
            }
            (Answer::ProbeAck(probe, echo), _) => {
                let msg = ControlMessage::new(Kind::ProbeAck, identity.id, echo, probe.detail()).sign(key);
                let mut bytes = vec![0; usize::from(probe.len)];
                probe.write(&msg, &mut bytes);
                bytes
            }
        };
        let from = match t.link.local_ip() {
            Some(local) if from.is_unspecified() => local,
            _ => from,
        };
        let sport = t.link.encap_sport().unwrap_or(self.config.fou_ports[0]);
        let sent = match (to.0, &self.sender6) {
            (IpAddr::V4(_), _) => self.sender.send(from, sport, to.0, to.1, &bytes),
            (IpAddr::V6(_), Ok(sender6)) => sender6.send(from, sport, to.0, to.1, &bytes),
            (IpAddr::V6(_), Err(e)) => Err(anyhow::anyhow!("cannot answer {}: {e}", endpoint(to.0, to.1))),
        };
        if let Err(e) = sent {
            warn!("tunnel {}: {e:#}", t.config.name);
        }
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
        let report = match crate::show::collect(&self.config.state_dir) {
            Ok(r) => r,
            Err(e) => return format!("# footunnel cannot read its own state: {e:#}\n"),
        };
        let extra = metrics::BrokerExtra {
            challenges_sent: self.table.tunnels.iter().map(|t| (t.config.name.clone(), t.challenges_sent)).collect(),
            // Per-link mode: where each link points as the controller last read it.
            links: match self.shared {
                Some(_) => Vec::new(),
                None => self
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

    async fn serve(
        mut self,
        reread: Reread,
        mut metrics: Option<crate::metrics::Server>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot handle SIGHUP (reload)")?;
        crate::service::release_hangups();
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
        let mut ticks = 0u64;
        let mut lost = dataplane::counter(&self.ebpf, maps::Counter::EventsLost).unwrap_or(0);
        tokio::pin!(shutdown);
        let running = format!("{} tunnel(s) on {}", self.table.tunnels.len(), self.interfaces.join(", "));
        info!("broker running: {running}");
        crate::service::notify_ready(&running);
        let mut sweep_pacer = decide::SweepPacer::default();
        loop {
            tokio::select! {
                // In this order: the sweep only when nothing else is ready.
                biased;
                _ = &mut shutdown => break,
                Some(()) = hangups.recv() => self.on_hangup(&reread).await,
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    let mut batch = Vec::new();
                    while let Some(item) = guard.get_inner_mut().next() {
                        if item.len() >= size_of::<Event>() {
                            batch.push(*bytemuck::from_bytes::<Event>(&item[..size_of::<Event>()]));
                        }
                    }
                    guard.clear_ready();
                    for event in batch {
                        self.handle(event).await;
                    }
                }
                Some((message, _)) = link_changes.next() => {
                    self.follow_uplink(&message);
                    if self.shared.is_some() {
                        // Every tunnel's "link" is the device.
                        if self.changed_tunnel(&message).is_some() {
                            self.check_shared_device().await;
                        }
                    } else if let Some(i) = self.changed_tunnel(&message) {
                        self.reconcile(i).await;
                    }
                }
                // After events and link changes: local connections never hold
                // up re-pointing (the page is rendered at most once a second).
                work = crate::metrics::next(metrics.as_mut()) => {
                    if let Some(server) = metrics.as_mut() {
                        server.handle(work, || self.metrics_text());
                    }
                }
                _ = sweep.tick() => {
                    self.check_silence_all().await;
                    if std::mem::take(&mut self.state_dirty)
                        && let Err(e) = self.write_state()
                    {
                        warn!("{e:#}");
                    }
                    // A tenth of the links due each second, each read every 10 s:
                    // catches what events missed and links changed by hand. All
                    // of them when the ring buffer overflowed.
                    ticks += 1;
                    let now_lost = dataplane::counter(&self.ebpf, maps::Counter::EventsLost).unwrap_or(lost);
                    let everything = now_lost != lost;
                    lost = now_lost;
                    if self.shared.is_some() {
                        // One device for all, checked once; its local address is
                        // the configuration's, so the data plane has nothing to follow.
                        if everything || ticks.is_multiple_of(decide::SWEEP_TICKS) {
                            self.check_shared_device().await;
                        }
                    } else if everything {
                        sweep_pacer.all(self.table.tunnels.len());
                    } else {
                        sweep_pacer.tick(self.table.tunnels.len());
                    }
                    if ticks.is_multiple_of(decide::SWEEP_TICKS) {
                        // Follows clock steps.
                        let mut settings = self.settings();
                        settings.realtime_offset_ns = dataplane::realtime_offset_ns();
                        if let Err(e) = dataplane::set_settings(&mut self.ebpf, settings) {
                            warn!("{e:#}");
                        }
                    }
                }
                // Last, and one link a turn: events and link changes never
                // wait behind the sweep.
                _ = std::future::ready(()), if sweep_pacer.is_due() => {
                    if let Some(i) = sweep_pacer.next(self.table.tunnels.len()) {
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

    fn settings(&self) -> Settings {
        settings(&self.config, self.shared.as_ref())
    }

    /// An uplink deleted and created again under its name gets the program
    /// back (and, in shared-device mode, becomes the way out again).
    fn follow_uplink(&mut self, message: &NetlinkMessage<RouteNetlinkMessage>) {
        let (link, deleted) = match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (l, false),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => (l, true),
            _ => return,
        };
        let Some(name) = crate::link::message_name(link) else { return };
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
        if let Some(device) = &mut self.shared
            && device.uplink == before
        {
            device.uplink = now;
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
        crate::link::message_name(link)
            .and_then(|n| self.table.by_link(n))
            .or_else(|| self.table.tunnels.iter().position(|t| t.link.index == link.header.index))
    }
}

/// After a restart, applies the pinned endpoints before anything else (loading
/// the program takes a while): what arrived while the controller was down
/// takes effect at once, through the same checks as at run time.
async fn apply_pinned_endpoints(handle: &Handle, pin_dir: &Path, table: &mut TunnelTable) {
    let Ok(data) = MapData::from_pin(pin_dir.join(maps::ENDPOINTS)) else { return };
    let Ok(endpoints) = BpfHashMap::<MapData, u64, Endpoint>::try_from(aya::maps::Map::HashMap(data)) else { return };
    for i in 0..table.tunnels.len() {
        let config = &table.tunnels[i].config;
        let key_ids: Vec<u64> = config.key_ids().map(|(_, k)| k).collect();
        if let Ok(endpoint) = endpoints.get(&config.record_id, 0)
            // Forgotten once the maps are filled, and the link parked.
            && !decide::recorded_under_old_key(&endpoint, &key_ids)
        {
            table.reconcile(handle, i, Some(&endpoint)).await;
        }
    }
}

pub(super) fn settings(config: &BrokerConfig, shared: Option<&shared::SharedDevice>) -> Settings {
    Settings {
        realtime_offset_ns: dataplane::realtime_offset_ns(),
        window_ns: config.freshness_window_ns,
        observe_interval_ns: config.challenge_interval_ns,
        shared_uplink: shared.map_or(0, |d| d.uplink),
        shared_port: config.fou_ports[0],
        _pad: 0,
    }
}

/// The interface's index now; 0 if there is none of that name.
fn ifindex(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: a valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn getrandom(buf: &mut [u8]) {
    // SAFETY: valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, buf.len() as isize, "getrandom failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_never_repeat_among_a_hundred_thousand_tunnels() {
        let all: std::collections::HashSet<Ipv4Addr> = (0..100_000).map(placeholder_remote).collect();
        assert_eq!(all.len(), 100_000);
        assert!(all.iter().all(|a| !a.is_multicast() && !a.is_unspecified() && !a.is_broadcast()));
        assert_eq!(placeholder_remote(0), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(placeholder_remote(761), Ipv4Addr::new(203, 0, 113, 254));
        assert_eq!(placeholder_remote(762), Ipv4Addr::new(240, 0, 0, 1));
    }
}
