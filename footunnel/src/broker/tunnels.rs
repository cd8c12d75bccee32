//! The broker's tunnel table: each configured tunnel with its link as the
//! kernel last reported it, and the one effectful step that brings a link in
//! line with its recorded endpoint. What to do is decided in `decide`; this
//! module applies it over rtnetlink and reports what the link is afterwards,
//! so that an ACK is sent only for a link that really points at its client.

use std::{collections::HashMap, net::IpAddr};

use footunnel_ebpf::maps::Endpoint;
use rtnetlink::Handle;
use tracing::{info, warn};

use crate::{
    addr::Prefix,
    broker::decide::{self, LinkEndpoint, LinkPlan},
    config::Tunnel,
    os::link::{self, TunnelLink},
};

/// (tunnel name, link local address, link remote), as `decide` compares them.
type OuterAddresses<'a> = (&'a str, Option<IpAddr>, Option<IpAddr>);

/// A configured tunnel and what the broker knows of it.
pub struct Running {
    pub config: Tunnel,
    /// The link as the kernel reported it at the last look.
    pub link: TunnelLink,
    /// Inner source prefixes of the client (configured or derived from the link).
    pub prefixes: Vec<Prefix>,
    pub last_sent_ns: u64,
    pub last_challenge_ns: Option<u64>,
    /// CHALLENGEs sent since the broker started (metrics).
    pub challenges_sent: u64,
    /// When the broker began serving this tunnel (wall clock): silence counts from here at most.
    pub since_ns: u64,
    /// Reported silent (and with `on_silence = "down"`, its link parked).
    pub silent: bool,
    /// Its endpoint was recorded under a secret it no longer has: the link
    /// is parked until a heartbeat under its secret now.
    pub evicted: bool,
    /// The last accepted heartbeat was the proof of concept's plaintext one:
    /// that client cannot answer a CHALLENGE.
    pub legacy_client: bool,
    /// The last problem reported for this tunnel, so that a sweep that finds
    /// it again does not repeat it every ten seconds.
    last_problem: Option<String>,
    /// `last_problem` changed since the broker last wrote its state file.
    pub problem_changed: bool,
    /// Its prefixes are in the announce table (`announce_table`).
    pub announced: bool,
}

impl Running {
    pub fn new(config: Tunnel, link: TunnelLink, prefixes: Vec<Prefix>) -> Self {
        Running {
            config,
            link,
            prefixes,
            since_ns: crate::now_ns(),
            silent: false,
            evicted: false,
            last_sent_ns: 0,
            last_challenge_ns: None,
            challenges_sent: 0,
            legacy_client: false,
            last_problem: None,
            problem_changed: false,
            announced: false,
        }
    }

    /// What the kernel's FoU receive tells this tunnel's link apart by.
    fn outer_addresses(&self) -> OuterAddresses<'_> {
        (self.config.name.as_str(), self.link.local_ip(), self.link.endpoint().remote)
    }

    /// Logs `problem` once, until it changes or clears.
    fn report(&mut self, problem: String) {
        if self.last_problem.as_ref() != Some(&problem) {
            warn!("tunnel {}: {problem}", self.config.name);
            self.last_problem = Some(problem);
            self.problem_changed = true;
        }
    }

    fn clear_problem(&mut self) {
        if self.last_problem.take().is_some() {
            self.problem_changed = true;
        }
    }

    /// What keeps the tunnel from working now, as last reported.
    pub fn problem(&self) -> Option<&str> {
        self.last_problem.as_deref()
    }
}

#[derive(Default)]
pub struct TunnelTable {
    pub tunnels: Vec<Running>,
    by_record_id: HashMap<u64, usize>,
    /// Link name → tunnel: every link notification is looked up here.
    by_link: HashMap<String, usize>,
}

impl TunnelTable {
    pub fn new(tunnels: Vec<Running>) -> Self {
        let by_record_id = tunnels.iter().enumerate().map(|(i, t)| (t.config.record_id, i)).collect();
        let by_link = tunnels.iter().enumerate().map(|(i, t)| (t.config.link.clone(), i)).collect();
        TunnelTable { tunnels, by_record_id, by_link }
    }

    /// Every tunnel's inner prefixes.
    /// What peers are told of each tunnel: its secrets and prefixes.
    pub(super) fn peer_tunnels(&self) -> super::peers::PeerTunnels {
        super::peers::PeerTunnels::of(self.tunnels.iter().map(|t| (&t.config, t.prefixes.as_slice())))
    }

    pub fn prefixes(&self) -> Vec<Prefix> {
        self.tunnels.iter().flat_map(|t| t.prefixes.iter().copied()).collect()
    }

    pub fn by_record_id(&self, id: u64) -> Option<usize> {
        self.by_record_id.get(&id).copied()
    }

    /// The tunnel whose link is named `name`.
    pub fn by_link(&self, name: &str) -> Option<usize> {
        self.by_link.get(name).copied()
    }

    /// (name, local, remote) of every tunnel but `i`.
    fn others(&self, i: usize) -> Vec<OuterAddresses<'_>> {
        self.tunnels.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, t)| t.outer_addresses()).collect()
    }

    /// Reads tunnel `i`'s link from the kernel (someone may have edited or
    /// re-created it), then points it at `recorded` if it points elsewhere.
    /// Returns where the link points afterwards, as the kernel has it; `None`
    /// if the link cannot be read.
    pub async fn reconcile(&mut self, handle: &Handle, i: usize, recorded: Option<&Endpoint>) -> Option<LinkEndpoint> {
        let name = self.tunnels[i].link.name.clone();
        let current = match link::get(handle, &name).await {
            Ok(l) => l,
            Err(e) => {
                self.tunnels[i].report(format!("{e:#}; the tunnel is down until the link is back"));
                return None;
            }
        };
        let t = &mut self.tunnels[i];
        if let Some(what) = outside_change(&t.link, &current) {
            info!("tunnel {}: link {name} {what}", t.config.name);
        }
        t.link = current;
        let Some(recorded) = recorded else { return Some(t.link.endpoint()) };
        // The other tunnels matter only for a change: a start or sweep over
        // 10,000 links that need none must not build 10,000 lists of 10,000.
        let others = if decide::repoint(t.link.endpoint(), recorded).is_some() { self.others(i) } else { Vec::new() };
        let plan =
            decide::plan_link(self.tunnels[i].link.endpoint(), self.tunnels[i].link.local_ip(), recorded, &others);
        match plan {
            LinkPlan::NoEndpoint | LinkPlan::AlreadyThere => {
                let t = &mut self.tunnels[i];
                t.clear_problem();
                Some(t.link.endpoint())
            }
            LinkPlan::Collides { with, change } => {
                let with = with.to_owned();
                let t = &mut self.tunnels[i];
                let local = t.link.local_ip().map_or("any".to_owned(), |a| a.to_string());
                let problem = format!(
                    "its client is now at {}, the same public address as tunnel {with}'s, and both links have \
                     local address {local}: the kernel's FoU receive cannot tell them apart, so link {name} stays as \
                     it is and the client gets no ACK; give the two tunnels distinct broker local addresses",
                    crate::addr::endpoint(change.remote, change.dport)
                );
                t.report(problem);
                Some(t.link.endpoint())
            }
            LinkPlan::Repoint(change) => {
                let t = &mut self.tunnels[i];
                match link::repoint(handle, &t.link, change.remote, change.dport).await {
                    Ok(updated) => {
                        info!(
                            "tunnel {}: link {name} now points at {} (was {})",
                            t.config.name,
                            crate::addr::endpoint(change.remote, change.dport),
                            describe(t.link.endpoint())
                        );
                        t.link = updated;
                        t.clear_problem();
                        Some(t.link.endpoint())
                    }
                    Err(e) => {
                        t.report(format!("{e:#}; the client gets no ACK until the link can be changed"));
                        Some(t.link.endpoint())
                    }
                }
            }
        }
    }

    /// Tunnels the kernel cannot tell apart, as pairs of names.
    pub fn collisions(&self) -> Vec<(&str, &str)> {
        let rows: Vec<OuterAddresses<'_>> = self.tunnels.iter().map(Running::outer_addresses).collect();
        decide::collisions(&rows)
    }
}

/// How `now` differs from what footunnel last saw of the link, if it was
/// changed by someone else (an operator, systemd-networkd, a config tool).
fn outside_change(before: &TunnelLink, now: &TunnelLink) -> Option<String> {
    if before.index != now.index {
        return Some(format!(
            "was re-created (ifindex {} → {}), pointing at {}; re-applying its endpoint",
            before.index,
            now.index,
            describe(now.endpoint())
        ));
    }
    if before.endpoint() != now.endpoint() || before.local() != now.local() {
        return Some(format!(
            "was changed outside footunnel (now {} from local {}, was {} from {}); re-applying its endpoint",
            describe(now.endpoint()),
            now.local().map_or("any".to_owned(), |a| a.to_string()),
            describe(before.endpoint()),
            before.local().map_or("any".to_owned(), |a| a.to_string()),
        ));
    }
    None
}

pub fn describe(e: LinkEndpoint) -> String {
    match (e.remote, e.dport) {
        (Some(a), Some(p)) => crate::addr::endpoint(a, p),
        (Some(a), None) => format!("{a}"),
        _ => "nowhere".into(),
    }
}
