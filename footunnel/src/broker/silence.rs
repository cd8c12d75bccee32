//! Silence policy (SixXS disabled tunnels whose heartbeats stopped): a
//! tunnel without an accepted heartbeat for its `silence_timeout` is
//! reported silent, and with `on_silence = "down"` its link stops carrying
//! traffic until the next accepted heartbeat. Whether it is silent is
//! decided in `decide::silent_for`, from the same map `footunnel show` reads.
//!
//! "Down" parks the link: its remote goes to a placeholder no network
//! routes, so nothing reaches the old endpoint and nothing from it matches
//! the link. The link stays administratively up: setting it down would make
//! the kernel drop every route through it (and its IPv6 addresses), which
//! setting it up again does not restore.

use std::net::{IpAddr, Ipv6Addr};

use tracing::{info, warn};

use crate::{broker::decide, config::OnSilence, now_ns};

use super::Broker;

impl Broker {
    /// The latest accepted heartbeat of tunnel `i`, on the broker's clock.
    pub(super) fn last_heard_ns(&self, i: usize) -> Option<u64> {
        let e = self.endpoint(self.table.tunnels[i].config.record_id)?;
        decide::known_endpoint(&e).map(|_| e.last_seen_ns)
    }

    pub(super) async fn check_silence_all(&mut self) {
        for i in 0..self.table.tunnels.len() {
            self.check_silence(i).await;
        }
    }

    /// Reports tunnel `i` silent, or heard from again, when that changes;
    /// under `on_silence = "down"` the link is parked or put back to match.
    pub(super) async fn check_silence(&mut self, i: usize) {
        let policy = self.table.tunnels[i].config.silence;
        if policy.is_none() && !self.table.tunnels[i].silent {
            // Not watched: no map lookup (this runs every second for every tunnel).
            return;
        }
        let last_heard = self.last_heard_ns(i);
        let t = &mut self.table.tunnels[i];
        let silent = policy.and_then(|p| decide::silent_for(last_heard, t.since_ns, now_ns(), p.timeout_ns));
        let park = policy.is_some_and(|p| p.action == OnSilence::Down);
        match (silent, t.silent) {
            (Some(quiet), false) => {
                warn!(
                    "tunnel {}: silent: no accepted heartbeat for {} s (silence_timeout {} s){}",
                    t.config.name,
                    quiet / 1_000_000_000,
                    policy.map_or(0, |p| p.timeout_ns) / 1_000_000_000,
                    if park { "; parking its link until it is heard again (routes and addresses stay)" } else { "" }
                );
                t.silent = true;
            }
            (None, true) => {
                info!(
                    "tunnel {}: {}",
                    t.config.name,
                    if policy.is_some() { "heard from again" } else { "no longer watched for silence" }
                );
                t.silent = false;
            }
            _ => return,
        }
        // Parked, or back on the endpoint (also when a reload dropped the policy).
        self.reconcile(i).await;
        if self.table.tunnels[i].silent {
            self.announce(i, false).await;
        }
    }

    /// Whether tunnel `i`'s link is to be parked rather than follow its
    /// endpoint: silent under `on_silence = "down"`, or its endpoint
    /// forgotten with a replaced secret.
    pub(super) fn parked(&self, i: usize) -> bool {
        let t = &self.table.tunnels[i];
        t.evicted || (t.silent && t.config.silence.is_some_and(|p| p.action == OnSilence::Down))
    }

    /// Where a parked link points: a placeholder of its link's family that
    /// no other tunnel's link uses (two links on one local and remote
    /// cannot both exist).
    pub(super) fn parking_remote(&self, i: usize) -> IpAddr {
        let ipv6 = self.table.tunnels[i].link.outer_ipv6();
        let taken: Vec<Option<IpAddr>> = self
            .table
            .tunnels
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, t)| t.link.endpoint().remote)
            .collect();
        (0..)
            .map(|n| if ipv6 { IpAddr::V6(parking6(n)) } else { IpAddr::V4(super::placeholder_remote(n)) })
            .find(|a| !taken.contains(&Some(*a)))
            .expect("placeholders never run out")
    }
}

/// IPv6 placeholders: the documentation prefix (RFC 3849).
fn parking6(n: usize) -> Ipv6Addr {
    let n = n as u32 + 1;
    Ipv6Addr::new(0x2001, 0xdb8, 0xf007, 0, 0, 0, (n >> 16) as u16, n as u16)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ipv6_parking_places_are_distinct_documentation_addresses() {
        let all: std::collections::HashSet<_> = (0..100_000).map(super::parking6).collect();
        assert_eq!(all.len(), 100_000);
        assert!(all.iter().all(|a| a.segments()[..2] == [0x2001, 0xdb8]));
    }
}
