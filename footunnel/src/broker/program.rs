//! The data plane in the kernel: maps filled to match the configuration,
//! programs attached and pinned (XDP, or TC through a pinned TCX link), and
//! all of it removed by `unload`.

use crate::{
    broker::dataplane::{self, DEVICE_INGRESS_PROGRAM, EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM},
    config::{Attach, BrokerConfig, Tunnel},
    os::manage::{self},
};
use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use footunnel_ebpf::{
    maps::{self, Endpoint, LegacySecret, Observed, TunnelConfig, TunnelRef},
    packet::{Addr, UNSPECIFIED},
};
use std::{collections::HashMap, net::IpAddr, path::Path};
use tracing::{debug, info, warn};

use super::{
    Plan, STATE_FILE,
    dataplane::{map_mut as map, remove_other_tunnels, sync},
    read_state, settings,
};

/// The maps pinned by name under the pin directory ([`maps::MAPS`]).
pub fn pinned_maps() -> impl Iterator<Item = &'static str> {
    maps::MAPS.iter().filter(|m| m.pinned).map(|m| m.name)
}

/// Mounts bpffs at `dir`'s parent if it is not there (e.g. in a fresh
/// network namespace's view of /sys), then creates `dir`.
pub(super) fn ensure_pin_dir(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("the pin directory needs a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    if crate::os::sys::is_other_than_bpffs(parent) == Some(true) {
        info!("mounting bpffs at {}", parent.display());
        crate::os::sys::mount_bpffs(parent).with_context(|| format!("cannot mount bpffs at {}", parent.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create pin directory {}", dir.display()))
}

/// Makes the maps say exactly what the configuration says; entries of
/// tunnels no longer configured go. A tunnel without an endpoint entry
/// (fresh maps after a reboot, or a tunnel new since the last start or
/// reload) accepts only heartbeats newer than `seed_ns`: replays of older
/// ones stay out. An endpoint recorded under a secret its tunnel no longer
/// has is forgotten (its timestamp rule stays); returns those tunnels'
/// record ids, whose links are to be parked.
pub(super) fn fill_maps(ebpf: &mut Ebpf, config: &BrokerConfig, plan: &Plan, seed_ns: u64) -> Result<Vec<u64>> {
    dataplane::set_settings(ebpf, settings(config, plan.shared.as_ref()))?;
    fill_ports(ebpf, config, plan)?;
    let mut tunnels: BpfHashMap<&mut MapData, u64, TunnelConfig> = BpfHashMap::try_from(map(ebpf, maps::TUNNELS)?)?;
    sync(&mut tunnels, plan.tunnels.iter().flat_map(|t| key_entries(&t.config, t.link.local_ip())).collect())?;
    let mut addrs: BpfHashMap<&mut MapData, Addr, u32> = BpfHashMap::try_from(map(ebpf, maps::LOCAL_ADDRS)?)?;
    let mut locals: Vec<(Addr, u32)> =
        plan.tunnels.iter().map(|t| (t.link.local_ip().map_or(UNSPECIFIED, Addr::from), 1)).collect();
    if let Some(shared) = &config.shared {
        locals.push((Addr::from(IpAddr::V4(shared.local)), 1));
    }
    locals.sort_by_key(|(a, _)| a.0);
    locals.dedup();
    sync(&mut addrs, locals)?;
    let endpoints = fill_endpoints(ebpf, plan, seed_ns)?;
    fill_legacy_secrets(ebpf, plan)?;
    let prefixes: Vec<dataplane::PrefixEntry> = plan
        .tunnels
        .iter()
        .flat_map(|t| t.prefixes.iter().map(|p| (p.addr, p.len, t.config.record_id, t.link.local_ip())))
        .collect();
    dataplane::sync_prefixes(ebpf, &prefixes)?;

    // The cache admits a source's data from the prefix it was filled under:
    // once the maps no longer say so, that slot must go, or the removed,
    // evicted or re-prefixed tunnel's old flow keeps passing the strict check.
    for (e, allowed) in endpoints.forget.into_iter().map(|e| (e, Vec::new())).chain(endpoints.keep_cached) {
        dataplane::forget_cached(ebpf, &e, &allowed)?;
    }
    Ok(endpoints.evicted)
}

/// Ports are an array: unwatch what the previous run watched, then watch ours.
fn fill_ports(ebpf: &mut Ebpf, config: &BrokerConfig, plan: &Plan) -> Result<()> {
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
    Ok(())
}

/// What [`fill_endpoints`] did to the endpoint cache's future.
struct EndpointsFilled {
    /// Endpoints no tunnel has any more: their cache slots go.
    forget: Vec<Endpoint>,
    /// Endpoints kept, with the prefixes their cache slots may stay under.
    keep_cached: Vec<(Endpoint, Vec<(u32, u32)>)>,
    /// Tunnels whose endpoint was recorded under a secret they no longer have.
    evicted: Vec<u64>,
}

/// Endpoints for the plan's tunnels: a new tunnel's seeded with `seed_ns`,
/// one recorded under an old secret forgotten, other tunnels' removed.
fn fill_endpoints(ebpf: &mut Ebpf, plan: &Plan, seed_ns: u64) -> Result<EndpointsFilled> {
    let ids: Vec<u64> = plan.tunnels.iter().map(|t| t.config.record_id).collect();
    let forget: Vec<Endpoint> = remove_other_tunnels::<Endpoint>(ebpf, maps::ENDPOINTS, &ids)?;
    remove_other_tunnels::<Observed>(ebpf, maps::OBSERVED, &ids)?;
    remove_other_tunnels::<u64>(ebpf, maps::CLOCK_NOTICES, &ids)?;
    let mut endpoints: BpfHashMap<&mut MapData, u64, Endpoint> = BpfHashMap::try_from(map(ebpf, maps::ENDPOINTS)?)?;
    let mut filled = EndpointsFilled { forget, keep_cached: Vec::new(), evicted: Vec::new() };
    for t in &plan.tunnels {
        let id = t.config.record_id;
        let Ok(e) = endpoints.get(&id, 0) else {
            // BPF_NOEXIST: a heartbeat recorded meanwhile is not overwritten.
            let _ = endpoints.insert(id, Endpoint { last_timestamp_ns: seed_ns, ..Default::default() }, 1);
            continue;
        };
        let key_ids: Vec<u64> = t.config.key_ids().map(|(_, k)| k).collect();
        if !crate::broker::decide::recorded_under_old_key(&e, &key_ids) {
            // Its cache slot stays if filled under one of its prefixes now.
            filled.keep_cached.push((e, dataplane::inner_prefixes_v4(&t.prefixes)));
            continue;
        }
        warn!(
            "tunnel {:?}: its endpoint {} was recorded under a secret the tunnel no longer has: \
             forgotten, and its link parked, until a heartbeat under its secret now",
            t.config.name,
            crate::addr::endpoint(e.addr.ip(), e.port)
        );
        let cleared = Endpoint { last_timestamp_ns: e.last_timestamp_ns, ..Default::default() };
        endpoints.insert(id, cleared, 0).with_context(|| format!("tunnel {:?}", t.config.name))?;
        filled.forget.push(e);
        filled.evicted.push(id);
    }
    Ok(filled)
}

/// The proof of concept's plaintext secrets, for the tunnels that accept them.
fn fill_legacy_secrets(ebpf: &mut Ebpf, plan: &Plan) -> Result<()> {
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
            Ok((secret, TunnelRef::new(t.config.record_id)))
        })
        .collect::<Result<_>>()?;
    sync(&mut legacy, wanted)
}

/// TUNNELS entries of `tunnel`: one per secret, all recorded under its record id.
pub(super) fn key_entries(tunnel: &Tunnel, local: Option<IpAddr>) -> Vec<(u64, TunnelConfig)> {
    let mut entries = vec![(
        tunnel.identity.id,
        dataplane::tunnel_config(tunnel.identity.id, tunnel.identity.sip_key(), local, tunnel.record_id),
    )];
    if let Some(next) = &tunnel.next {
        entries.push((
            next.identity.id,
            dataplane::tunnel_config(next.identity.id, next.identity.sip_key(), local, tunnel.record_id),
        ));
    }
    entries
}

/// Loads the program and attaches it to `iface`, replacing the program of
/// a pinned attachment (a restart) atomically.
pub(super) fn attach(ebpf: &mut Ebpf, config: &BrokerConfig, iface: &str) -> Result<()> {
    match config.attach {
        Attach::Xdp => attach_xdp(ebpf, &config.pin_dir.join(format!("xdp-{iface}")), iface),
        Attach::Tc => attach_tc(ebpf, &config.pin_dir.join(format!("tc-{iface}")), iface),
    }
}

/// Attaches the program to `iface` afresh: the interface was deleted and
/// created again, and the pinned attachment belongs to the one that went.
pub(super) fn reattach(ebpf: &mut Ebpf, config: &BrokerConfig, iface: &str) -> Result<()> {
    let kind = match config.attach {
        Attach::Xdp => "xdp",
        Attach::Tc => "tc",
    };
    let pin = config.pin_dir.join(format!("{kind}-{iface}"));
    match std::fs::remove_file(&pin) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove the stale attachment {}", pin.display())),
    }
    attach(ebpf, config, iface)
}

/// The previous run's attachment, if it pinned one: a restart swaps the
/// program inside it, so the interface is never without one.
fn pinned_link(pin: &Path) -> Option<FdLink> {
    PinnedLink::from_pin(pin).ok().map(FdLink::from)
}

fn pin_link(link: FdLink, pin: &Path) -> Result<()> {
    link.pin(pin).map(drop).with_context(|| format!("cannot pin the attachment at {}", pin.display()))
}

fn attach_xdp(ebpf: &mut Ebpf, pin: &Path, iface: &str) -> Result<()> {
    let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).context("no XDP program")?.try_into()?;
    if xdp.fd().is_err() {
        xdp.load().context("the kernel's verifier rejected the XDP program")?;
    }
    if let Some(pinned) = pinned_link(pin) {
        let link = XdpLink::try_from(pinned).context("pinned XDP link")?;
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
            let id = xdp.attach(iface, XdpMode::Skb).with_context(|| format!("cannot attach XDP to {iface}"))?;
            info!("{iface}: XDP attached in generic mode");
            id
        }
    };
    match FdLink::try_from(xdp.take_link(id)?) {
        Ok(link) => pin_link(link, pin),
        Err(_) => {
            info!("{iface}: this kernel attaches XDP without links; the program stays until `footunnel unload`");
            Ok(())
        }
    }
}

fn attach_tc(ebpf: &mut Ebpf, pin: &Path, iface: &str) -> Result<()> {
    attach_classifier(ebpf, TC_PROGRAM, TcAttachType::Ingress, pin, iface)
}

/// Shared-device mode: the program that addresses each packet, on the
/// shared device's egress.
pub(super) fn attach_egress(ebpf: &mut Ebpf, pin_dir: &Path, device: &str) -> Result<()> {
    attach_classifier(ebpf, EGRESS_PROGRAM, TcAttachType::Egress, &pin_dir.join(format!("egress-{device}")), device)
        .context("cannot attach shared-device mode's egress program to its device")
}

/// Shared-device mode: the source check of everything the device takes in,
/// on the device's ingress (the uplink's program sees only the uplink).
pub(super) fn attach_device_ingress(ebpf: &mut Ebpf, pin_dir: &Path, device: &str) -> Result<()> {
    let pin = pin_dir.join(format!("ingress-{device}"));
    attach_classifier(ebpf, DEVICE_INGRESS_PROGRAM, TcAttachType::Ingress, &pin, device)
        .context("cannot attach shared-device mode's receive check to its device")
}

fn attach_classifier(ebpf: &mut Ebpf, program: &str, hook: TcAttachType, pin: &Path, iface: &str) -> Result<()> {
    let prog: &mut SchedClassifier = ebpf.program_mut(program).context("no TC program")?.try_into()?;
    if prog.fd().is_err() {
        prog.load().with_context(|| format!("the kernel's verifier rejected {program}"))?;
    }
    // Kernels ≥ 6.6 attach through a TCX link, which dies with this
    // process unless pinned.
    if let Some(pinned) = pinned_link(pin) {
        let link = SchedClassifierLink::try_from(pinned).context("pinned TC link")?;
        prog.attach_to_link(link).with_context(|| format!("cannot replace the program on {iface}"))?;
        info!("{iface}: TC program replaced in the pinned TCX attachment");
        return Ok(());
    }
    // Older kernels: a netlink filter, which outlives the process by
    // itself; the previous run's is replaced.
    let _ = tc::qdisc_add_clsact(iface);
    let _ = tc::qdisc_detach_program(iface, hook, program);
    let direction = if hook == TcAttachType::Egress { "egress" } else { "ingress" };
    let id = prog.attach(iface, hook).with_context(|| format!("cannot attach TC {direction} to {iface}"))?;
    let link = prog.take_link(id)?;
    if <&FdLink>::try_from(&link).is_ok() {
        pin_link(FdLink::try_from(link).context("TCX link")?, pin)?;
        info!("{iface}: TC {direction} attached (TCX link, pinned)");
    } else {
        // A netlink filter: dropping the link would detach it.
        std::mem::forget(link);
        info!("{iface}: TC {direction} attached (netlink filter)");
    }
    Ok(())
}

/// Detaches the data plane, removes its pinned state and what footunnel created.
pub async fn unload(state_dir: &Path, pin_dir: &Path) -> Result<()> {
    let state = read_state(state_dir).ok();
    if let Some(state) = &state
        && state.attach == crate::config::Attach::Tc
    {
        for iface in &state.interfaces {
            let _ = tc::qdisc_detach_program(iface, TcAttachType::Ingress, TC_PROGRAM);
        }
    }
    // Before 6.6 the egress program is a netlink filter, which outlives its
    // pin: on a device made by hand (which unload leaves) it would stay.
    if let Some(device) = state.as_ref().and_then(|s| s.shared_device.as_ref()) {
        let _ = tc::qdisc_detach_program(device, TcAttachType::Egress, EGRESS_PROGRAM);
        let _ = tc::qdisc_detach_program(device, TcAttachType::Ingress, DEVICE_INGRESS_PROGRAM);
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
