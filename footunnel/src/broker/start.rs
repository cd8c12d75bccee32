//! Starting the broker: managed links first, then the plan checked against
//! the system, the data plane loaded with its pinned maps, and what arrived
//! while no controller ran applied; any failure takes back what this start
//! created.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::Ebpf;
use footunnel_ebpf::maps::{self};
use rtnetlink::Handle;
use tracing::{debug, info, warn};

use super::{
    Broker, Reread, dataplane, decide,
    decide::RateLimit,
    peers::PeerSocket,
    plan::{Plan, plan},
    program::{attach, ensure_pin_dir, fill_maps, pinned_maps},
    read_state, shared,
    tunnels::{Running, TunnelTable},
};
use crate::{
    config::BrokerConfig,
    now_ns,
    os::{
        manage::{self, Created, LinkSpec},
        rawudp::RawUdp,
        sys::ifindex,
    },
};

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
    if let Some(shared) = &config.shared {
        let brought_up = shared::bring_up(&handle, shared, config.fou_ports[0], &mut created).await;
        manage::undo_on_error(brought_up, &handle, &created).await?;
    }
    // Bad configuration changes nothing: what was just made goes again.
    let plan = manage::undo_on_error(plan(&config, &handle).await, &handle, &created).await?;
    debug!("configuration checked against the system");
    let peer_socket = manage::undo_on_error(agree_with_peers(&config, &plan).await, &handle, &created).await?;
    let mut table = TunnelTable::new(
        plan.tunnels.iter().map(|t| Running::new(t.config.clone(), t.link.clone(), t.prefixes.clone())).collect(),
    );
    if config.shared.is_none() {
        // Shared-device mode needs no catching up: its egress program reads
        // the pinned endpoints themselves, also while no controller runs.
        apply_pinned_endpoints(&handle, &config.pin_dir, &mut table).await;
    }
    let started = match Broker::start(config, handle.clone(), plan, table, created.clone()) {
        Ok(mut broker) => {
            broker.peer_socket = peer_socket;
            broker.serve_shared_device().await.map(|()| broker)
        }
        Err(e) => Err(e),
    };
    let mut broker = manage::undo_on_error(started, &handle, &created).await?;
    broker.reconcile_all().await;
    broker.announce_all().await;
    for (a, b) in broker.table.collisions() {
        warn!(
            "tunnels {a:?} and {b:?} share a local address and their clients share a public address: \
             the kernel's FoU receive cannot tell them apart; give them distinct broker local addresses"
        );
    }
    broker.serve(reread, metrics, shutdown).await
}

/// With `peers`: the socket they are asked on, once every peer that
/// answered has the same prefixes for each tunnel.
async fn agree_with_peers(config: &BrokerConfig, plan: &Plan) -> Result<Option<PeerSocket>> {
    let Some(socket) = PeerSocket::bind(&config.peers, config.peer_port, plan.peer_tunnels()).await? else {
        return Ok(None);
    };
    socket.agree(&config.peers, &socket.running, config.freshness_window_ns).await?;
    Ok(Some(socket))
}

/// Placeholder remotes for links footunnel creates, until the first
/// heartbeat, distinct per tunnel so links sharing a local address do not
/// collide: the 762 documentation addresses (RFC 5737) first, then the
/// reserved 240.0.0.0/4 (RFC 1112 §4), which no network routes either.
pub(super) fn placeholder_remote(i: usize) -> Ipv4Addr {
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
pub(super) async fn bring_up_managed(
    config: &BrokerConfig,
    handle: &Handle,
    in_use: &HashSet<Ipv4Addr>,
) -> Result<Created> {
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
        let up = manage::up(handle, &spec, &mut created).await;
        manage::undo_on_error(up, handle, &created).await.with_context(|| format!("tunnel {:?}", t.name))?;
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
        adopt_previously_created(&config.state_dir, &mut created);
        let (mut ebpf, fresh) = load_dataplane(&config)?;
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
            mode: super::Mode::new(plan.shared),
            created,
            last_reload: None,
            state_dirty: false,
            peer_socket: None,
        };
        broker.write_state()?;
        Ok(broker)
    }
}

/// After a restart, applies the pinned endpoints before anything else (loading
/// the program takes a while): what arrived while the controller was down
/// takes effect at once, through the same checks as at run time.
async fn apply_pinned_endpoints(handle: &Handle, pin_dir: &Path, table: &mut TunnelTable) {
    let Ok(pinned) = dataplane::Pinned::open(pin_dir) else { return };
    for i in 0..table.tunnels.len() {
        let config = &table.tunnels[i].config;
        let key_ids: Vec<u64> = config.key_ids().map(|(_, k)| k).collect();
        if let Some(endpoint) = pinned.endpoint(config.record_id)
            // Forgotten once the maps are filled, and the link parked.
            && !decide::recorded_under_old_key(&endpoint, &key_ids)
        {
            table.reconcile(handle, i, Some(&endpoint)).await;
        }
    }
}

/// What earlier runs created is still ours to remove.
fn adopt_previously_created(state_dir: &Path, created: &mut Created) {
    if let Ok(previous) = read_state(state_dir) {
        created.absorb(previous.created);
    }
}

/// The eBPF object loaded with its pinned maps (made if missing), and
/// whether they were fresh (no endpoints pinned yet).
fn load_dataplane(config: &BrokerConfig) -> Result<(Ebpf, bool)> {
    ensure_pin_dir(&config.pin_dir)?;
    dataplane::check_pinned_layouts(&config.pin_dir)?;
    let fresh = !config.pin_dir.join(maps::ENDPOINTS).exists();
    let paths: Vec<(&str, PathBuf)> = pinned_maps().map(|m| (m, config.pin_dir.join(m))).collect();
    let mut loader = dataplane::loader(config.trace);
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(dataplane::OBJECT).context("loading the eBPF object with pinned maps failed")?;
    debug!("eBPF object loaded, maps open");
    if config.trace {
        dataplane::forward_trace(&mut ebpf)?;
        info!("tracing every control message (--trace)");
    }
    Ok((ebpf, fresh))
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
