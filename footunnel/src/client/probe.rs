//! Path MTU discovery (docs/protocol.md, PROBE): which PROBE sizes to send
//! and when, and what their PROBE_ACKs (or silence) say. Pure: the caller
//! sends, receives and sets the link's MTU. ICMP "fragmentation needed" is
//! not relied on: carrier NATs often drop it, so only what comes back counts.

use footunnel_ebpf::wire::{MESSAGE_LEN, Probe};

/// Waits between two PROBEs, so a search stays within the broker's budget
/// (10 a second, bursts of 10).
pub const SPACING_NS: u64 = 50_000_000;
/// A size that goes unanswered this often is taken not to pass.
pub const TRIES: u8 = 2;
/// Discovery runs again this long after it ended (a path can shrink
/// without a route change: a carrier's tunnel, a new NAT).
pub const REDISCOVER_NS: u64 = 600_000_000_000;
/// A PROBE_ACK counts only for a PROBE sent this recently.
pub const ECHO_WINDOW_NS: u64 = 5_000_000_000;

/// What discovery is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started (no ACK yet), or switched off.
    Idle,
    /// Looking for the largest size that passes.
    Searching,
    /// Telling the broker the MTU found (a 40-byte PROBE carrying it).
    Announcing { mtu: u16 },
    /// Done: the MTU, and what the broker applied (0: none or refused;
    /// `None`: it never answered the announcement).
    Done { mtu: u16, broker: Option<u16> },
    /// Not even the smallest size passed: the broker does not answer PROBEs
    /// (an older version), or the path is smaller than the tunnel may be.
    Failed,
}

/// A PROBE sent and not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlight {
    probe: Probe,
    timestamp_ns: u64,
    sent_ns: u64,
    tries: u8,
}

/// One discovery's state; times are the monotonic clock's, ns.
#[derive(Clone, Debug)]
pub struct Discovery {
    floor: u16,
    /// The largest size known to pass; `floor - 1`: none yet.
    good: u16,
    /// The smallest size known not to pass; `ceiling + 1` at first.
    bad: u16,
    in_flight: Option<InFlight>,
    phase: Phase,
    /// When the next PROBE may go.
    next_ns: u64,
    /// How long a PROBE is waited for.
    timeout_ns: u64,
    /// The first PROBE, of the largest size, has gone.
    tried_largest: bool,
}

/// What the caller must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this PROBE, then report it with [`Discovery::sent`].
    Send(Probe),
    /// The search found this MTU: set the link's MTU to it (then PROBEs
    /// announce it to the broker).
    SetMtu(u16),
    /// The search failed: no size passed.
    Failed,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            floor: 0,
            good: 0,
            bad: 0,
            in_flight: None,
            phase: Phase::Idle,
            next_ns: u64::MAX,
            timeout_ns: 0,
            tried_largest: false,
        }
    }
}

impl Discovery {
    /// Starts a search between `floor` and `ceiling` (inner sizes), the
    /// largest first: most paths carry it. `rtt_ns`: the last heartbeat's
    /// round trip, which sets how long a PROBE is waited for.
    pub fn start(&mut self, floor: u16, ceiling: u16, rtt_ns: u64, now: u64) {
        let floor = floor.max(MESSAGE_LEN as u16);
        *self = Discovery {
            floor,
            good: floor - 1,
            bad: ceiling.max(floor).saturating_add(1),
            in_flight: None,
            phase: Phase::Searching,
            next_ns: now,
            timeout_ns: (4 * rtt_ns).clamp(250_000_000, 2_000_000_000),
            tried_largest: false,
        };
    }

    /// Skips the search: `mtu` is set by hand, and only announced.
    pub fn announce(&mut self, mtu: u16, now: u64) {
        *self = Discovery { phase: Phase::Announcing { mtu }, next_ns: now, timeout_ns: 1_000_000_000, ..*self };
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// When [`Discovery::step`] has something to do (`u64::MAX`: nothing).
    pub fn next_ns(&self) -> u64 {
        match self.phase {
            Phase::Searching | Phase::Announcing { .. } => self.next_ns,
            Phase::Idle | Phase::Done { .. } | Phase::Failed => u64::MAX,
        }
    }

    /// What to do at `now`; `None`: nothing yet.
    pub fn step(&mut self, now: u64) -> Option<Step> {
        if now < self.next_ns() {
            return None;
        }
        if let Some(f) = self.in_flight {
            if f.tries < TRIES {
                return Some(self.send(f.probe, f.tries + 1, now));
            }
            self.in_flight = None;
            match self.phase {
                Phase::Announcing { mtu } => {
                    self.phase = Phase::Done { mtu, broker: None };
                    return None;
                }
                _ => self.bad = f.probe.len,
            }
        }
        match self.phase {
            Phase::Searching => {
                if self.bad - self.good <= 1 {
                    if self.good < self.floor {
                        self.phase = Phase::Failed;
                        return Some(Step::Failed);
                    }
                    return Some(Step::SetMtu(self.good));
                }
                // The largest first, then halves.
                let len = if self.tried_largest {
                    self.good + (self.bad - self.good) / 2
                } else {
                    self.tried_largest = true;
                    self.bad - 1
                };
                Some(self.send(Probe { len, mtu: 0 }, 1, now))
            }
            Phase::Announcing { mtu } => Some(self.send(Probe { len: MESSAGE_LEN as u16, mtu }, 1, now)),
            _ => None,
        }
    }

    fn send(&mut self, probe: Probe, tries: u8, now: u64) -> Step {
        self.in_flight = Some(InFlight { probe, timestamp_ns: 0, sent_ns: now, tries });
        self.next_ns = now.saturating_add(self.timeout_ns);
        Step::Send(probe)
    }

    /// The PROBE of the last [`Step::Send`] left, stamped `timestamp_ns`.
    pub fn sent(&mut self, timestamp_ns: u64) {
        if let Some(f) = &mut self.in_flight {
            f.timestamp_ns = timestamp_ns;
        }
    }

    /// The link's MTU is now `mtu` (after [`Step::SetMtu`]): tell the broker.
    pub fn mtu_set(&mut self, mtu: u16, now: u64) {
        self.announce(mtu, now);
    }

    /// A verified PROBE_ACK echoing `echo_ns`, `probe` as it says. True if
    /// it answered the PROBE in flight.
    pub fn acked(&mut self, echo_ns: u64, probe: Probe, now: u64) -> bool {
        let Some(f) = self.in_flight else { return false };
        if f.timestamp_ns != echo_ns || f.probe.len != probe.len || now.saturating_sub(f.sent_ns) > ECHO_WINDOW_NS {
            return false;
        }
        self.in_flight = None;
        self.next_ns = now.saturating_add(SPACING_NS);
        match self.phase {
            Phase::Searching => {
                self.good = self.good.max(probe.len);
                if self.bad - self.good <= 1 {
                    self.next_ns = now; // found: no spacing before the result
                }
            }
            Phase::Announcing { mtu } => self.phase = Phase::Done { mtu, broker: Some(probe.mtu) },
            _ => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs a discovery against a path that carries sizes up to `path`
    /// (and drops `lost` PROBEs of the sizes listed, once each); returns
    /// the MTU it found, the PROBEs it sent, and how long it took.
    fn discover(floor: u16, ceiling: u16, path: u16, mut lost: Vec<u16>) -> (Option<u16>, Vec<u16>, u64) {
        let mut d = Discovery::default();
        let mut now = 1_000 * MS;
        let start = now;
        d.start(floor, ceiling, 2 * MS, now);
        let mut sent = Vec::new();
        for ts in 1.. {
            assert!(ts < 100, "no end: {sent:?}");
            match d.step(now) {
                None => now = d.next_ns().min(now + 1_000 * MS),
                Some(Step::Send(p)) => {
                    sent.push(p.len);
                    d.sent(ts);
                    let dropped = lost.iter().position(|l| *l == p.len).map(|i| lost.remove(i)).is_some();
                    if p.len <= path && !dropped {
                        now += 2 * MS;
                        assert!(d.acked(ts, Probe { len: p.len, mtu: 0 }, now));
                    }
                }
                Some(Step::SetMtu(mtu)) => return (Some(mtu), sent, now - start),
                Some(Step::Failed) => return (None, sent, now - start),
            }
        }
        unreachable!()
    }

    #[test]
    fn a_full_size_path_takes_one_probe() {
        let (mtu, sent, took) = discover(576, 1472, 1472, vec![]);
        assert_eq!((mtu, sent), (Some(1472), vec![1472]));
        assert!(took < 10 * MS, "{took}");
    }

    #[test]
    fn pppoe_and_smaller_paths_are_found_exactly_within_a_few_seconds() {
        // Each size too large costs two timeouts of 250 ms: paths near the
        // top of the range (PPPoE, DS-Lite, LTE) take a few seconds, the
        // smallest possible one twice that.
        for (path, floor, secs) in [(1464, 576, 3), (1424, 576, 3), (1444, 1280, 3), (1300, 1280, 4), (576, 576, 6)] {
            let (mtu, sent, took) = discover(floor, 1472, path, vec![]);
            assert_eq!(mtu, Some(path), "path {path}: {sent:?}");
            assert!(sent.len() <= 2 * 12, "path {path}: {sent:?}");
            assert!(took < secs * 1_000 * MS, "path {path}: {} ms, {sent:?}", took / MS);
            assert!(sent.iter().all(|l| (floor..=1472).contains(l)), "never outside the bounds: {sent:?}");
        }
    }

    #[test]
    fn a_lost_probe_is_sent_again_before_its_size_counts_as_too_large() {
        let (mtu, sent, _) = discover(576, 1472, 1464, vec![1472, 1023]);
        assert_eq!(mtu, Some(1464), "{sent:?}");
        assert_eq!(sent.iter().filter(|l| **l == 1023).count(), 2, "{sent:?}");
    }

    #[test]
    fn a_path_below_the_floor_or_a_broker_that_never_answers_fails() {
        let (mtu, sent, _) = discover(1280, 1472, 1200, vec![]);
        assert_eq!(mtu, None, "{sent:?}");
        assert!(sent.contains(&1280) && sent.iter().all(|l| *l >= 1280), "{sent:?}");
    }

    #[test]
    fn an_echo_that_matches_no_probe_in_flight_is_ignored() {
        let mut d = Discovery::default();
        d.start(576, 1472, 0, 0);
        assert_eq!(d.step(0), Some(Step::Send(Probe { len: 1472, mtu: 0 })));
        d.sent(77);
        assert!(!d.acked(76, Probe { len: 1472, mtu: 0 }, MS), "another timestamp");
        assert!(!d.acked(77, Probe { len: 1400, mtu: 0 }, MS), "another length");
        assert!(!d.acked(77, Probe { len: 1472, mtu: 0 }, ECHO_WINDOW_NS + MS), "too late");
        assert!(d.acked(77, Probe { len: 1472, mtu: 0 }, MS));
        assert!(!d.acked(77, Probe { len: 1472, mtu: 0 }, 2 * MS), "answered once");
    }

    #[test]
    fn the_mtu_found_is_announced_and_the_brokers_answer_kept() {
        let mut d = Discovery::default();
        d.mtu_set(1464, 0);
        assert_eq!(d.step(0), Some(Step::Send(Probe { len: 40, mtu: 1464 })));
        d.sent(5);
        assert!(d.acked(5, Probe { len: 40, mtu: 1464 }, MS));
        assert_eq!(d.phase(), Phase::Done { mtu: 1464, broker: Some(1464) });
        assert_eq!(d.next_ns(), u64::MAX);
        // Unanswered: done all the same, the broker's view unknown.
        d.mtu_set(1400, 0);
        let mut now = 0;
        while d.phase() != (Phase::Done { mtu: 1400, broker: None }) {
            assert!(now < 10_000 * MS);
            if let Some(Step::Send(_)) = d.step(now) {
                d.sent(now);
            }
            now += 100 * MS;
        }
    }
}
