//! `footunnel show`: the broker's state from its pinned maps, in the spirit
//! of `wg show`.

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use footunnel_ebpf::maps::{self, Counter, Endpoint, Observed};
use serde::Serialize;

use crate::{
    ago,
    broker::decide::known_endpoint,
    config::KeyRole,
    state::broker::{StateFile, read_state},
};

#[derive(Serialize)]
pub struct Report {
    pub interfaces: Vec<String>,
    pub attach: String,
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

fn open(pin_dir: &Path, name: &str) -> Result<MapData> {
    let path = pin_dir.join(name);
    MapData::from_pin(&path)
        .with_context(|| format!("cannot open pinned map {} (is the broker loaded?)", path.display()))
}

pub fn collect(state_dir: &Path) -> Result<Report> {
    collect_at(state_dir, crate::now_ns())
}

pub fn collect_at(state_dir: &Path, now_ns: u64) -> Result<Report> {
    let state: StateFile = read_state(state_dir)?;
    let endpoints: HashMap<MapData, u64, Endpoint> =
        HashMap::try_from(Map::HashMap(open(&state.pin_dir, maps::ENDPOINTS)?))?;
    let observed: HashMap<MapData, u64, Observed> =
        HashMap::try_from(Map::HashMap(open(&state.pin_dir, maps::OBSERVED)?))?;
    let counters: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(&state.pin_dir, maps::COUNTERS)?))?;
    let tunnels = state
        .tunnels
        .iter()
        .map(|t| {
            let e = endpoints.get(&t.record_id, 0).ok();
            let known = e.as_ref().and_then(known_endpoint);
            // Sources seen since the latest endpoint change; older ones were answered by it.
            let o = observed.get(&t.record_id, 0).ok().filter(|o| {
                known != Some((o.addr.ip(), o.port)) && e.is_none_or(|e| o.last_seen_ns > e.last_change_ns)
            });
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
        })
        .collect();
    let counters = Counter::ALL
        .iter()
        .map(|c| Ok((c.name().to_owned(), counters.get(&(*c as u32), 0)?.iter().sum())))
        .collect::<Result<Vec<_>>>()?;
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

pub fn render(report: &Report, now_ns: u64) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("broker: {} ({})", report.interfaces.join(", "), report.attach));
    line(format!("  fou ports: {}", report.fou_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")));
    if let Some(device) = &report.shared_device {
        line(format!("  shared device: {device}"));
    }
    if let Some(problem) = &report.shared_problem {
        line(format!("  DOWN: {problem}; no tunnel carries traffic and no client is ACKed until it is back"));
    }
    match (&report.controller.problem, report.controller.pid) {
        (Some(why), _) => line(format!("  controller: NOT RUNNING ({why}); endpoints below are recorded, not applied")),
        (None, Some(pid)) => line(format!("  controller: running (pid {pid})")),
        (None, None) => {}
    }
    for t in &report.tunnels {
        line(String::new());
        line(format!("tunnel: {}", t.name));
        line(format!("  link: {}", t.link));
        line(format!("  id: {}{}", t.id, if t.legacy { " (legacy heartbeats enabled: secret in clear)" } else { "" }));
        if let Some(next) = &t.next_id {
            line(format!("  next id: {next} (key rotation: heartbeats under either secret are accepted)"));
        }
        if t.next_id.is_some() || t.key == Some(KeyRole::Next) {
            let key = match t.key {
                Some(KeyRole::Current) => "current",
                Some(KeyRole::Next) => "next",
                None => "(no heartbeat yet)",
            };
            line(format!("  client's key: {key}"));
        }
        line(format!("  peer prefixes: {}", t.peer_prefixes.join(", ")));
        line(format!("  endpoint: {}", t.endpoint.as_deref().unwrap_or("(none yet)")));
        if let Some(points) = &t.link_points_at
            && t.endpoint.as_deref() != Some(points.as_str())
        {
            if t.down_when_silent && t.silent_for_ns.is_some() {
                line(format!("  link points at: {points} (parked while silent: carries nothing)"));
            } else {
                line(format!("  link points at: {points} (NOT the endpoint: the kernel sends there)"));
            }
        }
        if t.link_up == Some(false) {
            line(format!("  link: DOWN (nothing passes; `ip link set {} up`)", t.link));
        }
        if let Some(why) = &t.link_problem {
            line(format!("  link: cannot read it: {why}"));
        }
        if let Some(why) = &t.problem {
            line(format!("  ERROR: {why}"));
        }
        if let Some(ts) = t.last_heartbeat_ns {
            line(format!("  latest heartbeat: {}", ago(ts, now_ns)));
        }
        line(format!("  heartbeats: {}, endpoint changes: {}", t.heartbeats, t.changes));
        if let Some(quiet) = t.silent_for_ns {
            line(format!(
                "  SILENT: no heartbeat for {} (silence_timeout {} s){}",
                ago(0, quiet).trim_end_matches(" ago"),
                t.silence_timeout_ns.unwrap_or(0) / 1_000_000_000,
                if t.down_when_silent {
                    "; its link is parked (carries nothing; routes and addresses stay) until the next heartbeat"
                } else {
                    ""
                }
            ));
        }
        if let Some(ts) = t.last_change_ns {
            line(format!("  latest change: {}", ago(ts, now_ns)));
        }
        if let Some(u) = &t.unexpected_source {
            line(format!(
                "  unexpected source: {} ({} packets, latest {})",
                u.source,
                u.packets,
                ago(u.last_seen_ns, now_ns)
            ));
        }
    }
    line(String::new());
    let nonzero: Vec<String> =
        report.counters.iter().filter(|(_, n)| *n > 0).map(|(name, n)| format!("{name} {n}")).collect();
    line(format!("counters: {}", if nonzero.is_empty() { "all zero".to_owned() } else { nonzero.join(", ") }));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One tunnel with everything set, for the renderers' tests.
    pub(crate) fn sample_report() -> Report {
        Report {
            controller: Controller { pid: Some(4242), problem: None },
            interfaces: vec!["up0".into()],
            attach: "xdp".into(),
            fou_ports: vec![42424],
            shared_device: None,
            shared_problem: None,
            tunnels: vec![TunnelReport {
                name: "alice".into(),
                link: "fou0".into(),
                id: "34298331bbfa8ae5".into(),
                legacy: false,
                next_id: Some("00000000000000aa".into()),
                key: Some(KeyRole::Next),
                peer_prefixes: vec!["10.0.0.0/30".into()],
                endpoint: Some("203.0.113.5:40001".into()),
                last_heartbeat_ns: Some(1_000_000_000),
                heartbeats: 3,
                changes: 1,
                last_change_ns: Some(0),
                unexpected_source: Some(UnexpectedSource {
                    source: "192.0.2.9:5555".into(),
                    packets: 4,
                    last_seen_ns: 0,
                }),
                silence_timeout_ns: Some(60_000_000_000),
                silent_for_ns: Some(125_000_000_000),
                down_when_silent: true,
                link_points_at: Some("203.0.113.5:40001".into()),
                problem: None,
                link_up: Some(true),
                link_problem: None,
            }],
            counters: vec![("accepted".into(), 3), ("bad_tag".into(), 0)],
        }
    }

    #[test]
    fn render_shows_endpoint_and_unexpected_source() {
        let report = sample_report();
        let text = render(&report, 4_000_000_000);
        for want in [
            "tunnel: alice",
            "endpoint: 203.0.113.5:40001",
            "latest heartbeat: 3 seconds ago",
            "unexpected source: 192.0.2.9:5555 (4 packets",
            "counters: accepted 3\n",
            "next id: 00000000000000aa",
            "client's key: next",
            "SILENT: no heartbeat for 2 minutes, 5 seconds (silence_timeout 60 s); its link is parked",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn render_says_when_the_shared_device_carries_nothing() {
        let mut report = sample_report();
        report.shared_device = Some("footunnel0".into());
        assert!(!render(&report, 0).contains("DOWN"), "a working device is reported down");
        report.shared_problem = Some("shared device footunnel0 is down: `ip link set footunnel0 up`".into());
        let text = render(&report, 0);
        for want in ["shared device: footunnel0", "DOWN: shared device footunnel0 is down", "no client is ACKed"] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn check_passes_only_when_the_kernel_does_what_the_endpoints_say() {
        let mut report = sample_report();
        report.tunnels[0].silent_for_ns = None;
        assert_eq!(problems(&report), Vec::<String>::new());
        assert!(render(&report, 0).contains("controller: running (pid 4242)"));
        assert!(!render(&report, 0).contains("link points at"), "a link that matches is reported");

        // The data plane recorded a new endpoint the link does not follow.
        report.tunnels[0].link_points_at = Some("203.0.113.5:39999".into());
        let found = problems(&report);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("fou0 points at 203.0.113.5:39999, but its client is at 203.0.113.5:40001"));
        assert!(render(&report, 0).contains("link points at: 203.0.113.5:39999 (NOT the endpoint"));

        report.controller.problem = Some("no process has pid 4242".into());
        report.tunnels[0].link_problem = Some("no link named \"fou0\"".into());
        let found = problems(&report);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("the controller is not running (no process has pid 4242)"));
        assert!(render(&report, 0).contains("controller: NOT RUNNING"));

        // No endpoint yet: the placeholder the link points at is no problem.
        let mut fresh = sample_report();
        fresh.tunnels[0].endpoint = None;
        fresh.tunnels[0].link_points_at = Some("192.0.2.1:42424".into());
        assert_eq!(problems(&fresh), Vec::<String>::new());

        // Parked while silent under `on_silence = "down"`: as intended.
        let mut parked = sample_report();
        parked.tunnels[0].link_points_at = Some("192.0.2.1:40001".into());
        assert_eq!(problems(&parked), Vec::<String>::new());
        assert!(render(&parked, 0).contains("link points at: 192.0.2.1:40001 (parked while silent"));
        parked.tunnels[0].down_when_silent = false;
        assert_eq!(problems(&parked).len(), 1, "only \"down\" parks a link");

        // A link set down (by hand, or by an older footunnel) carries nothing.
        let mut down = sample_report();
        down.tunnels[0].silent_for_ns = None;
        down.tunnels[0].link_up = Some(false);
        let found = problems(&down);
        assert!(found.len() == 1 && found[0].contains("fou0 is down"), "{found:?}");
        assert!(render(&down, 0).contains("link: DOWN"));

        // The controller's last error for the tunnel.
        let mut refused = sample_report();
        refused.tunnels[0].silent_for_ns = None;
        refused.tunnels[0].problem = Some("its client is now at …, the same public address as tunnel bob's".into());
        let found = problems(&refused);
        assert!(found.len() == 1 && found[0].contains("tunnel bob's"), "{found:?}");
        assert!(render(&refused, 0).contains("ERROR: its client is now at"));
    }
}
