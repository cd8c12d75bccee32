//! `footunnel show` as text, in the manner of `wg show`.

use super::{KeyRole, Report, TunnelReport};
use crate::ago;

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
        render_tunnel(t, now_ns, &mut line);
    }
    line(String::new());
    let nonzero: Vec<String> =
        report.counters.iter().filter(|(_, n)| *n > 0).map(|(name, n)| format!("{name} {n}")).collect();
    line(format!("counters: {}", if nonzero.is_empty() { "all zero".to_owned() } else { nonzero.join(", ") }));
    out
}

/// One tunnel's paragraph.
fn render_tunnel(t: &TunnelReport, now_ns: u64, line: &mut impl FnMut(String)) {
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
    render_link(t, line);
    render_activity(t, now_ns, line);
}

/// Where the link points, when that is news, and what is wrong with it.
fn render_link(t: &TunnelReport, line: &mut impl FnMut(String)) {
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
}

/// Heartbeats, silence, changes, strangers.
fn render_activity(t: &TunnelReport, now_ns: u64, line: &mut impl FnMut(String)) {
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
