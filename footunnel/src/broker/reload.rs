//! Reload (SIGHUP, `footunnel reload`): the new configuration's difference
//! applied to the running broker. New tunnels start, removed ones stop,
//! changed ones change; an unchanged tunnel's link, endpoint, counters and
//! traffic are not touched. A configuration that fails any check changes
//! nothing, and the running one stays.

use std::{collections::HashSet, net::Ipv4Addr};

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use crate::{
    broker::tunnels::{Running, TunnelTable},
    config::{BrokerConfig, Tunnel},
    now_ns,
    os::manage::{self, Created},
};

use super::{
    Broker, ReloadOutcome, bring_up_managed,
    plan::{Plan, plan},
    program::fill_maps,
};

/// Settings that decide where the data plane is and what it owns: a reload
/// cannot move them under a running program.
pub(crate) fn check_reloadable(old: &BrokerConfig, new: &BrokerConfig) -> Result<()> {
    let fixed = [
        ("pin_dir", old.pin_dir != new.pin_dir),
        ("state_dir", old.state_dir != new.state_dir),
        ("attach", old.attach != new.attach),
        ("interfaces", old.interfaces != new.interfaces),
        ("fou_ports", old.fou_ports != new.fou_ports),
        ("legacy_port", old.legacy_port != new.legacy_port),
        ("metrics", old.metrics != new.metrics),
        ("mode or [shared]", old.shared != new.shared),
        ("announce_table", old.announce_table != new.announce_table),
        ("peer_port", old.peer_port != new.peer_port),
        ("peers (from none, or to none)", old.peers.is_empty() != new.peers.is_empty()),
    ];
    let changed: Vec<&str> = fixed.iter().filter(|(_, c)| *c).map(|(n, _)| *n).collect();
    if !changed.is_empty() {
        bail!(
            "{} changed, and a reload cannot move the data plane: restart the broker to apply that \
             (`systemctl restart footunnel-broker`), or undo the change and reload again",
            changed.join(", ")
        );
    }
    Ok(())
}

/// Tunnels by name: which stay as they are, which change, start and stop.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TunnelDiff {
    pub unchanged: Vec<String>,
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

pub(crate) fn diff(old: &[Tunnel], new: &[Tunnel]) -> TunnelDiff {
    let mut d = TunnelDiff::default();
    for t in new {
        match old.iter().find(|o| o.name == t.name) {
            Some(o) if o == t => d.unchanged.push(t.name.clone()),
            Some(_) => d.changed.push(t.name.clone()),
            None => d.added.push(t.name.clone()),
        }
    }
    d.removed = old.iter().filter(|o| !new.iter().any(|t| t.name == o.name)).map(|o| o.name.clone()).collect();
    d
}

impl TunnelDiff {
    pub fn summary(&self) -> String {
        let list = |v: &[String]| if v.is_empty() { "none".to_owned() } else { v.join(", ") };
        format!(
            "added: {}; changed: {}; removed: {}; unchanged: {}",
            list(&self.added),
            list(&self.changed),
            list(&self.removed),
            self.unchanged.len()
        )
    }
}

/// A tunnel keeps what the broker knows of it (link, rate limits, the
/// kind of client it has) when its name and link stay: its endpoint is
/// recorded under its name, so a rotated secret keeps it too.
fn carries_over(old: &Running, new: &Tunnel) -> bool {
    old.config.name == new.name && old.config.link == new.link
}

impl Broker {
    /// Applies `new` in place of the running configuration; on an error in
    /// any check nothing has changed (an error writing the maps says that it
    /// may have). Returns what changed, for the log and `footunnel reload`.
    /// Remotes of the running links: a managed link's placeholder (IPv4,
    /// as ipip links are) must not be one of them.
    fn placeholders_in_use(&self) -> HashSet<Ipv4Addr> {
        self.table
            .tunnels
            .iter()
            .filter_map(|t| match t.link.endpoint().remote {
                Some(std::net::IpAddr::V4(a)) => Some(a),
                _ => None,
            })
            .collect()
    }

    /// Runs the plan's tunnels, each one that carries over with the state it
    /// had; returns the tunnels that stopped.
    fn take_on(&mut self, plan: &Plan, evicted: &[u64]) -> Vec<Running> {
        let mut old = std::mem::take(&mut self.table).tunnels;
        let running = plan
            .tunnels
            .iter()
            .map(|p| match old.iter().position(|o| carries_over(o, &p.config)) {
                Some(i) => {
                    let mut kept = old.swap_remove(i);
                    kept.config = p.config.clone();
                    kept.prefixes = p.prefixes.clone();
                    kept
                }
                None => Running::new(p.config.clone(), p.link.clone(), p.prefixes.clone()),
            })
            .collect();
        self.table = TunnelTable::new(running);
        for t in &mut self.table.tunnels {
            t.evicted |= evicted.contains(&t.config.record_id);
        }
        old
    }

    /// Stopped tunnels: links footunnel created go, as `unload` would
    /// remove them; links made by hand stay as they are.
    async fn remove_links_of(&mut self, stopped: &[Running], new: &BrokerConfig) {
        let kept_links: HashSet<&str> = new.tunnels.iter().map(|t| t.link.as_str()).collect();
        let gone = Created {
            links: stopped
                .iter()
                .map(|o| o.config.link.clone())
                .filter(|l| !kept_links.contains(l.as_str()) && self.created.links.contains(l))
                .collect(),
            fou_ports: Vec::new(),
        };
        if gone.is_empty() {
            return;
        }
        match manage::down(&self.handle, &gone).await {
            Ok(()) => info!("removed links {:?} of stopped tunnels", gone.links),
            Err(e) => warn!("{e:#}"),
        }
        self.created.links.retain(|l| !gone.links.contains(l));
    }

    /// Attaches the program to uplinks the new configuration adds.
    fn attach_new_interfaces(&mut self, new: &BrokerConfig, plan: &Plan) -> Result<()> {
        for iface in plan.interfaces.iter().filter(|i| !self.interfaces.contains(i)).cloned().collect::<Vec<_>>() {
            super::program::attach(&mut self.ebpf, new, &iface)?;
            self.uplink_index.insert(iface.clone(), crate::os::sys::ifindex(&iface));
            self.interfaces.push(iface);
        }
        Ok(())
    }

    /// Shared-device mode: routes for the new plan's prefixes; the
    /// prefixes no longer routed (their routes go once the maps are new).
    async fn route_shared(&mut self, plan: &Plan) -> Result<Vec<crate::addr::Prefix>> {
        let Some(shared) = self.mode.shared_mut() else { return Ok(Vec::new()) };
        let prefixes: Vec<_> = plan.tunnels.iter().flat_map(|t| t.prefixes.iter().copied()).collect();
        super::shared::route(&self.handle, &shared.device, &prefixes, &shared.route_mtus).await?;
        let kept: HashSet<_> = prefixes.iter().collect();
        shared.route_mtus.retain(|p, _| kept.contains(p));
        Ok(self.table.prefixes().into_iter().filter(|p| !kept.contains(p)).collect())
    }

    pub(super) async fn reload(&mut self, new: BrokerConfig) -> Result<String> {
        check_reloadable(&self.config, &new)?;
        let diff = diff(&self.config.tunnels, &new.tunnels);
        let created_now = bring_up_managed(&new, &self.handle, &self.placeholders_in_use()).await?;
        let plan = manage::undo_on_error(plan(&new, &self.handle).await, &self.handle, &created_now).await?;
        if let Some(socket) = &self.peer_socket {
            let agreed = socket.agree(&new.peers, &plan.peer_tunnels(), new.freshness_window_ns).await;
            manage::undo_on_error(agreed, &self.handle, &created_now).await?;
        }
        let attached = self.attach_new_interfaces(&new, &plan);
        manage::undo_on_error(attached, &self.handle, &created_now).await?;
        let routed = self.route_shared(&plan).await;
        let dropped_routes = manage::undo_on_error(routed, &self.handle, &created_now).await?;
        // The maps may hold part of the new configuration: say so plainly.
        let evicted = fill_maps(&mut self.ebpf, &new, &plan, now_ns()).context(
            "the data plane could not take the new configuration and may hold part of it: fix the cause, \
             then reload again or restart the broker",
        );
        let evicted = manage::undo_on_error(evicted, &self.handle, &created_now).await?;

        let stopped = self.take_on(&plan, &evicted);
        self.remove_links_of(&stopped, &new).await;
        self.created.absorb(created_now);
        if let Some(device) = self.mode.device()
            && !dropped_routes.is_empty()
        {
            // After the maps: no packet to these prefixes finds an endpoint now.
            match super::shared::unroute(&self.handle, device, &dropped_routes).await {
                Ok(()) => info!("removed the routes of {dropped_routes:?} through {}", device.name),
                Err(e) => warn!("{e:#}"),
            }
        }
        if new.challenge_rate != self.config.challenge_rate {
            self.challenges = crate::broker::decide::RateLimit::new(new.challenge_rate, now_ns());
        }
        self.config = new;
        if let Some(socket) = &mut self.peer_socket {
            socket.running = self.table.peer_tunnels();
        }
        for name in diff.added.iter().chain(&diff.changed) {
            if let Some(i) = self.table.tunnels.iter().position(|t| &t.config.name == name) {
                self.reconcile(i).await;
            }
        }
        // Stopped tunnels' routes go; changed prefixes are announced anew.
        self.announce_all().await;
        Ok(diff.summary())
    }
}

/// `footunnel reload`: signals the broker recorded in `state_dir` and
/// waits for the outcome of that reload (up to `timeout`).
pub fn request(state_dir: &std::path::Path, timeout: std::time::Duration) -> Result<ReloadOutcome> {
    let before = super::read_state(state_dir)?;
    let Some(pid) = before.pid else {
        bail!(
            "the broker state in {} names no process: the broker is older than reload; restart it",
            state_dir.display()
        )
    };
    if let Err(why) = crate::os::service::check_broker_process(pid) {
        bail!(
            "the broker state in {} names pid {pid}, but {why}: the broker is not running \
             (start it: `systemctl start footunnel-broker`)",
            state_dir.display()
        );
    }
    let generation = before.reload.map_or(0, |r| r.generation);
    if let Err(e) = crate::os::sys::send_hangup(pid) {
        bail!("cannot signal the broker (pid {pid}, from {}): {e}; is it running?", state_dir.display());
    }
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if let Ok(now) = super::read_state(state_dir)
            && let Some(outcome) = now.reload.filter(|r| r.generation > generation)
        {
            return Ok(outcome);
        }
    }
    bail!("the broker (pid {pid}) did not report a reload within {timeout:?}; see its log")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> BrokerConfig {
        BrokerConfig::parse(text, std::path::Path::new("/"), &|_| unreachable!()).unwrap()
    }

    const A: &str = "[[tunnel]]\nname = \"a\"\nlink = \"fou0\"\nsecret = \"secret of tunnel a, long enough\"\n";
    const B: &str = "[[tunnel]]\nname = \"b\"\nlink = \"fou1\"\nsecret = \"secret of tunnel b, long enough\"\n";
    const C: &str = "[[tunnel]]\nname = \"c\"\nlink = \"fou2\"\nsecret = \"secret of tunnel c, long enough\"\n";

    #[test]
    fn the_difference_names_what_starts_stops_and_changes() {
        let old = config(&format!("{A}{B}"));
        let b_changed = B.replace("long enough", "and rotated");
        let new = config(&format!("{A}{b_changed}{C}"));
        let d = diff(&old.tunnels, &new.tunnels);
        assert_eq!(d.unchanged, ["a"]);
        assert_eq!(d.changed, ["b"]);
        assert_eq!(d.added, ["c"]);
        assert!(d.removed.is_empty());
        let d = diff(&new.tunnels, &config(A).tunnels);
        assert_eq!((d.unchanged.len(), d.removed.clone()), (1, vec!["b".to_owned(), "c".to_owned()]));
        let prefixes = config(&A.replace("secret =", "peer_prefixes = [\"10.9.0.0/24\"]\nsecret ="));
        assert_eq!(diff(&config(A).tunnels, &prefixes.tunnels).changed, ["a"], "a new prefix is a change");
    }

    #[test]
    fn what_places_the_data_plane_cannot_change_in_a_reload() {
        let old = config(A);
        assert!(check_reloadable(&old, &config(&format!("freshness_window = 30\n{A}{B}"))).is_ok());
        for (setting, text) in [
            ("pin_dir", format!("pin_dir = \"/sys/fs/bpf/other\"\n{A}")),
            ("attach", format!("attach = \"tc\"\n{A}")),
            ("fou_ports", format!("fou_ports = [4000]\n{A}")),
            ("interfaces", format!("interfaces = [\"eth1\"]\n{A}")),
        ] {
            let e = check_reloadable(&old, &config(&text)).unwrap_err().to_string();
            assert!(e.starts_with(setting) && e.contains("restart the broker"), "{e}");
        }
    }
}
