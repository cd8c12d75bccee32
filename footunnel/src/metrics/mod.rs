//! Prometheus metrics (`--metrics ADDR:PORT`, off by default): built with
//! the `prometheus` client library at each scrape from the same sources as
//! `footunnel show` (the pinned maps and the state files), so the two never
//! disagree, and served over a minimal HTTP/1.1 responder (see [`Server`]).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use prometheus::{Encoder, GaugeVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc, oneshot},
};
use tracing::debug;

use crate::{client::ClientState, show::Report};

type Labels = Vec<(&'static str, String)>;

/// Prometheus' text exposition format, version 0.0.4.
const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The metrics listener, built so that no number of local connections can
/// hold up the event loop that owns it: a connection's request is read in a
/// task of its own before the page is asked for, the page is rendered at
/// most once per [`PAGE_MAX_AGE`] however many ask, at most
/// [`MAX_CONNECTIONS`] are served at a time (more are closed at once), and
/// the loop polls it after its events.
pub struct Server {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    wanted_tx: mpsc::Sender<oneshot::Sender<Arc<str>>>,
    wanted_rx: mpsc::Receiver<oneshot::Sender<Arc<str>>>,
    page: Option<(Instant, Arc<str>)>,
}

/// Connections served at a time; Prometheus needs one.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a rendered page is served again.
pub const PAGE_MAX_AGE: Duration = Duration::from_secs(1);
/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the metrics listener needs of the loop that owns it.
pub enum Work {
    /// A new connection.
    Connection(TcpStream),
    /// A connection's request is read: it waits for the page.
    Page(oneshot::Sender<Arc<str>>),
}

/// Binds the metrics listener; failing to is a start-up error, never a
/// silent absence of metrics.
pub async fn bind(addr: SocketAddr) -> Result<Server> {
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr}: pick a free address and port for `metrics`/--metrics, or leave it out")
    })?;
    let (wanted_tx, wanted_rx) = mpsc::channel(MAX_CONNECTIONS);
    Ok(Server { listener, slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)), wanted_tx, wanted_rx, page: None })
}

/// The listener's next piece of work; never, without a listener.
pub async fn next(server: Option<&mut Server>) -> Work {
    let Some(server) = server else { return std::future::pending().await };
    loop {
        tokio::select! {
            Some(reply) = server.wanted_rx.recv() => return Work::Page(reply),
            accepted = server.listener.accept() => match accepted {
                Ok((stream, _)) => return Work::Connection(stream),
                // Out of descriptors, say: the next try may work.
                Err(e) => {
                    debug!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

impl Server {
    /// Does `work`; `render` makes the page, when the last one is too old.
    pub fn handle(&mut self, work: Work, render: impl FnOnce() -> String) {
        match work {
            Work::Connection(stream) => match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let wanted = self.wanted_tx.clone();
                    tokio::spawn(async move {
                        serve(stream, wanted).await;
                        drop(slot);
                    });
                }
                // Over the cap: closed unread.
                Err(_) => debug!("metrics: {MAX_CONNECTIONS} connections already; closing another"),
            },
            Work::Page(reply) => {
                let now = Instant::now();
                let page = match &self.page {
                    Some((at, page)) if now.duration_since(*at) < PAGE_MAX_AGE => page.clone(),
                    _ => {
                        let page: Arc<str> = render().into();
                        self.page = Some((now, page.clone()));
                        page
                    }
                };
                let _ = reply.send(page);
            }
        }
    }
}

/// Answers one HTTP request on `stream`: `GET /metrics` gets the page, asked
/// for only once the request is read.
async fn serve(mut stream: TcpStream, wanted: mpsc::Sender<oneshot::Sender<Arc<str>>>) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read_head).await.is_err() {
        return;
    }
    let line = String::from_utf8_lossy(&request).lines().next().unwrap_or_default().to_owned();
    let (status, content_type, body): (_, _, Arc<str>) = match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["GET", "/metrics", _] | ["GET", "/", _] => {
            let (reply, page) = oneshot::channel();
            if wanted.send(reply).await.is_err() {
                return;
            }
            let Ok(page) = page.await else { return };
            ("200 OK", CONTENT_TYPE, page)
        }
        ["GET", _, _] => ("404 Not Found", "text/plain", "footunnel serves its metrics at /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".into()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if let Err(e) = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        stream.shutdown().await
    }
    .await
    {
        debug!("metrics request: {e}");
    }
}

fn label_names(rows: &[(Labels, impl Copy)]) -> Vec<&'static str> {
    rows.first().map(|(l, _)| l.iter().map(|(k, _)| *k).collect()).unwrap_or_default()
}

fn label_values(labels: &Labels) -> Vec<&str> {
    labels.iter().map(|(_, v)| v.as_str()).collect()
}

/// A counter (`name` ends in `_total`) with one series per row.
fn counter_family(registry: &Registry, name: &str, help: &str, rows: &[(Labels, u64)]) {
    let registered = if let [(labels, value)] = rows
        && labels.is_empty()
    {
        let counter = IntCounter::new(name, help).expect("a valid metric name");
        counter.inc_by(*value);
        registry.register(Box::new(counter))
    } else {
        let family = IntCounterVec::new(Opts::new(name, help), &label_names(rows)).expect("a valid metric name");
        for (labels, value) in rows {
            family.with_label_values(&label_values(labels)).inc_by(*value);
        }
        registry.register(Box::new(family))
    };
    registered.expect("each metric is registered once");
}

/// A counter of seconds (fractional).
fn seconds_counter_family(registry: &Registry, name: &str, help: &str, rows: &[(Labels, f64)]) {
    let family = prometheus::CounterVec::new(Opts::new(name, help), &label_names(rows)).expect("a valid metric name");
    for (labels, value) in rows {
        family.with_label_values(&label_values(labels)).inc_by(*value);
    }
    registry.register(Box::new(family)).expect("each metric is registered once");
}

fn gauge_family(registry: &Registry, name: &str, help: &str, rows: &[(Labels, f64)]) {
    let family = GaugeVec::new(Opts::new(name, help), &label_names(rows)).expect("a valid metric name");
    for (labels, value) in rows {
        family.with_label_values(&label_values(labels)).set(*value);
    }
    registry.register(Box::new(family)).expect("each metric is registered once");
}

fn text(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).expect("writing to memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

fn tunnel(name: &str) -> Labels {
    vec![("tunnel", name.to_owned())]
}

/// How an eBPF counter is exposed: rejected control messages by reason,
/// other packets by outcome, ring-buffer losses and events on their own.
fn classify(counter: &str) -> (&'static str, &'static str) {
    match counter {
        "malformed" | "bad_version" | "bad_type" | "unknown_tunnel" | "stale" | "replay" | "bad_tag"
        | "legacy_unknown" | "busy" | "unconfigured" => ("heartbeats_rejected_total", "reason"),
        "events_lost" => ("events_lost_total", ""),
        "observed_events" => ("observed_events_total", ""),
        _ => ("dataplane_packets_total", "outcome"),
    }
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

pub fn broker_text(report: &Report, extra: &BrokerExtra, now_ns: u64) -> String {
    let r = Registry::new_custom(Some("footunnel".into()), None).expect("a valid prefix");
    let rows = |f: &dyn Fn(&crate::show::TunnelReport) -> Option<u64>| -> Vec<(Labels, u64)> {
        report.tunnels.iter().filter_map(|t| Some((tunnel(&t.name), f(t)?))).collect()
    };
    counter_family(
        &r,
        "tunnel_heartbeats_total",
        "Heartbeats accepted by the data plane",
        &rows(&|t| Some(t.heartbeats)),
    );
    counter_family(
        &r,
        "tunnel_endpoint_changes_total",
        "Changes of the client's public address or port (the first heartbeat counts)",
        &rows(&|t| Some(t.changes)),
    );
    let challenges: Vec<(Labels, u64)> = extra.challenges_sent.iter().map(|(n, c)| (tunnel(n), *c)).collect();
    counter_family(
        &r,
        "tunnel_challenges_sent_total",
        "CHALLENGEs sent to sources of the tunnel's data other than its endpoint (since the broker started)",
        &challenges,
    );
    let age: Vec<(Labels, f64)> = report
        .tunnels
        .iter()
        .filter_map(|t| Some((tunnel(&t.name), now_ns.saturating_sub(t.last_heartbeat_ns?) as f64 / 1e9)))
        .collect();
    gauge_family(&r, "tunnel_heartbeat_age_seconds", "Seconds since the latest accepted heartbeat", &age);
    let silent: Vec<(Labels, f64)> = report
        .tunnels
        .iter()
        .filter(|t| t.silence_timeout_ns.is_some())
        .map(|t| (tunnel(&t.name), if t.silent_for_ns.is_some() { 1.0 } else { 0.0 }))
        .collect();
    gauge_family(&r, "tunnel_silent", "1 while the tunnel has had no heartbeat for its silence_timeout", &silent);
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
    gauge_family(&r, "tunnel_info", "The tunnel's link and which secret (current or next) its client uses", &info);
    gauge_family(&r, "tunnel_endpoint_known", "1 once the tunnel's client has an endpoint on record", &known);
    let errors: Vec<(Labels, f64)> =
        report.tunnels.iter().map(|t| (tunnel(&t.name), if t.problem.is_some() { 1.0 } else { 0.0 })).collect();
    gauge_family(&r, "tunnel_error", "1 while the controller reports a problem for the tunnel (see show)", &errors);
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
    gauge_family(
        &r,
        "tunnel_link_at_endpoint",
        "1 while the tunnel's link points at its client's endpoint (per-link mode, tunnels with an endpoint)",
        &at_endpoint,
    );
    let mut by_family: std::collections::BTreeMap<&str, Vec<(Labels, u64)>> = Default::default();
    for (name, value) in &report.counters {
        let (family, label) = classify(name);
        let labels = if label.is_empty() { Vec::new() } else { vec![(label, name.clone())] };
        by_family.entry(family).or_default().push((labels, *value));
    }
    let help = |family: &str| match family {
        "heartbeats_rejected_total" => "Control messages the data plane dropped, by reason",
        "events_lost_total" => "Events the ring buffer had no room for (the broker catches up in its next sweep)",
        "observed_events_total" => "Events about FoU data from a source other than its tunnel's endpoint",
        _ => "Packets on watched ports, by what the data plane did with them",
    };
    for (family, rows) in by_family {
        counter_family(&r, family, help(family), &rows);
    }
    let runs: Vec<(Labels, u64)> = extra.programs.iter().map(|(p, n, _)| (vec![("program", p.clone())], *n)).collect();
    let time: Vec<(Labels, f64)> = extra.programs.iter().map(|(p, _, s)| (vec![("program", p.clone())], *s)).collect();
    if !extra.programs.is_empty() {
        counter_family(&r, "bpf_program_runs_total", "Runs of the eBPF program (kernel.bpf_stats_enabled)", &runs);
        seconds_counter_family(
            &r,
            "bpf_program_run_seconds_total",
            "Total time the eBPF program ran (kernel.bpf_stats_enabled)",
            &time,
        );
    }
    text(&r)
}

pub fn client_text(state: &ClientState, now_ns: u64) -> String {
    let r = Registry::new_custom(Some("footunnel_client".into()), None).expect("a valid prefix");
    let labels = vec![("broker", state.broker.clone()), ("link", state.link.clone())];
    counter_family(&r, "heartbeats_sent_total", "Heartbeats sent", &[(labels.clone(), state.heartbeats)]);
    counter_family(&r, "acks_total", "ACKs from the broker accepted", &[(labels.clone(), state.acks)]);
    counter_family(
        &r,
        "challenges_total",
        "CHALLENGEs from the broker accepted",
        &[(labels.clone(), state.challenges)],
    );
    if let Some(rtt) = state.rtt_us {
        gauge_family(
            &r,
            "ack_rtt_seconds",
            "Round trip of the latest ACKed heartbeat",
            &[(labels.clone(), rtt as f64 / 1e6)],
        );
    }
    if let Some(at) = state.last_ack_ns {
        gauge_family(
            &r,
            "ack_age_seconds",
            "Seconds since the latest ACK",
            &[(labels.clone(), now_ns.saturating_sub(at) as f64 / 1e9)],
        );
    }
    gauge_family(
        &r,
        "public_endpoint_known",
        "1 once an ACK has said where the broker sees this end (`footunnel show` says where)",
        &[(labels.clone(), if state.public_endpoint.is_some() { 1.0 } else { 0.0 })],
    );
    text(&r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_scrapes_in_a_second_render_one_page() {
        let mut server = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let renders = std::cell::Cell::new(0);
        let mut pages = Vec::new();
        for _ in 0..50 {
            let (reply, page) = oneshot::channel();
            server.handle(Work::Page(reply), || {
                renders.set(renders.get() + 1);
                format!("page {}\n", renders.get())
            });
            pages.push(page.await.unwrap());
        }
        assert_eq!(renders.get(), 1, "rendered once per scrape");
        assert!(pages.iter().all(|p| &**p == "page 1\n"));
    }

    fn report() -> Report {
        let mut report = crate::show::tests::sample_report();
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
        let text = broker_text(&report(), &extra, 10_000_000_000);
        let mut stuck = report();
        stuck.tunnels[0].problem = Some("cannot change link fou0".into());
        let stuck_extra = BrokerExtra { links: vec![("alice".into(), "192.0.2.1:42424".into())], ..Default::default() };
        let stuck_text = broker_text(&stuck, &stuck_extra, 10_000_000_000);
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
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(!text.contains("203.0.113.5"), "a label carries the client's address:\n{text}");
    }

    #[test]
    fn client_metrics_say_round_trip_and_age_of_the_latest_ack() {
        let state = ClientState {
            broker: "198.51.100.1".into(),
            link: "fou0".into(),
            public_endpoint: Some("203.0.113.5:40001".into()),
            rtt_us: Some(1500),
            last_ack_ns: Some(8_000_000_000),
            heartbeats: 9,
            acks: 8,
            challenges: 1,
        };
        let text = client_text(&state, 10_000_000_000);
        for want in [
            "footunnel_client_heartbeats_sent_total{broker=\"198.51.100.1\",link=\"fou0\"} 9",
            "footunnel_client_acks_total{broker=\"198.51.100.1\",link=\"fou0\"} 8",
            "footunnel_client_ack_rtt_seconds{broker=\"198.51.100.1\",link=\"fou0\"} 0.0015",
            "footunnel_client_ack_age_seconds{broker=\"198.51.100.1\",link=\"fou0\"} 2\n",
            "footunnel_client_public_endpoint_known{broker=\"198.51.100.1\",link=\"fou0\"} 1\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(!text.contains("203.0.113.5"), "a label carries this end's public address:\n{text}");
    }
}
