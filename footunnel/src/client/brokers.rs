//! Which broker the client heartbeats to, when it has several: the first
//! in the order given that is not being avoided. A broker that leaves
//! [`FAILOVER_AFTER`] heartbeats unanswered is avoided for a hold time that
//! doubles with each failure in a row (30 s up to 10 min) and the client
//! moves to the next that is not. When every broker is avoided it stays
//! where it is (heartbeating with backoff) until a hold ends: no broker is
//! ever given up, and failing brokers are never alternated faster than
//! their holds allow (the endless loop tunneldigger's users hit).
//! The client returns to an earlier broker in the order once that one's
//! hold has ended and it answers a PROBE, which does not move the tunnel.
//! Pure: the caller re-points the link.

use std::net::IpAddr;

/// Unanswered heartbeats after which the client moves to the next broker.
pub const FAILOVER_AFTER: u32 = 3;
/// A failed broker is avoided this long after its first failure in a row…
pub const HOLD_NS: u64 = 30_000_000_000;
/// …doubling per failure in a row up to this.
pub const MAX_HOLD_NS: u64 = 600_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub addr: IpAddr,
    /// Failures in a row (reset by an ACK).
    failures: u32,
    /// Avoided until then (monotonic clock); 0: not avoided.
    avoid_until: u64,
    /// Counted as failed in this streak of unanswered heartbeats.
    marked: bool,
}

/// Why the client uses the broker it uses (`show`, the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The first in the order.
    First,
    /// Those before it in the order failed.
    Failover,
    /// It came back: an earlier broker answered again.
    Returned,
}

impl Why {
    pub fn describe(self) -> &'static str {
        match self {
            Why::First => "the first in the order",
            Why::Failover => "the brokers before it did not answer",
            Why::Returned => "it answers again, and comes first in the order",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Brokers {
    list: Vec<Candidate>,
    current: usize,
    why: Why,
}

impl Brokers {
    /// `addrs` in order of preference, none twice; at least one.
    pub fn new(addrs: &[IpAddr]) -> Self {
        let mut list: Vec<Candidate> = Vec::new();
        for a in addrs {
            if !list.iter().any(|c| c.addr == *a) {
                list.push(Candidate { addr: *a, failures: 0, avoid_until: 0, marked: false });
            }
        }
        assert!(!list.is_empty(), "at least one broker");
        Brokers { list, current: 0, why: Why::First }
    }

    pub fn current(&self) -> IpAddr {
        self.list[self.current].addr
    }

    pub fn why(&self) -> Why {
        self.why
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The broker, when there is just one: it is followed by name, and
    /// only its messages are read; several are taken as resolved at start.
    pub fn only(&self) -> Option<IpAddr> {
        (self.list.len() == 1).then(|| self.current())
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The current broker answered.
    pub fn acked(&mut self) {
        let c = &mut self.list[self.current];
        (c.failures, c.avoid_until, c.marked) = (0, 0, false);
    }

    /// `unanswered` heartbeats in a row: the broker to move to, if it is
    /// time to move (never with one broker, never to one being avoided).
    pub fn unanswered(&mut self, unanswered: u32, now: u64) -> Option<IpAddr> {
        if unanswered < FAILOVER_AFTER || self.list.len() < 2 {
            return None;
        }
        let c = &mut self.list[self.current];
        if !c.marked {
            c.marked = true;
            c.failures += 1;
            c.avoid_until = now + hold(c.failures);
        }
        let from = self.current;
        let next =
            (1..self.list.len()).map(|k| (from + k) % self.list.len()).find(|i| self.list[*i].avoid_until <= now)?;
        self.current = next;
        self.list[next].marked = false;
        self.why = Why::Failover;
        Some(self.current())
    }

    /// A broker earlier in the order than the current one whose hold has
    /// ended: worth a PROBE to see whether it is back.
    pub fn to_try(&self, now: u64) -> Option<IpAddr> {
        self.list[..self.current].iter().find(|c| c.avoid_until <= now).map(|c| c.addr)
    }

    /// `addr` (from [`Brokers::to_try`]) answered a PROBE: move back to it.
    pub fn returned(&mut self, addr: IpAddr) -> bool {
        match self.list[..self.current].iter().position(|c| c.addr == addr) {
            Some(i) => {
                self.current = i;
                (self.list[i].failures, self.list[i].marked) = (0, false);
                self.why = Why::Returned;
                true
            }
            None => false,
        }
    }

    /// `addr` did not answer the PROBE: avoided for another hold.
    pub fn still_gone(&mut self, addr: IpAddr, now: u64) {
        if let Some(c) = self.list.iter_mut().find(|c| c.addr == addr) {
            c.failures += 1;
            c.avoid_until = now + hold(c.failures);
        }
    }

    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.list.iter().map(|c| c.addr)
    }
}

/// How long a broker that failed `failures` times in a row is avoided.
fn hold(failures: u32) -> u64 {
    HOLD_NS.saturating_mul(1 << failures.saturating_sub(1).min(10)).min(MAX_HOLD_NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn addr(i: u8) -> IpAddr {
        IpAddr::from([198, 51, 100, i])
    }

    #[test]
    fn one_broker_is_never_left() {
        let mut b = Brokers::new(&[addr(1), addr(1)]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.unanswered(10, 0), None);
        assert_eq!(b.current(), addr(1));
    }

    #[test]
    fn a_silent_broker_is_left_after_three_heartbeats_and_avoided() {
        let mut b = Brokers::new(&[addr(1), addr(2), addr(3)]);
        assert_eq!(b.unanswered(2, 0), None);
        assert_eq!(b.unanswered(3, 0), Some(addr(2)));
        assert_eq!(b.why(), Why::Failover);
        // The second fails too: the third, not back to the first (avoided).
        assert_eq!(b.unanswered(3, S), Some(addr(3)));
        // All three failed: it stays, heartbeating, until a hold ends…
        assert_eq!(b.unanswered(3, 2 * S), None);
        assert_eq!(b.unanswered(4, 20 * S), None);
        // …then moves to the one whose hold ended.
        assert_eq!(b.unanswered(5, HOLD_NS), Some(addr(1)));
    }

    #[test]
    fn holds_double_so_two_dead_brokers_are_not_alternated_endlessly() {
        let mut b = Brokers::new(&[addr(1), addr(2)]);
        let mut now = 0;
        let mut moves = Vec::new();
        // Both dead: an unanswered heartbeat every second, for 10 minutes.
        let mut unanswered = 0;
        while now < 600 * S {
            unanswered += 1;
            if let Some(to) = b.unanswered(unanswered, now) {
                moves.push((now, to));
                unanswered = 0;
            }
            now += S;
        }
        // The client keeps trying both (never stuck on one)…
        assert!(moves.iter().any(|m| m.1 == addr(1)) && moves.iter().any(|m| m.1 == addr(2)));
        // …but no faster than their holds allow: after the first minute,
        // moves come minutes apart, not every 3 s.
        let late: Vec<_> = moves.iter().filter(|m| m.0 > 300 * S).collect();
        assert!(late.len() <= 3, "{} moves in the last 5 minutes: {moves:?}", late.len());
        assert!(moves.len() < 20, "{} moves in 10 minutes", moves.len());
    }

    #[test]
    fn an_ack_clears_the_failures_and_a_returned_broker_comes_first_again() {
        let mut b = Brokers::new(&[addr(1), addr(2)]);
        assert_eq!(b.unanswered(3, 0), Some(addr(2)));
        b.acked();
        assert_eq!(b.to_try(HOLD_NS - 1), None, "the first is still avoided");
        assert_eq!(b.to_try(HOLD_NS), Some(addr(1)));
        b.still_gone(addr(1), HOLD_NS);
        assert_eq!(b.to_try(2 * HOLD_NS), None, "a second failure holds it twice as long");
        assert_eq!(b.to_try(3 * HOLD_NS), Some(addr(1)));
        assert!(b.returned(addr(1)));
        assert_eq!((b.current(), b.why()), (addr(1), Why::Returned));
        assert_eq!(b.to_try(10 * HOLD_NS), None, "nothing comes before the first");
        assert!(!b.returned(addr(2)), "only an earlier broker is returned to");
    }
}
