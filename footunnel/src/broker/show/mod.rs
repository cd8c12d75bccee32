//! `footunnel show`: the broker's state from its pinned maps, in the spirit
//! of `wg show`.

use std::path::Path;

use super::dataplane::Pinned;
use anyhow::{Context, Result};
use footunnel_ebpf::maps::{Counter, Endpoint, Observed};
use serde::Serialize;

use crate::{
    broker::decide::known_endpoint,
    config::KeyRole,
    state::broker::{StateFile, StateTunnel, read_state},
};

#[derive(Serialize)]
pub struct Report {
    pub interfaces: Vec<String>,
    pub attach: crate::config::Attach,
    pub fou_ports: Vec<u16>,
    /// Shared-device mode: the device.
    pub shared_device: Option<String>,
    /// Why the shared device carries no traffic, while it does not.
    pub shared_problem: Option<String>,
    /// The broker process: gone or not a broker is a problem `--check` reports.
    pub controller: Controller,
    pub tunnels: Vec<TunnelReport>,
    pub counters: Vec<(String, u64)>,
}

#[derive(Serialize)]
pub struct Controller {
    pub pid: Option<u32>,
    /// Why no controller acts on what the data plane records, if none does.
    pub problem: Option<String>,
}

#[derive(Serialize)]
pub struct TunnelReport {
    pub name: String,
    pub link: String,
    pub id: String,
    pub legacy: bool,
    /// During a key rotation, the next secret's key id.
    pub next_id: Option<String>,
    /// Which secret the client's latest accepted heartbeat used.
    pub key: Option<KeyRole>,
    pub peer_prefixes: Vec<String>,
    /// `ADDRESS:PORT` of the last accepted heartbeat's source.
    pub endpoint: Option<String>,
    pub last_heartbeat_ns: Option<u64>,
    pub heartbeats: u64,
    pub changes: u64,
    pub last_change_ns: Option<u64>,
    pub unexpected_source: Option<UnexpectedSource>,
    pub silence_timeout_ns: Option<u64>,
    /// How long the tunnel has been silent, if longer than its timeout.
    pub silent_for_ns: Option<u64>,
    /// Its link is parked (carries nothing) while silent (`on_silence = "down"`).
    pub down_when_silent: bool,
    /// Where the kernel's link really sends (`remote:encap-dport`), per-link
    /// mode; the endpoint above is what the data plane recorded.
    pub link_points_at: Option<String>,
    /// What keeps the tunnel from working, as the controller last found it.
    pub problem: Option<String>,
    /// Whether the link is administratively up, as read.
    pub link_up: Option<bool>,
    /// Why the link could not be read.
    pub link_problem: Option<String>,
}

#[derive(Serialize)]
pub struct UnexpectedSource {
    pub source: String,
    pub packets: u64,
    pub last_seen_ns: u64,
}

pub fn collect(state_dir: &Path) -> Result<Report> {
    collect_at(state_dir, crate::now_ns())
}

pub fn collect_at(state_dir: &Path, now_ns: u64) -> Result<Report> {
    let state: StateFile = read_state(state_dir)?;
    let pinned = Pinned::open(&state.pin_dir)?;
    let tunnels = state
        .tunnels
        .iter()
        .map(|t| tunnel_report(t, pinned.endpoint(t.record_id), pinned.observed(t.record_id), now_ns))
        .collect();
    let counters =
        Counter::ALL.iter().map(|c| Ok((c.name().to_owned(), pinned.counter(*c)?))).collect::<Result<Vec<_>>>()?;
    let controller = Controller {
        pid: state.pid,
        problem: match state.pid {
            Some(pid) => crate::os::service::check_broker_process(pid).err(),
            None => Some("the state file names no broker process".into()),
        },
    };
    Ok(Report {
        controller,
        interfaces: state.interfaces,
        attach: state.attach,
        fou_ports: state.fou_ports,
        shared_device: state.shared_device,
        shared_problem: state.shared_problem,
        tunnels,
        counters,
    })
}

/// One tunnel as the state file and its pinned entries say.
fn tunnel_report(t: &StateTunnel, e: Option<Endpoint>, observed: Option<Observed>, now_ns: u64) -> TunnelReport {
    let known = e.as_ref().and_then(known_endpoint);
    // Sources seen since the latest endpoint change; older ones were answered by it.
    let o = observed
        .filter(|o| known != Some((o.addr.ip(), o.port)) && e.is_none_or(|e| o.last_seen_ns > e.last_change_ns));
    TunnelReport {
        name: t.name.clone(),
        link: t.link.clone(),
        id: format!("{:016x}", t.id),
        legacy: t.legacy,
        next_id: t.next_id.map(|id| format!("{id:016x}")),
        key: known.and(e).and_then(|e| match e.key_id {
            k if k == t.id => Some(KeyRole::Current),
            k if Some(k) == t.next_id => Some(KeyRole::Next),
            _ => None,
        }),
        peer_prefixes: t.peer_prefixes.clone(),
        endpoint: known.map(|(a, p)| crate::addr::endpoint(a, p)),
        last_heartbeat_ns: known.and(e.map(|e| e.last_seen_ns)),
        silence_timeout_ns: t.silence_timeout_ns,
        silent_for_ns: t.silence_timeout_ns.and_then(|timeout| {
            crate::broker::decide::silent_for(known.and(e.map(|e| e.last_seen_ns)), t.since_ns, now_ns, timeout)
        }),
        down_when_silent: t.on_silence == Some(crate::config::OnSilence::Down),
        heartbeats: e.map_or(0, |e| e.heartbeats),
        changes: known.and(e.map(|e| e.changes)).unwrap_or(0),
        last_change_ns: known.and(e.map(|e| e.last_change_ns)),
        link_points_at: None,
        problem: t.problem.clone(),
        link_up: None,
        link_problem: None,
        unexpected_source: o.map(|o| UnexpectedSource {
            source: crate::addr::endpoint(o.addr.ip(), o.port),
            packets: o.packets,
            last_seen_ns: o.last_seen_ns,
        }),
    }
}

/// Reads where each tunnel's link really points (per-link mode): the data
/// plane records endpoints whether or not a controller acts on them.
pub async fn read_links(report: &mut Report) -> Result<()> {
    if report.shared_device.is_some() {
        return Ok(());
    }
    let (connection, handle, _) = rtnetlink::new_connection().context("cannot open rtnetlink")?;
    tokio::spawn(connection);
    for t in &mut report.tunnels {
        match crate::os::link::get(&handle, &t.link).await {
            Ok(link) => {
                let e = link.endpoint();
                t.link_points_at = e.remote.map(|r| crate::addr::endpoint(r, e.dport.unwrap_or(0)));
                t.link_up = Some(link.up);
            }
            Err(e) => t.link_problem = Some(format!("{e:#}")),
        }
    }
    Ok(())
}

/// What `footunnel show --check` fails on: the controller gone, the shared
/// device down, a link that cannot be read or that points elsewhere than its
/// tunnel's endpoint. Empty when the kernel does what the endpoints say.
pub fn problems(report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(why) = &report.controller.problem {
        out.push(format!("the controller is not running ({why}): nothing re-points links; start the broker"));
    }
    if let Some(why) = &report.shared_problem {
        out.push(format!("the shared device carries no traffic: {why}"));
    }
    for t in &report.tunnels {
        if let Some(why) = &t.link_problem {
            out.push(format!("tunnel {:?}: cannot read its link {}: {why}", t.name, t.link));
        }
        if let Some(why) = &t.problem {
            out.push(format!("tunnel {:?}: {why}", t.name));
        }
        if t.link_up == Some(false) {
            out.push(format!(
                "tunnel {:?}: its link {} is down, so nothing passes (footunnel never sets a link down): \
                 `ip link set {} up`",
                t.name, t.link, t.link
            ));
        }
        let parked = t.down_when_silent && t.silent_for_ns.is_some();
        if let (Some(endpoint), Some(points)) = (&t.endpoint, &t.link_points_at)
            && endpoint != points
            && !parked
        {
            out.push(format!(
                "tunnel {:?}: its link {} points at {points}, but its client is at {endpoint} (see the broker's log)",
                t.name, t.link
            ));
        }
    }
    out
}

mod render;
pub use render::render;

#[cfg(test)]
pub(crate) mod tests;
