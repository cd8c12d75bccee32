//! The controller's decisions, free of effects: what to change, whom to
//! challenge, what collides. The broker applies them.

use std::{collections::HashMap, net::IpAddr};

use footunnel_ebpf::{maps::Endpoint, wire::MESSAGE_LEN};

pub use crate::os::link::LinkEndpoint;

/// Where the link must point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repoint {
    pub remote: IpAddr,
    pub dport: u16,
}

/// The recorded endpoint, if it is one (a reboot seeds entries with no address).
pub fn known_endpoint(e: &Endpoint) -> Option<(IpAddr, u16)> {
    (!e.addr.is_unspecified() && e.port != 0).then(|| (e.addr.ip(), e.port))
}

/// An endpoint recorded under a secret the tunnel no longer has (one
/// replaced without a rotation: compromised, revoked): whoever holds the old
/// secret must not keep the tunnel. `key_ids`: the tunnel's secrets now.
/// Entries from before key ids were recorded (0) cannot tell, and stay.
pub fn recorded_under_old_key(e: &Endpoint, key_ids: &[u64]) -> bool {
    known_endpoint(e).is_some() && e.key_id != 0 && !key_ids.contains(&e.key_id)
}

/// The change that makes the link match the recorded endpoint, if any:
/// address and port together, never one without the other.
pub fn repoint(link: LinkEndpoint, recorded: &Endpoint) -> Option<Repoint> {
    let (remote, dport) = known_endpoint(recorded)?;
    (link.remote != Some(remote) || link.dport != Some(dport)).then_some(Repoint { remote, dport })
}

/// What an accepted heartbeat asks of the tunnel's link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkPlan<'a> {
    /// Nothing recorded yet (a seeded entry after a reboot).
    NoEndpoint,
    /// The link points there already.
    AlreadyThere,
    /// Point the link there.
    Repoint(Repoint),
    /// The change would put the link on another tunnel's outer addresses,
    /// which the kernel's FoU receive cannot tell apart: refused.
    Collides { with: &'a str, change: Repoint },
}

/// Decides what the link needs. `others`: (name, local, remote) of every
/// other tunnel's link.
pub fn plan_link<'a>(
    link: LinkEndpoint,
    local: Option<IpAddr>,
    recorded: &Endpoint,
    others: &[(&'a str, Option<IpAddr>, Option<IpAddr>)],
) -> LinkPlan<'a> {
    if known_endpoint(recorded).is_none() {
        return LinkPlan::NoEndpoint;
    }
    let Some(change) = repoint(link, recorded) else { return LinkPlan::AlreadyThere };
    match blocking_tunnel(local, change.remote, others) {
        Some(with) => LinkPlan::Collides { with, change },
        None => LinkPlan::Repoint(change),
    }
}

/// An ACK means "the link now points at you": only when the link, as the
/// kernel has it after the change, points at the heartbeat's source.
pub fn may_ack(link_after: Option<LinkEndpoint>, source: (IpAddr, u16)) -> bool {
    link_after.is_some_and(|l| l.remote == Some(source.0) && l.dport == Some(source.1))
}

/// A CHALLENGE (a 40-byte payload) is never larger than what provoked it.
pub fn may_challenge(trigger_payload_len: u16) -> bool {
    usize::from(trigger_payload_len) >= MESSAGE_LEN
}

/// A token bucket: `rate` per second, bursts up to `rate`.
#[derive(Clone, Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last_ns: u64,
}

impl RateLimit {
    pub fn new(rate_per_s: u32, now_ns: u64) -> Self {
        RateLimit { rate: f64::from(rate_per_s), tokens: f64::from(rate_per_s), last_ns: now_ns }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = self.last_ns.max(now_ns);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-tunnel spacing: at most one per `interval_ns`.
pub fn spaced(last_ns: Option<u64>, now_ns: u64, interval_ns: u64) -> bool {
    last_ns.is_none_or(|last| now_ns.saturating_sub(last) >= interval_ns)
}

/// Tunnels the kernel cannot tell apart: FoU receive matches a tunnel by
/// outer addresses only, so two tunnels with the same local address whose
/// clients share a public address collide. Returns pairs of names.
pub fn collisions<'a>(tunnels: &[(&'a str, Option<IpAddr>, Option<IpAddr>)]) -> Vec<(&'a str, &'a str)> {
    let mut seen: HashMap<(Option<IpAddr>, IpAddr), &str> = HashMap::new();
    let mut out = Vec::new();
    for (name, local, remote) in tunnels {
        let Some(remote) = remote else { continue };
        if let Some(other) = seen.insert((*local, *remote), name) {
            out.push((other, *name));
        }
    }
    out
}

/// The tunnel whose link already has this local address and remote: the
/// kernel's FoU receive would not tell the two apart, so the change must not
/// be made. `others`: (name, local, remote) of every other tunnel.
pub fn blocking_tunnel<'a>(
    local: Option<IpAddr>,
    remote: IpAddr,
    others: &[(&'a str, Option<IpAddr>, Option<IpAddr>)],
) -> Option<&'a str> {
    others.iter().find(|(_, l, r)| *l == local && *r == Some(remote)).map(|(name, _, _)| *name)
}

/// How long a tunnel has gone without an accepted heartbeat, if that is at
/// least `timeout_ns`: counted from its latest heartbeat (`last_heard_ns`),
/// or from when the broker began serving it (`since_ns`) if that is later
/// or there was none. All on the broker's wall clock.
pub fn silent_for(last_heard_ns: Option<u64>, since_ns: u64, now_ns: u64, timeout_ns: u64) -> Option<u64> {
    let from = last_heard_ns.map_or(since_ns, |h| h.max(since_ns));
    let quiet = now_ns.saturating_sub(from);
    (quiet >= timeout_ns).then_some(quiet)
}

/// Ticks (one a second) over which the broker's sweep reads every link once.
pub const SWEEP_TICKS: u64 = 10;

/// Paces the broker's sweep, which catches what events missed and links
/// changed by hand: every link once every ten ticks, in turn, one at a
/// time between events (at 10,000 links a whole sweep took seconds in a
/// slow VM, and heartbeats waited behind it). A sweep that falls behind (a
/// slow machine, many links) stretches instead of piling up reads.
#[derive(Debug, Default)]
pub struct SweepPacer {
    /// The link read next, by table index.
    next: usize,
    /// Reads due now.
    due: usize,
}

impl SweepPacer {
    /// A tick: a tenth of the links is due (no more, however many are left).
    pub fn tick(&mut self, links: usize) {
        self.due = self.due.max(links.div_ceil(SWEEP_TICKS as usize));
    }

    /// Every link is due (events were lost).
    pub fn all(&mut self, links: usize) {
        self.due = self.due.max(links);
    }

    pub fn is_due(&self) -> bool {
        self.due > 0
    }

    /// The link to read now, if one is due; `links` may have changed since
    /// the tick (a reload).
    pub fn next(&mut self, links: usize) -> Option<usize> {
        if self.due == 0 || links == 0 {
            self.due = 0;
            return None;
        }
        self.due -= 1;
        let i = self.next % links;
        self.next = i + 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_under_a_secret_the_tunnel_no_longer_has_is_stale() {
        let e = Endpoint {
            addr: footunnel_ebpf::packet::mapped([203, 0, 113, 5]),
            port: 40001,
            key_id: 0xaa,
            heartbeats: 1,
            ..Default::default()
        };
        assert!(!recorded_under_old_key(&e, &[0xaa]));
        assert!(!recorded_under_old_key(&e, &[0xbb, 0xaa]), "the next secret of a rotation");
        assert!(recorded_under_old_key(&e, &[0xbb]), "a replaced secret keeps its holder");
        assert!(!recorded_under_old_key(&Endpoint { key_id: 0, ..e }, &[0xbb]), "no key recorded: cannot tell");
        assert!(!recorded_under_old_key(&Endpoint { port: 0, ..Endpoint::default() }, &[0xbb]), "no endpoint");
    }

    fn drain(pacer: &mut SweepPacer, links: usize) -> Vec<usize> {
        std::iter::from_fn(|| pacer.next(links)).collect()
    }

    #[test]
    fn the_sweep_reads_each_link_once_every_ten_ticks_in_turn() {
        for links in [0, 1, 9, 10, 11, 10_007] {
            let mut pacer = SweepPacer::default();
            for round in 0..3 {
                let mut seen = vec![0u32; links];
                for _ in 0..SWEEP_TICKS {
                    pacer.tick(links);
                    let share = drain(&mut pacer, links);
                    assert!(share.len() <= links.div_ceil(10), "{links} links: {} in one tick", share.len());
                    share.into_iter().for_each(|i| seen[i] += 1);
                }
                assert!(seen.iter().all(|&n| n >= 1), "{links} links, round {round}: one missed");
            }
        }
    }

    #[test]
    fn a_sweep_that_falls_behind_stretches_instead_of_piling_up() {
        let mut pacer = SweepPacer::default();
        for _ in 0..100 {
            pacer.tick(10_000);
        }
        assert_eq!(drain(&mut pacer, 10_000).len(), 1_000, "one tick's share, not a hundred");
        // Lost events: every link, once, from where the sweep was.
        pacer.all(10_000);
        let all = drain(&mut pacer, 10_000);
        assert_eq!(all.len(), 10_000);
        assert_eq!(all[0], 1_000);
        assert_eq!(all.iter().collect::<std::collections::HashSet<_>>().len(), 10_000);
        // A reload that left fewer links: indices stay in the table.
        pacer.tick(10_000);
        assert!(drain(&mut pacer, 7).iter().all(|&i| i < 7));
        assert_eq!(pacer.next(0), None);
        assert!(!pacer.is_due());
    }

    const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
    }

    fn endpoint(addr: [u8; 4], port: u16) -> Endpoint {
        Endpoint { addr: footunnel_ebpf::packet::mapped(addr), port, ..Default::default() }
    }

    const LINK: LinkEndpoint = LinkEndpoint { remote: Some(v4(203, 0, 113, 5)), dport: Some(40001) };

    #[test]
    fn repoint_only_when_address_or_port_differs() {
        assert_eq!(repoint(LINK, &endpoint([203, 0, 113, 5], 40001)), None);
        let by_port = repoint(LINK, &endpoint([203, 0, 113, 5], 40002)).unwrap();
        assert_eq!((by_port.remote, by_port.dport), (v4(203, 0, 113, 5), 40002));
        let by_addr = repoint(LINK, &endpoint([203, 0, 113, 6], 40001)).unwrap();
        assert_eq!((by_addr.remote, by_addr.dport), (v4(203, 0, 113, 6), 40001));
        assert_eq!(repoint(LINK, &endpoint([0; 4], 0)), None, "a seeded entry is no endpoint");
        let unset = LinkEndpoint { remote: None, dport: None };
        assert!(repoint(unset, &endpoint([203, 0, 113, 5], 40001)).is_some());
    }

    #[test]
    fn link_plan_refuses_collisions_and_knows_when_nothing_is_recorded() {
        let local = Some(v4(198, 51, 100, 1));
        let others = [("a", local, Some(v4(203, 0, 113, 7)))];
        assert_eq!(plan_link(LINK, local, &endpoint([0; 4], 0), &others), LinkPlan::NoEndpoint);
        assert_eq!(plan_link(LINK, local, &endpoint([203, 0, 113, 5], 40001), &others), LinkPlan::AlreadyThere);
        let change = Repoint { remote: v4(203, 0, 113, 7), dport: 1234 };
        assert_eq!(
            plan_link(LINK, local, &endpoint([203, 0, 113, 7], 1234), &others),
            LinkPlan::Collides { with: "a", change }
        );
        let other_local = Some(v4(198, 51, 100, 2));
        assert_eq!(plan_link(LINK, other_local, &endpoint([203, 0, 113, 7], 1234), &others), LinkPlan::Repoint(change));
    }

    #[test]
    fn an_ack_only_when_the_link_points_at_the_heartbeats_source() {
        let source = (v4(203, 0, 113, 5), 40001);
        assert!(may_ack(Some(LINK), source));
        assert!(!may_ack(None, source), "a failed or refused change is never ACKed");
        assert!(!may_ack(Some(LINK), (v4(203, 0, 113, 5), 40002)), "port differs");
        assert!(!may_ack(Some(LINK), (v4(203, 0, 113, 6), 40001)), "address differs");
        assert!(!may_ack(Some(LinkEndpoint { remote: None, dport: Some(40001) }), source));
    }

    #[test]
    fn challenges_are_no_larger_than_their_trigger() {
        assert!(!may_challenge(20));
        assert!(!may_challenge(39));
        assert!(may_challenge(40));
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let mut r = RateLimit::new(2, 0);
        assert!(r.allow(0) && r.allow(0));
        assert!(!r.allow(0));
        assert!(!r.allow(400_000_000));
        assert!(r.allow(500_000_000));
        assert!(r.allow(10_000_000_000) && r.allow(10_000_000_000) && !r.allow(10_000_000_000), "burst is capped");
    }

    #[test]
    fn spacing_per_tunnel() {
        assert!(spaced(None, 5, 1000));
        assert!(!spaced(Some(0), 999, 1000));
        assert!(spaced(Some(0), 1000, 1000));
    }

    #[test]
    fn a_change_onto_another_tunnels_outer_addresses_is_blocked() {
        let local = Some(v4(198, 51, 100, 1));
        let nat = v4(203, 0, 113, 7);
        let others = [("a", local, Some(nat)), ("b", Some(v4(198, 51, 100, 2)), Some(nat))];
        assert_eq!(blocking_tunnel(local, nat, &others), Some("a"));
        assert_eq!(blocking_tunnel(Some(v4(198, 51, 100, 3)), nat, &others), None);
        assert_eq!(blocking_tunnel(local, v4(203, 0, 113, 8), &others), None);
    }

    #[test]
    fn shared_public_address_on_one_local_address_collides() {
        let local = Some(v4(198, 51, 100, 1));
        let other_local = Some(v4(198, 51, 100, 2));
        let nat = Some(v4(203, 0, 113, 7));
        let t = [("a", local, nat), ("b", local, nat), ("c", other_local, nat), ("d", local, None)];
        assert_eq!(collisions(&t), vec![("a", "b")]);
    }

    #[test]
    fn silence_counts_from_the_latest_heartbeat_or_from_the_start() {
        const S: u64 = 1_000_000_000;
        assert_eq!(silent_for(Some(100 * S), 50 * S, 159 * S, 60 * S), None);
        assert_eq!(silent_for(Some(100 * S), 50 * S, 160 * S, 60 * S), Some(60 * S));
        // No heartbeat yet: a broker that just started does not call it silent at once.
        assert_eq!(silent_for(None, 50 * S, 80 * S, 60 * S), None);
        assert_eq!(silent_for(None, 50 * S, 111 * S, 60 * S), Some(61 * S));
        // A heartbeat from before a restart counts from the restart.
        assert_eq!(silent_for(Some(10 * S), 50 * S, 100 * S, 60 * S), None);
        // A clock stepped back is not silence.
        assert_eq!(silent_for(Some(100 * S), 50 * S, 90 * S, 60 * S), None);
    }
}
