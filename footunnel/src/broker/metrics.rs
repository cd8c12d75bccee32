//! The broker's metrics page: per tunnel, per eBPF counter, per program.

use footunnel_ebpf::maps::Counter;

use crate::{
    broker::show::Report,
    metrics::page::{Labels, Page},
};

fn tunnel(name: &str) -> Labels {
    vec![("tunnel", name.to_owned())]
}

/// What only the running broker knows, beside the report.
#[derive(Default)]
pub struct BrokerExtra {
    /// (tunnel, CHALLENGEs sent by this process).
    pub challenges_sent: Vec<(String, u64)>,
    /// (tunnel, `remote:encap-dport` of its link as last read), per-link mode.
    pub links: Vec<(String, String)>,
    /// (program, runs, seconds running), when the kernel's BPF stats are on.
    pub programs: Vec<(String, u64, f64)>,
}

pub fn text(report: &Report, extra: &BrokerExtra, now_ns: u64) -> String {
    let mut r = Page::new("footunnel");
    tunnel_activity(&mut r, report, extra, now_ns);
    tunnel_state(&mut r, report, extra);
    dataplane_counters(&mut r, report);
    programs(&mut r, extra);
    r.text()
}

/// Heartbeats, changes, challenges and silence, per tunnel.
fn tunnel_activity(r: &mut Page, report: &Report, extra: &BrokerExtra, now_ns: u64) {
    let rows = |f: &dyn Fn(&crate::broker::show::TunnelReport) -> Option<u64>| -> Vec<(Labels, u64)> {
        report.tunnels.iter().filter_map(|t| Some((tunnel(&t.name), f(t)?))).collect()
    };
    r.counter("tunnel_heartbeats_total", "Heartbeats accepted by the data plane", &rows(&|t| Some(t.heartbeats)));
    r.counter(
        "tunnel_endpoint_changes_total",
        "Changes of the client's public address or port (the first heartbeat counts)",
        &rows(&|t| Some(t.changes)),
    );
    let challenges: Vec<(Labels, u64)> = extra.challenges_sent.iter().map(|(n, c)| (tunnel(n), *c)).collect();
    r.counter(
        "tunnel_challenges_sent_total",
        "CHALLENGEs sent to sources of the tunnel's data other than its endpoint (since the broker started)",
        &challenges,
    );
    let age: Vec<(Labels, f64)> = report
        .tunnels
        .iter()
        .filter_map(|t| Some((tunnel(&t.name), now_ns.saturating_sub(t.last_heartbeat_ns?) as f64 / 1e9)))
        .collect();
    r.gauge("tunnel_heartbeat_age_seconds", "Seconds since the latest accepted heartbeat", &age);
    let silent: Vec<(Labels, f64)> = report
        .tunnels
        .iter()
        .filter(|t| t.silence_timeout_ns.is_some())
        .map(|t| (tunnel(&t.name), if t.silent_for_ns.is_some() { 1.0 } else { 0.0 }))
        .collect();
    r.gauge("tunnel_silent", "1 while the tunnel has had no heartbeat for its silence_timeout", &silent);
}

/// What each tunnel is: its link and key, whether it has an endpoint, an
/// error, a link that points there.
fn tunnel_state(r: &mut Page, report: &Report, extra: &BrokerExtra) {
    // An info metric as Prometheus' own exporters write them (node_uname_info):
    // a gauge of 1 whose labels carry the information.
    // Labelled by tunnel, never by the client's address: that would start a
    // new series at every NAT rebinding and put customers' addresses into
    // the monitoring system. Where a client is belongs in `footunnel show`.
    let mut info: Vec<(Labels, f64)> = Vec::new();
    let mut known: Vec<(Labels, f64)> = Vec::new();
    for t in &report.tunnels {
        let key = match t.key {
            Some(crate::config::KeyRole::Current) => "current",
            Some(crate::config::KeyRole::Next) => "next",
            None => "",
        };
        info.push((vec![("tunnel", t.name.clone()), ("link", t.link.clone()), ("key", key.to_owned())], 1.0));
        known.push((vec![("tunnel", t.name.clone())], if t.endpoint.is_some() { 1.0 } else { 0.0 }));
    }
    r.gauge("tunnel_info", "The tunnel's link and which secret (current or next) its client uses", &info);
    r.gauge("tunnel_endpoint_known", "1 once the tunnel's client has an endpoint on record", &known);
    let errors: Vec<(Labels, f64)> =
        report.tunnels.iter().map(|t| (tunnel(&t.name), if t.problem.is_some() { 1.0 } else { 0.0 })).collect();
    r.gauge("tunnel_error", "1 while the controller reports a problem for the tunnel (see show)", &errors);
    // Parked links (silent under on_silence = "down") point elsewhere on purpose.
    let at_endpoint: Vec<(Labels, f64)> = report
        .tunnels
        .iter()
        .filter(|t| !(t.down_when_silent && t.silent_for_ns.is_some()))
        .filter_map(|t| {
            let endpoint = t.endpoint.as_ref()?;
            let link = extra.links.iter().find(|(n, _)| *n == t.name).map(|(_, l)| l)?;
            Some((tunnel(&t.name), if link == endpoint { 1.0 } else { 0.0 }))
        })
        .collect();
    r.gauge(
        "tunnel_link_at_endpoint",
        "1 while the tunnel's link points at its client's endpoint (per-link mode, tunnels with an endpoint)",
        &at_endpoint,
    );
}

/// Each eBPF counter is a series of its family (footunnel_ebpf::maps::counters!).
fn dataplane_counters(r: &mut Page, report: &Report) {
    type Rows = Vec<(Labels, u64)>;
    let mut by_family: std::collections::BTreeMap<&str, (&str, Rows)> = Default::default();
    for (name, value) in &report.counters {
        let Some(counter) = Counter::ALL.iter().find(|c| c.name() == name) else { continue };
        let (family, label, help) = counter.family().metric();
        let labels = if label.is_empty() { Vec::new() } else { vec![(label, name.clone())] };
        by_family.entry(family).or_insert((help, Vec::new())).1.push((labels, *value));
    }
    for (family, (help, rows)) in by_family {
        r.counter(family, help, &rows);
    }
}

/// The programs' run counts and times, when the kernel keeps them.
fn programs(r: &mut Page, extra: &BrokerExtra) {
    let runs: Vec<(Labels, u64)> = extra.programs.iter().map(|(p, n, _)| (vec![("program", p.clone())], *n)).collect();
    let time: Vec<(Labels, f64)> = extra.programs.iter().map(|(p, _, s)| (vec![("program", p.clone())], *s)).collect();
    if !extra.programs.is_empty() {
        r.counter("bpf_program_runs_total", "Runs of the eBPF program (kernel.bpf_stats_enabled)", &runs);
        r.fractional_counter(
            "bpf_program_run_seconds_total",
            "Total time the eBPF program ran (kernel.bpf_stats_enabled)",
            &time,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut report = crate::broker::show::tests::sample_report();
        let t = &mut report.tunnels[0];
        (t.heartbeats, t.changes, t.last_heartbeat_ns) = (12, 2, Some(7_000_000_000));
        (t.key, t.next_id, t.silent_for_ns) = (Some(crate::config::KeyRole::Current), None, None);
        report.counters = vec![("accepted".into(), 12), ("bad_tag".into(), 3), ("events_lost".into(), 1)];
        report
    }

    #[test]
    fn broker_metrics_follow_prometheus_conventions() {
        let extra = BrokerExtra {
            challenges_sent: vec![("alice".into(), 4)],
            links: vec![("alice".into(), "203.0.113.5:40001".into())],
            programs: vec![("footunnel_xdp".into(), 1000, 0.25)],
        };
        let page = text(&report(), &extra, 10_000_000_000);
        let mut stuck = report();
        stuck.tunnels[0].problem = Some("cannot change link fou0".into());
        let stuck_extra = BrokerExtra { links: vec![("alice".into(), "192.0.2.1:42424".into())], ..Default::default() };
        let stuck_text = text(&stuck, &stuck_extra, 10_000_000_000);
        assert!(stuck_text.contains("footunnel_tunnel_error{tunnel=\"alice\"} 1\n"), "{stuck_text}");
        assert!(stuck_text.contains("footunnel_tunnel_link_at_endpoint{tunnel=\"alice\"} 0\n"), "{stuck_text}");
        for want in [
            "# TYPE footunnel_tunnel_heartbeats_total counter",
            "footunnel_tunnel_heartbeats_total{tunnel=\"alice\"} 12",
            "footunnel_tunnel_endpoint_changes_total{tunnel=\"alice\"} 2",
            "footunnel_tunnel_challenges_sent_total{tunnel=\"alice\"} 4",
            "footunnel_tunnel_heartbeat_age_seconds{tunnel=\"alice\"} 3\n",
            "footunnel_tunnel_silent{tunnel=\"alice\"} 0\n",
            "footunnel_tunnel_info{key=\"current\",link=\"fou0\",tunnel=\"alice\"} 1\n",
            "footunnel_tunnel_endpoint_known{tunnel=\"alice\"} 1\n",
            "footunnel_tunnel_error{tunnel=\"alice\"} 0\n",
            "footunnel_tunnel_link_at_endpoint{tunnel=\"alice\"} 1\n",
            "footunnel_heartbeats_rejected_total{reason=\"bad_tag\"} 3",
            "footunnel_dataplane_packets_total{outcome=\"accepted\"} 12",
            "footunnel_events_lost_total 1",
            "footunnel_bpf_program_runs_total{program=\"footunnel_xdp\"} 1000",
            "footunnel_bpf_program_run_seconds_total{program=\"footunnel_xdp\"} 0.25",
        ] {
            assert!(page.contains(want), "{want:?} missing from:\n{page}");
        }
        assert!(!page.contains("203.0.113.5"), "a label carries the client's address:\n{page}");
    }
}
