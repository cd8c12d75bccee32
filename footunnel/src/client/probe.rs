//! Path MTU discovery (docs/protocol.md, PROBE): which PROBE sizes to send
//! and when, and what their PROBE_ACKs (or silence) say. Pure: the caller
//! sends, receives and sets the link's MTU. ICMP "fragmentation needed" is
//! not relied on: carrier NATs often drop it, so only what comes back counts.
//!
//! The search goes in rounds of up to [`ROUND`] sizes sent at once, spread
//! over what is still unknown, the largest possible among them: a round
//! costs one timeout (or one round trip when every PROBE comes back), so a
//! 900-byte range takes three or four rounds, not a dozen timeouts one after
//! another. A size smaller than one that passed is known to pass, so a lost
//! PROBE matters only just above the boundary, and there a size counts as
//! too large only once it went unanswered in [`TRIES`] rounds.

use footunnel_ebpf::{
    maps::PROBE_INTERVAL_NS,
    wire::{MESSAGE_LEN, Probe},
};

/// Sizes probed at once. Within the broker's budget (`PROBE_BURST`) with
/// room to spare; rounds start at least [`ROUND_SPACING_NS`] apart, so the
/// budget refills between them.
pub const ROUND: usize = 8;
pub const ROUND_SPACING_NS: u64 = ROUND as u64 * PROBE_INTERVAL_NS;
/// A size that goes unanswered this often is taken not to pass.
pub const TRIES: u8 = 2;
/// Discovery runs again this long after it ended (a path can shrink
/// without a route change: a carrier's tunnel, a new NAT).
pub const REDISCOVER_NS: u64 = 600_000_000_000;
/// A PROBE_ACK counts only for a PROBE sent this recently.
pub const ECHO_WINDOW_NS: u64 = 5_000_000_000;
/// How long a round (or the announcement) waits for answers: four round
/// trips, within these bounds.
const MIN_TIMEOUT_NS: u64 = 250_000_000;
const MAX_TIMEOUT_NS: u64 = 2_000_000_000;
const ANNOUNCE_TIMEOUT_NS: u64 = 1_000_000_000;

/// What discovery is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Not started (no ACK yet), or switched off.
    #[default]
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

/// A PROBE of this round: planned, or sent at `sent_ns` stamped `timestamp_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    probe: Probe,
    timestamp_ns: u64,
    sent_ns: u64,
    answered: bool,
}

/// One discovery's state; times are the monotonic clock's, ns.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    floor: u16,
    ceiling: u16,
    /// The largest size known to pass; `floor - 1`: none yet.
    good: u16,
    /// Sizes above `good` that went unanswered, and in how many rounds;
    /// ascending. The first is the boundary's upper side.
    unanswered: Vec<(u16, u8)>,
    /// This round's PROBEs, and how many of them have gone.
    round: Vec<Sent>,
    gone: usize,
    round_started_ns: u64,
    /// The slowest answer of this round: it sets the next round's timeout.
    round_rtt_ns: u64,
    /// The announcement's PROBEs so far.
    announce_tries: u8,
    phase: Phase,
    /// When [`Discovery::step`] has something to do.
    next_ns: u64,
    timeout_ns: u64,
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

impl Discovery {
    /// Starts a search between `floor` and `ceiling` (inner sizes).
    /// `rtt_ns`: the last heartbeat's round trip, which sets how long the
    /// first round waits (later rounds: the PROBEs' own round trips).
    pub fn start(&mut self, floor: u16, ceiling: u16, rtt_ns: u64, now: u64) {
        let floor = floor.max(MESSAGE_LEN as u16);
        *self = Discovery {
            floor,
            ceiling: ceiling.max(floor),
            good: floor - 1,
            phase: Phase::Searching,
            timeout_ns: timeout(rtt_ns),
            ..Discovery::default()
        };
        self.plan(now);
    }

    /// Skips the search: `mtu` is set by hand, and only announced.
    pub fn announce(&mut self, mtu: u16, now: u64) {
        self.phase = Phase::Announcing { mtu };
        self.round = vec![planned(Probe { len: MESSAGE_LEN as u16, mtu })];
        (self.gone, self.announce_tries, self.next_ns, self.timeout_ns) = (0, 0, now, ANNOUNCE_TIMEOUT_NS);
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
        if self.gone < self.round.len() {
            let probe = self.round[self.gone].probe;
            self.round[self.gone].sent_ns = now;
            self.gone += 1;
            // The rest of the round goes at once; then its answers are waited for.
            self.next_ns = if self.gone < self.round.len() { now } else { now.saturating_add(self.timeout_ns) };
            return Some(Step::Send(probe));
        }
        match self.phase {
            Phase::Searching => self.end_round(now),
            Phase::Announcing { mtu } => {
                self.announce_tries += 1;
                if self.announce_tries >= TRIES {
                    self.phase = Phase::Done { mtu, broker: None };
                } else {
                    self.gone = 0;
                    self.next_ns = now;
                }
                None
            }
            _ => None,
        }
    }

    /// The PROBE of the last [`Step::Send`] left, stamped `timestamp_ns`.
    pub fn sent(&mut self, timestamp_ns: u64) {
        if let Some(s) = self.gone.checked_sub(1).and_then(|i| self.round.get_mut(i)) {
            s.timestamp_ns = timestamp_ns;
        }
    }

    /// The link's MTU is now `mtu` (after [`Step::SetMtu`]): tell the broker.
    pub fn mtu_set(&mut self, mtu: u16, now: u64) {
        self.announce(mtu, now);
    }

    /// A verified PROBE_ACK echoing `echo_ns`, `probe` as it says. True if
    /// it answered a PROBE of this round, once.
    pub fn acked(&mut self, echo_ns: u64, probe: Probe, now: u64) -> bool {
        let Some(s) = self.round[..self.gone].iter_mut().find(|s| {
            !s.answered
                && s.timestamp_ns == echo_ns
                && s.probe.len == probe.len
                && now.saturating_sub(s.sent_ns) <= ECHO_WINDOW_NS
        }) else {
            return false;
        };
        s.answered = true;
        let rtt_ns = now.saturating_sub(s.sent_ns);
        match self.phase {
            Phase::Searching => {
                self.good = self.good.max(probe.len);
                self.round_rtt_ns = self.round_rtt_ns.max(rtt_ns);
                if self.gone == self.round.len() && self.round.iter().all(|s| s.answered) {
                    self.next_ns = now; // nothing left to wait for
                }
            }
            Phase::Announcing { mtu } => self.phase = Phase::Done { mtu, broker: Some(probe.mtu) },
            _ => {}
        }
        true
    }

    /// The round's answers are in (or will not come): what they say, then
    /// the result or the next round.
    fn end_round(&mut self, now: u64) -> Option<Step> {
        for s in self.round.iter().filter(|s| !s.answered) {
            match self.unanswered.binary_search_by_key(&s.probe.len, |(len, _)| *len) {
                Ok(i) => self.unanswered[i].1 += 1,
                Err(i) => self.unanswered.insert(i, (s.probe.len, 1)),
            }
        }
        if self.round.iter().any(|s| s.answered) {
            self.timeout_ns = timeout(self.round_rtt_ns);
        }
        let good = self.good;
        self.unanswered.retain(|(len, _)| *len > good);
        let (bad, tries) = self.boundary();
        if bad - self.good <= 1 && tries >= TRIES {
            if self.good < self.floor {
                self.phase = Phase::Failed;
                return Some(Step::Failed);
            }
            self.round.clear();
            return Some(Step::SetMtu(self.good));
        }
        self.plan(now.max(self.round_started_ns.saturating_add(ROUND_SPACING_NS)));
        None
    }

    /// The smallest size not known to pass, and in how many rounds it went
    /// unanswered (above the ceiling: known).
    fn boundary(&self) -> (u16, u8) {
        self.unanswered.first().copied().unwrap_or((self.ceiling + 1, TRIES))
    }

    /// The next round, from `at`: the boundary again if it was unanswered
    /// only once, and sizes spread up to just below it.
    fn plan(&mut self, at: u64) {
        let (bad, tries) = self.boundary();
        let mut sizes = Vec::with_capacity(ROUND);
        if tries < TRIES {
            sizes.push(bad);
        }
        let room = (ROUND - sizes.len()) as u32;
        let (good, top) = (u32::from(self.good), u32::from(bad) - 1);
        if top - good <= room {
            sizes.extend(good as u16 + 1..=top as u16);
        } else {
            sizes.extend((1..=room).map(|i| (good + (top - good) * i / room) as u16));
        }
        // The largest first: on most paths it is the answer.
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        self.round = sizes.into_iter().map(|len| planned(Probe { len, mtu: 0 })).collect();
        (self.gone, self.round_started_ns, self.round_rtt_ns, self.next_ns) = (0, at, 0, at);
    }
}

fn planned(probe: Probe) -> Sent {
    Sent { probe, timestamp_ns: 0, sent_ns: 0, answered: false }
}

fn timeout(rtt_ns: u64) -> u64 {
    rtt_ns.saturating_mul(4).clamp(MIN_TIMEOUT_NS, MAX_TIMEOUT_NS)
}

#[cfg(test)]
#[path = "probe_tests.rs"]
mod tests;
