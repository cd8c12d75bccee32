//! `footunnel broker`: checks the system, loads and attaches the data plane,
//! then turns what it records into link configuration, ACKs and CHALLENGEs.
//! Decisions come from `decide`; this module applies them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use footunnel_ebpf::{
    maps::{
        self, EVENT_HEARTBEAT, EVENT_LEGACY, EVENT_OBSERVED, Endpoint, Event, LegacySecret, Observed, Settings,
        TunnelConfig, TunnelRef,
    },
    wire::{ControlMessage, Kind},
};
use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::{RouteNetlinkMessage, link::LinkAttribute};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::{Handle, MulticastGroup};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tracing::{debug, info, warn};

use crate::{
    config::{Attach, BrokerConfig, Prefix, Tunnel},
    dataplane::{self, TC_PROGRAM, XDP_PROGRAM},
    decide::{self, RateLimit},
    fou,
    link::{self, TunnelLink},
    manage::{self, Created, LinkSpec},
    now_ns,
    rawudp::RawUdp,
    tunnels::{self, Running, TunnelTable},
};

/// Every map, pinned by name under the pin directory.
pub const PINNED_MAPS: [&str; 10] = [
    maps::FOU_PORTS,
    maps::TUNNELS,
    maps::ENDPOINTS,
    maps::PREFIXES_V4,
    maps::PREFIXES_V6,
    maps::LEGACY_SECRETS,
    maps::OBSERVED,
    maps::SETTINGS,
    maps::EVENTS,
    maps::COUNTERS,
];

/// What `footunnel show` needs besides the maps: written at start-up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateFile {
    pub pin_dir: PathBuf,
    pub attach: String,
    pub interfaces: Vec<String>,
    pub fou_ports: Vec<u16>,
    /// The proof of concept's port, when a tunnel has legacy enabled.
    #[serde(default)]
    pub legacy_port: Option<u16>,
    /// Links and FoU listeners footunnel created; `unload` removes them.
    #[serde(default)]
    pub created: Created,
    pub tunnels: Vec<StateTunnel>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateTunnel {
    pub name: String,
    pub link: String,
    pub id: u64,
    pub legacy: bool,
    pub peer_prefixes: Vec<String>,
}

pub const STATE_FILE: &str = "broker.json";

/// A configured tunnel, checked against the system.
struct Planned {
    config: Tunnel,
    link: TunnelLink,
    prefixes: Vec<Prefix>,
}

/// Everything checked before anything changes.
struct Plan {
    tunnels: Vec<Planned>,
    interfaces: Vec<String>,
}

/// Checks the configuration against the system: links, FoU listeners,
/// interfaces. Changes nothing.
async fn plan(config: &BrokerConfig, handle: &Handle) -> Result<Plan> {
    let listeners = fou::require_listeners(&config.fou_ports)?;
    let mut tunnels = Vec::new();
    for t in &config.tunnels {
        let link = link::get(handle, &t.link).await.with_context(|| format!("tunnel {:?}", t.name))?;
        link.check_fou(&config.fou_ports)
            .and_then(|()| link.check_repointable())
            .and_then(|()| link.check_listener(&listeners))
            .with_context(|| format!("tunnel {:?}", t.name))?;
        let mut prefixes = t.peer_prefixes.clone();
        if prefixes.is_empty() {
            prefixes = link::addresses(handle, link.index)
                .await?
                .into_iter()
                .filter(|(a, _)| !matches!(a, IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
                .map(|(addr, len)| Prefix::containing(addr, len))
                .collect();
            if prefixes.is_empty() {
                bail!(
                    "tunnel {:?}: link {} has no addresses to derive the client's inner prefixes from: \
                     add its address (`ip addr add 10.0.0.1/30 dev {}`) or set peer_prefixes",
                    t.name,
                    t.link,
                    t.link
                );
            }
        }
        tunnels.push(Planned { config: t.clone(), link, prefixes });
    }
    let claimed: Vec<(Prefix, &str)> =
        tunnels.iter().flat_map(|t| t.prefixes.iter().map(|p| (*p, t.config.name.as_str()))).collect();
    if let Some(((p, a), (q, b))) = crate::config::find_overlap(&claimed) {
        bail!("tunnels {a:?} ({p}) and {b:?} ({q}) claim overlapping inner prefixes: set distinct peer_prefixes");
    }
    let mut interfaces = config.interfaces.clone();
    if interfaces.is_empty() {
        let mut seen = std::collections::HashSet::new();
        for t in &tunnels {
            let local = t.link.local_v4().with_context(|| {
                format!("link {} has no local address, so its uplink is unknown: name it with --interface", t.link.name)
            })?;
            if !seen.insert(local) {
                continue;
            }
            let name = link::interface_with_address(handle, IpAddr::V4(local)).await?;
            if !interfaces.contains(&name) {
                interfaces.push(name);
            }
        }
    }
    for name in &interfaces {
        if !matches!(handle.link().get().match_name(name.clone()).execute().try_next().await, Ok(Some(_))) {
            bail!("uplink interface {name:?} does not exist");
        }
    }
    Ok(Plan { tunnels, interfaces })
}

pub struct Broker {
    config: BrokerConfig,
    ebpf: Ebpf,
    handle: Handle,
    table: TunnelTable,
    sender: RawUdp,
    challenges: RateLimit,
    interfaces: Vec<String>,
}

/// Runs the broker until `shutdown` resolves.
pub async fn run(config: BrokerConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    info!("footunnel {} broker starting", env!("CARGO_PKG_VERSION"));
    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open rtnetlink")?;
    tokio::spawn(connection);
    let created = bring_up_managed(&config, &handle).await?;
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
    let mut table =
        TunnelTable::new(plan.tunnels.iter().map(|t| Running::new(t.config.clone(), t.link.clone())).collect());
    apply_pinned_endpoints(&handle, &config.pin_dir, &mut table).await;
    let mut broker = match Broker::start(config, handle.clone(), plan, table, created.clone()) {
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
    broker.serve(shutdown).await
}

/// Placeholder remotes for links footunnel creates, until the first
/// heartbeat: documentation addresses (RFC 5737), distinct per tunnel so
/// links sharing a local address do not collide.
fn placeholder_remote(i: usize) -> Ipv4Addr {
    let (net, host) = (i / 254 % 3, (i % 254) as u8 + 1);
    [Ipv4Addr::new(192, 0, 2, host), Ipv4Addr::new(198, 51, 100, host), Ipv4Addr::new(203, 0, 113, host)][net]
}

/// Creates the FoU listener and the links of managed tunnels that are
/// missing; on failure, removes again what it created.
async fn bring_up_managed(config: &BrokerConfig, handle: &Handle) -> Result<Created> {
    let mut created = Created::default();
    for (i, t) in config.tunnels.iter().enumerate() {
        let Some(m) = &t.manage else { continue };
        let spec = LinkSpec {
            name: t.link.clone(),
            local: Some(m.local),
            remote: placeholder_remote(i),
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

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Mounts bpffs at `dir`'s parent if it is not there (e.g. in a fresh
/// network namespace's view of /sys), then creates `dir`.
fn ensure_pin_dir(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("the pin directory needs a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let c = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid path and out pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 != BPF_FS_MAGIC {
        info!("mounting bpffs at {}", parent.display());
        let fstype = c"bpf";
        // SAFETY: valid strings.
        if unsafe { libc::mount(fstype.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("cannot mount bpffs at {}", parent.display()));
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create pin directory {}", dir.display()))
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
        let fresh = !config.pin_dir.join(maps::ENDPOINTS).exists();
        let paths: Vec<(&str, PathBuf)> = PINNED_MAPS.iter().map(|m| (*m, config.pin_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(dataplane::OBJECT).context("loading the eBPF object with pinned maps failed")?;
        debug!("eBPF object loaded, maps open");
        let started = now_ns();
        fill_maps(&mut ebpf, &config, &plan, fresh.then_some(started))?;
        if fresh {
            info!(
                "fresh data plane state: only heartbeats newer than now are accepted (replays of older ones stay out)"
            );
        } else {
            info!("continuing from the pinned state in {}", config.pin_dir.display());
        }
        for iface in &plan.interfaces {
            attach(&mut ebpf, &config, iface)?;
        }
        let state = StateFile {
            pin_dir: config.pin_dir.clone(),
            attach: format!("{:?}", config.attach).to_lowercase(),
            interfaces: plan.interfaces.clone(),
            fou_ports: config.fou_ports.clone(),
            legacy_port: plan.tunnels.iter().any(|t| t.config.legacy).then_some(config.legacy_port),
            created,
            tunnels: plan
                .tunnels
                .iter()
                .map(|t| StateTunnel {
                    name: t.config.name.clone(),
                    link: t.config.link.clone(),
                    id: t.config.identity.id,
                    legacy: t.config.legacy,
                    peer_prefixes: t.prefixes.iter().map(|p| p.to_string()).collect(),
                })
                .collect(),
        };
        write_state(&config.state_dir, &state)?;
        let challenges = RateLimit::new(config.challenge_rate, now_ns());
        Ok(Broker {
            config,
            ebpf,
            handle,
            table,
            sender: RawUdp::send_only()?,
            challenges,
            interfaces: plan.interfaces,
        })
    }

    fn endpoint(&self, id: u64) -> Option<Endpoint> {
        dataplane::endpoint(&self.ebpf, id).unwrap_or_else(|e| {
            warn!("{e:#}");
            None
        })
    }

    /// Makes every link match its recorded endpoint.
    async fn reconcile_all(&mut self) {
        for i in 0..self.table.tunnels.len() {
            self.reconcile(i).await;
        }
    }

    /// Makes tunnel `i`'s link match its recorded endpoint; where the link
    /// points afterwards, as the kernel has it.
    async fn reconcile(&mut self, i: usize) -> Option<decide::LinkEndpoint> {
        let recorded = self.endpoint(self.table.tunnels[i].config.identity.id);
        let after = self.table.reconcile(&self.handle, i, recorded.as_ref()).await;
        self.follow_local_address(i);
        after
    }

    /// The data plane accepts a tunnel's packets only at its link's local
    /// address: when someone changes that, the data plane follows.
    fn follow_local_address(&mut self, i: usize) {
        let t = &self.table.tunnels[i];
        let id = t.config.identity.id;
        let wanted = dataplane::tunnel_config(t.config.identity.sip_key(), t.link.local_v4());
        match dataplane::tunnel(&self.ebpf, id) {
            Ok(Some(current)) if current == wanted => {}
            _ => {
                info!(
                    "tunnel {}: the data plane now takes its packets at {}",
                    t.config.name,
                    t.link.local_v4().map_or("any local address".to_owned(), |a| a.to_string())
                );
                if let Err(e) = dataplane::add_tunnel(&mut self.ebpf, id, wanted.key, t.link.local_v4()) {
                    warn!("tunnel {}: {e:#}", self.table.tunnels[i].config.name);
                }
            }
        }
    }

    async fn handle(&mut self, event: Event) {
        let Some(i) = self.table.by_id(event.tunnel_id) else {
            debug!("event for unknown tunnel {:016x}", event.tunnel_id);
            return;
        };
        let source = (Ipv4Addr::from(event.addr), event.port);
        let name = self.table.tunnels[i].config.name.clone();
        match event.kind {
            EVENT_HEARTBEAT | EVENT_LEGACY => {
                debug!("tunnel {name}: heartbeat from {}:{}", source.0, source.1);
                self.table.tunnels[i].legacy_client = event.kind == EVENT_LEGACY;
                let after = self.reconcile(i).await;
                if event.kind != EVENT_HEARTBEAT {
                    return; // the proof of concept's client cannot read an ACK
                }
                if decide::may_ack(after, source) {
                    let detail = ControlMessage::endpoint_detail(event.addr, event.port);
                    self.send(i, Kind::Ack, Ipv4Addr::from(event.dst_addr), source, detail);
                } else {
                    info!(
                        "tunnel {name}: no ACK to {}:{}: the link does not point there (it points at {})",
                        source.0,
                        source.1,
                        after.map_or("nothing: it is missing".to_owned(), tunnels::describe)
                    );
                }
            }
            EVENT_OBSERVED => self.challenge(i, Ipv4Addr::from(event.dst_addr), source, event.observed_payload_len()),
            other => debug!("unknown event kind {other}"),
        }
    }

    fn challenge(&mut self, i: usize, to_local: Ipv4Addr, source: (Ipv4Addr, u16), trigger_len: u16) {
        let now = now_ns();
        let t = &self.table.tunnels[i];
        if t.legacy_client {
            debug!(
                "tunnel {}: FoU data from {}:{}, but its client speaks the proof of concept's protocol and \
                 cannot answer a challenge",
                t.config.name, source.0, source.1
            );
            return;
        }
        if !decide::may_challenge(trigger_len) {
            debug!(
                "tunnel {}: {}:{} sent {trigger_len} bytes, too few to answer with a challenge",
                t.config.name, source.0, source.1
            );
            return;
        }
        if !decide::spaced(t.last_challenge_ns, now, self.config.challenge_interval_ns) || !self.challenges.allow(now) {
            debug!("tunnel {}: challenge to {}:{} rate-limited", t.config.name, source.0, source.1);
            return;
        }
        info!("tunnel {}: FoU data from {}:{}, not its endpoint: challenging", t.config.name, source.0, source.1);
        self.table.tunnels[i].last_challenge_ns = Some(now);
        let mut nonce = [0u8; 8];
        getrandom(&mut nonce);
        self.send(i, Kind::Challenge, to_local, source, nonce);
    }

    /// Sends a control message from the tunnel's FoU port and `from`: the
    /// address the packet it answers was sent to, so an endpoint-dependent
    /// NAT lets it through (the link's local address if that is unknown).
    fn send(&mut self, i: usize, kind: Kind, from: Ipv4Addr, to: (Ipv4Addr, u16), detail: [u8; 8]) {
        let t = &mut self.table.tunnels[i];
        let ts = decide::next_timestamp(now_ns(), t.last_sent_ns);
        t.last_sent_ns = ts;
        let msg = ControlMessage::new(kind, t.config.identity.id, ts, detail).sign(t.config.identity.sip_key());
        let from = if from.is_unspecified() { t.link.local_v4().unwrap_or(Ipv4Addr::UNSPECIFIED) } else { from };
        let sport = t.link.encap_sport().unwrap_or(self.config.fou_ports[0]);
        if let Err(e) = self.sender.send(from, sport, to.0, to.1, &msg.to_bytes()) {
            warn!("tunnel {}: {e:#}", t.config.name);
        }
    }

    async fn serve(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
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
        let mut ticks = 0u64;
        let mut lost = dataplane::counter(&self.ebpf, maps::Counter::EventsLost).unwrap_or(0);
        tokio::pin!(shutdown);
        info!("broker running: {} tunnel(s) on {}", self.table.tunnels.len(), self.interfaces.join(", "));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
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
                    if let Some(i) = self.changed_tunnel(&message) {
                        self.reconcile(i).await;
                    }
                }
                _ = sweep.tick() => {
                    // Every 10 s, or at once when the ring buffer overflowed: catch what
                    // events missed (and links changed by hand), follow clock steps.
                    ticks += 1;
                    let now_lost = dataplane::counter(&self.ebpf, maps::Counter::EventsLost).unwrap_or(lost);
                    if !ticks.is_multiple_of(10) && now_lost == lost {
                        continue;
                    }
                    lost = now_lost;
                    self.reconcile_all().await;
                    let mut settings = self.settings();
                    settings.realtime_offset_ns = dataplane::realtime_offset_ns();
                    if let Err(e) = dataplane::set_settings(&mut self.ebpf, settings) {
                        warn!("{e:#}");
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
        settings(&self.config)
    }

    /// The tunnel whose link a link notification is about, by name (a
    /// re-created link has a new index) or by index (a renamed one).
    fn changed_tunnel(&self, message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<usize> {
        let link = match &message.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l)) => l,
            _ => return None,
        };
        let name = link.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n) } else { None });
        name.and_then(|n| self.table.by_link(n))
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
        if let Ok(endpoint) = endpoints.get(&table.tunnels[i].config.identity.id, 0) {
            table.reconcile(handle, i, Some(&endpoint)).await;
        }
    }
}

fn settings(config: &BrokerConfig) -> Settings {
    Settings {
        realtime_offset_ns: dataplane::realtime_offset_ns(),
        window_ns: config.freshness_window_ns,
        observe_interval_ns: config.challenge_interval_ns,
    }
}

fn getrandom(buf: &mut [u8]) {
    // SAFETY: valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, buf.len() as isize, "getrandom failed");
}

/// Makes the maps say exactly what the configuration says; entries of
/// tunnels no longer configured go. `seed_ns`: after a reboot (fresh maps),
/// every tunnel accepts only heartbeats newer than this.
fn fill_maps(ebpf: &mut Ebpf, config: &BrokerConfig, plan: &Plan, seed_ns: Option<u64>) -> Result<()> {
    dataplane::set_settings(ebpf, settings(config))?;

    // Ports are an array: unwatch what the previous run watched, then watch ours.
    let mut wanted: HashMap<u16, u32> = config.fou_ports.iter().map(|p| (*p, maps::PORT_FOU)).collect();
    if plan.tunnels.iter().any(|t| t.config.legacy) {
        wanted.insert(config.legacy_port, maps::PORT_LEGACY);
    }
    if let Ok(previous) = read_state(&config.state_dir) {
        for port in previous.fou_ports.iter().chain(previous.legacy_port.iter()) {
            if !wanted.contains_key(port) {
                dataplane::set_port(ebpf, *port, 0)?;
            }
        }
    }
    for (port, kind) in &wanted {
        dataplane::set_port(ebpf, *port, *kind)?;
    }

    let ids: Vec<u64> = plan.tunnels.iter().map(|t| t.config.identity.id).collect();
    let mut tunnels: BpfHashMap<&mut MapData, u64, TunnelConfig> = BpfHashMap::try_from(map(ebpf, maps::TUNNELS)?)?;
    sync(
        &mut tunnels,
        plan.tunnels
            .iter()
            .map(|t| (t.config.identity.id, dataplane::tunnel_config(t.config.identity.sip_key(), t.link.local_v4())))
            .collect(),
    )?;

    remove_other_tunnels::<Endpoint>(ebpf, maps::ENDPOINTS, &ids)?;
    remove_other_tunnels::<Observed>(ebpf, maps::OBSERVED, &ids)?;
    if let Some(seed) = seed_ns {
        let mut endpoints: BpfHashMap<&mut MapData, u64, Endpoint> = BpfHashMap::try_from(map(ebpf, maps::ENDPOINTS)?)?;
        for id in &ids {
            endpoints.insert(id, Endpoint { last_timestamp_ns: seed, ..Default::default() }, 0)?;
        }
    }

    let mut legacy: BpfHashMap<&mut MapData, LegacySecret, TunnelRef> =
        BpfHashMap::try_from(map(ebpf, maps::LEGACY_SECRETS)?)?;
    let wanted: Vec<(LegacySecret, TunnelRef)> = plan
        .tunnels
        .iter()
        .filter(|t| t.config.legacy)
        .map(|t| {
            warn!("tunnel {:?}: legacy heartbeats enabled: its secret travels in clear", t.config.name);
            let secret = LegacySecret::new(t.config.secret.as_bytes()).with_context(|| {
                format!("tunnel {:?}: a legacy secret must be 1 to {} bytes", t.config.name, maps::LEGACY_SECRET_MAX)
            })?;
            Ok((secret, TunnelRef::new(t.config.identity.id)))
        })
        .collect::<Result<_>>()?;
    sync(&mut legacy, wanted)?;

    dataplane::clear_prefixes(ebpf)?;
    for t in &plan.tunnels {
        for p in &t.prefixes {
            dataplane::add_prefix(ebpf, p.addr, p.len, t.config.identity.id)?;
        }
    }
    Ok(())
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).with_context(|| format!("the eBPF object has no map {name}"))
}

/// Drops the entries of tunnels that are no longer configured.
fn remove_other_tunnels<V: aya::Pod>(ebpf: &mut Ebpf, name: &str, ids: &[u64]) -> Result<()> {
    let mut m: BpfHashMap<&mut MapData, u64, V> = BpfHashMap::try_from(map(ebpf, name)?)?;
    let stale: Vec<u64> = m.keys().filter_map(|k| k.ok()).filter(|k| !ids.contains(k)).collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// Leaves exactly `wanted` in `m`.
fn sync<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    m: &mut BpfHashMap<&mut MapData, K, V>,
    wanted: Vec<(K, V)>,
) -> Result<()> {
    let keep: std::collections::HashSet<K> = wanted.iter().map(|(k, _)| *k).collect();
    let stale: Vec<K> = m.keys().filter_map(|k| k.ok()).filter(|k| !keep.contains(k)).collect();
    for k in stale {
        let _ = m.remove(&k);
    }
    for (k, v) in wanted {
        m.insert(k, v, 0)?;
    }
    Ok(())
}

/// Loads the program and attaches it to `iface`, replacing the program of
/// a pinned attachment (a restart) atomically.
fn attach(ebpf: &mut Ebpf, config: &BrokerConfig, iface: &str) -> Result<()> {
    match config.attach {
        Attach::Xdp => {
            let pin = config.pin_dir.join(format!("xdp-{iface}"));
            let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).context("no XDP program")?.try_into()?;
            if xdp.fd().is_err() {
                xdp.load().context("the kernel's verifier rejected the XDP program")?;
            }
            if let Ok(pinned) = PinnedLink::from_pin(&pin) {
                let link = XdpLink::try_from(FdLink::from(pinned)).context("pinned XDP link")?;
                xdp.attach_to_link(link).with_context(|| format!("cannot replace the program on {iface}"))?;
                info!("{iface}: XDP program replaced in the pinned attachment");
                return Ok(());
            }
            let id = match xdp.attach(iface, XdpMode::Driver) {
                Ok(id) => {
                    info!("{iface}: XDP attached in driver mode");
                    id
                }
                Err(e) => {
                    debug!("{iface}: driver-mode XDP unavailable ({e}); using generic mode");
                    let id =
                        xdp.attach(iface, XdpMode::Skb).with_context(|| format!("cannot attach XDP to {iface}"))?;
                    info!("{iface}: XDP attached in generic mode");
                    id
                }
            };
            let link = xdp.take_link(id)?;
            match FdLink::try_from(link) {
                Ok(fd_link) => {
                    fd_link.pin(&pin).with_context(|| format!("cannot pin the XDP link at {}", pin.display()))?;
                }
                Err(_) => {
                    info!("{iface}: this kernel attaches XDP without links; the program stays until `footunnel unload`")
                }
            }
        }
        Attach::Tc => {
            let pin = config.pin_dir.join(format!("tc-{iface}"));
            let prog: &mut SchedClassifier = ebpf.program_mut(TC_PROGRAM).context("no TC program")?.try_into()?;
            if prog.fd().is_err() {
                prog.load().context("the kernel's verifier rejected the TC program")?;
            }
            // Kernels ≥ 6.6 attach through a TCX link, which dies with this
            // process unless pinned; a restart swaps the program inside it.
            if let Ok(pinned) = PinnedLink::from_pin(&pin) {
                let link = SchedClassifierLink::try_from(FdLink::from(pinned)).context("pinned TC link")?;
                prog.attach_to_link(link).with_context(|| format!("cannot replace the program on {iface}"))?;
                info!("{iface}: TC program replaced in the pinned TCX attachment");
                return Ok(());
            }
            // Older kernels: a netlink filter, which outlives the process by
            // itself; the previous run's is replaced.
            let _ = tc::qdisc_add_clsact(iface);
            let _ = tc::qdisc_detach_program(iface, TcAttachType::Ingress, TC_PROGRAM);
            let id = prog
                .attach(iface, TcAttachType::Ingress)
                .with_context(|| format!("cannot attach TC ingress to {iface}"))?;
            let link = prog.take_link(id)?;
            if <&FdLink>::try_from(&link).is_ok() {
                let fd_link = FdLink::try_from(link).context("TCX link")?;
                fd_link.pin(&pin).with_context(|| format!("cannot pin the TCX link at {}", pin.display()))?;
                info!("{iface}: TC ingress attached (TCX link, pinned)");
            } else {
                // A netlink filter: dropping the link would detach it.
                std::mem::forget(link);
                info!("{iface}: TC ingress attached (netlink filter)");
            }
        }
    }
    Ok(())
}

fn write_state(dir: &Path, state: &StateFile) -> Result<()> {
    crate::files::write_atomically(&dir.join(STATE_FILE), &serde_json::to_vec_pretty(state)?)
}

pub fn read_state(dir: &Path) -> Result<StateFile> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).with_context(|| {
        format!("no broker state at {} (is `footunnel broker` running? see --state-dir)", path.display())
    })?;
    serde_json::from_slice(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// Detaches the data plane, removes its pinned state and what footunnel created.
pub async fn unload(state_dir: &Path, pin_dir: &Path) -> Result<()> {
    let state = read_state(state_dir).ok();
    if let Some(state) = &state
        && state.attach == "tc"
    {
        for iface in &state.interfaces {
            let _ = tc::qdisc_detach_program(iface, TcAttachType::Ingress, TC_PROGRAM);
        }
    }
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("nothing to unload: {} does not exist", pin_dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot list {}", pin_dir.display())),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("xdp-") || name.starts_with("tc-") {
            // Unpinning the last reference to a link detaches it.
            PinnedLink::from_pin(&path)?.unpin()?;
        } else {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("cannot remove {}", pin_dir.display()))?;
    if let Some(created) = state.as_ref().map(|s| &s.created).filter(|c| !c.is_empty()) {
        let (connection, handle, _) = rtnetlink::new_connection().context("cannot open rtnetlink")?;
        tokio::spawn(connection);
        manage::down(&handle, created).await?;
        info!("removed links {:?} and FoU listeners on ports {:?}", created.links, created.fou_ports);
    }
    let _ = std::fs::remove_file(state_dir.join(STATE_FILE));
    Ok(())
}
