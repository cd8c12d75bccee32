//! `footunnel broker`: checks the system, loads and attaches the data plane,
//! then turns what it records into link configuration, ACKs and CHALLENGEs.
//! Decisions come from [`decide`]; this module applies them.

mod answer;
pub mod dataplane;
pub mod decide;
pub mod metrics;
mod plan;
mod probe;
mod program;
mod reload;
mod serve;
mod shared;
pub mod show;
mod silence;
pub mod tunnels;

use decide::RateLimit;
use tunnels::{Running, TunnelTable};

use crate::{
    config::BrokerConfig,
    now_ns,
    os::{
        manage::{self, Created, LinkSpec},
        rawudp::RawUdp,
        sys::ifindex,
    },
};
use anyhow::{Context, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData},
};
use footunnel_ebpf::maps::{self, Endpoint, Settings};
use rtnetlink::Handle;
use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};
use tracing::{debug, info, warn};

use crate::state::broker::write_state;
pub use crate::state::broker::{ReloadOutcome, STATE_FILE, StateFile, StateTunnel, read_state};
use plan::{Plan, plan};
use program::{attach, ensure_pin_dir, fill_maps};
pub use program::{pinned_maps, unload};
pub use reload::request as request_reload;

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
        let link = crate::os::link::by_index(&self.handle, device.uplink).await.ok()?;
        let name =
            crate::os::link::message_name(&link).cloned().unwrap_or_else(|| format!("ifindex {}", device.uplink));
        shared::mtu_problem(mtu, &name, crate::os::link::message_mtu(&link)?)
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

    fn settings(&self) -> Settings {
        settings(&self.config, self.shared.as_ref())
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
