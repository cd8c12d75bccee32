//! `footunnel broker`: checks the system, loads and attaches the data plane,
//! then turns what it records into link configuration, ACKs and CHALLENGEs.
//! Decisions come from [`decide`]; this module applies them.

mod announce;
mod answer;
pub mod dataplane;
pub mod decide;
pub mod metrics;
mod mode;
mod peers;
mod plan;
mod probe;
mod program;
mod reload;
mod serve;
mod shared;
pub mod show;
mod silence;
mod start;
pub mod tunnels;

use decide::RateLimit;
use mode::Mode;
use tunnels::TunnelTable;

use anyhow::Result;
use aya::Ebpf;
use footunnel_ebpf::maps::{Endpoint, Settings};
use rtnetlink::Handle;
use tracing::{info, warn};

pub use crate::state::broker::{ReloadOutcome, STATE_FILE, StateFile, StateTunnel, read_state};
use crate::{
    config::BrokerConfig,
    os::{manage::Created, rawudp::RawUdp},
    state::broker::write_state,
};
use plan::Plan;
pub use program::{pinned_maps, unload};
pub use reload::request as request_reload;
pub use start::run;
use start::{bring_up_managed, placeholder_remote};

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
    /// Per-link or shared-device mode, with the latter's state.
    mode: Mode,
    /// Links and FoU listeners footunnel created, this run or earlier ones.
    created: Created,
    last_reload: Option<ReloadOutcome>,
    /// A tunnel's problem changed since the state file was written.
    state_dirty: bool,
    /// Where peers (`peers`) ask about this broker's prefixes.
    peer_socket: Option<peers::PeerSocket>,
}

/// Reads the configuration again (SIGHUP): the file, with the command line's overrides.
pub type Reread = Box<dyn Fn() -> Result<BrokerConfig>>;

impl Broker {
    /// Shared-device mode: routes to every tunnel's prefixes through the
    /// device, and the program that addresses each packet on its egress.
    async fn serve_shared_device(&mut self) -> Result<()> {
        let Mode::Shared(shared) = &self.mode else { return Ok(()) };
        let (device, route_mtus) = (shared.device.clone(), shared.route_mtus.clone());
        let prefixes = self.table.prefixes();
        // The check first: nothing enters through the device unchecked.
        program::attach_device_ingress(&mut self.ebpf, &self.config.pin_dir, &device.name)?;
        shared::route(&self.handle, &device, &prefixes, &route_mtus).await?;
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
        let Mode::Shared(shared) = &self.mode else { return };
        let (device, was_down, route_mtus) =
            (shared.device.clone(), shared.problem.is_some(), shared.route_mtus.clone());
        let mut problem = shared::check_device(&self.handle, &device).await.err().map(|e| format!("{e:#}"));
        if problem.is_none() && was_down {
            // The kernel drops a device's routes when it goes down.
            if let Err(e) = shared::route(&self.handle, &device, &self.table.prefixes(), &route_mtus).await {
                problem = Some(format!("{e:#}"));
            }
        }
        let mtu = self.uplink_mtu_problem(&device).await;
        let Some(shared) = self.mode.shared_mut() else { return };
        if mtu != shared.mtu_problem {
            match &mtu {
                Some(p) => warn!("{p}"),
                None => info!("the uplink's MTU fits shared device {} again", device.name),
            }
            shared.mtu_problem = mtu;
        }
        if problem != shared.problem {
            shared.problem = problem.clone();
            // `footunnel show` says it too, by the time the log does.
            if let Err(e) = self.write_state() {
                warn!("{e:#}");
            }
            match &problem {
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
            attach: self.config.attach,
            interfaces: self.interfaces.clone(),
            fou_ports: self.config.fou_ports.clone(),
            legacy_port: self.config.tunnels.iter().any(|t| t.legacy).then_some(self.config.legacy_port),
            created: self.created.clone(),
            reload: self.last_reload.clone(),
            shared_device: self.mode.device().map(|d| d.name.clone()),
            shared_problem: self.mode.problem().map(str::to_owned),
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
        match self.mode {
            // One device for all, checked once; its local address is the
            // configuration's, so the data plane has nothing to follow.
            Mode::Shared(_) => self.check_shared_device().await,
            Mode::PerLink => {
                for i in 0..self.table.tunnels.len() {
                    self.reconcile(i).await;
                }
            }
        }
    }

    /// Makes tunnel `i`'s link match its recorded endpoint; where the link
    /// points afterwards, as the kernel has it.
    async fn reconcile(&mut self, i: usize) -> Option<decide::LinkEndpoint> {
        let recorded = self.endpoint(self.table.tunnels[i].config.record_id);
        if let Mode::Shared(shared) = &self.mode {
            // No link to change: the egress program reads the endpoint map.
            return shared.problem.is_none().then(|| shared::reaches(recorded.as_ref()));
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
        settings(&self.config, self.mode.device())
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
