//! When the client sends its next heartbeat: every interval once
//! acknowledged, sooner with backoff while unacknowledged, at once on a
//! challenge, shortly after a local network change. Pure.

use std::time::Duration;

/// Wait after a network change, so a burst of netlink events sends one heartbeat.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// Heartbeats that network changes trigger are at least this far apart.
pub const MIN_CHANGE_SPACING: Duration = Duration::from_secs(1);
/// First retry when no ACK came.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct Schedule {
    interval_ns: u64,
    retry_ns: u64,
    awaiting_ack: bool,
    last_sent_ns: Option<u64>,
    next_ns: u64,
    /// The newest accepted challenge's nonce, echoed until acknowledged.
    nonce: [u8; 8],
    /// Heartbeats sent since the last ACK.
    unanswered: u32,
}

impl Schedule {
    /// The first heartbeat goes out at once.
    pub fn new(interval: Duration, now_ns: u64) -> Self {
        Schedule {
            interval_ns: interval.as_nanos() as u64,
            retry_ns: FIRST_RETRY.as_nanos() as u64,
            awaiting_ack: false,
            last_sent_ns: None,
            next_ns: now_ns,
            nonce: [0; 8],
            unanswered: 0,
        }
    }

    pub fn next_ns(&self) -> u64 {
        self.next_ns
    }

    pub fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns
    }

    /// The nonce the next heartbeat carries.
    /// Heartbeats sent since the last ACK.
    pub fn unanswered(&self) -> u32 {
        self.unanswered
    }

    pub fn nonce(&self) -> [u8; 8] {
        self.nonce
    }

    /// A heartbeat went out: retry with backoff until an ACK arrives.
    pub fn sent(&mut self, now_ns: u64) {
        if self.awaiting_ack {
            self.retry_ns = (self.retry_ns * 2).min(self.interval_ns);
        } else {
            self.retry_ns = (FIRST_RETRY.as_nanos() as u64).min(self.interval_ns);
        }
        self.awaiting_ack = true;
        self.unanswered += 1;
        self.last_sent_ns = Some(now_ns);
        self.next_ns = now_ns + self.retry_ns;
    }

    /// An ACK: the next heartbeat is one interval after the last one sent.
    /// Returns the round-trip time if a heartbeat was outstanding.
    pub fn acked(&mut self, now_ns: u64) -> Option<Duration> {
        let rtt = self
            .awaiting_ack
            .then(|| self.last_sent_ns.map(|s| Duration::from_nanos(now_ns.saturating_sub(s))))
            .flatten();
        self.awaiting_ack = false;
        self.unanswered = 0;
        self.nonce = [0; 8];
        self.next_ns = self.last_sent_ns.unwrap_or(now_ns) + self.interval_ns;
        rtt
    }

    /// A verified challenge: answer at once, echoing its nonce.
    pub fn challenged(&mut self, now_ns: u64, nonce: [u8; 8]) {
        self.nonce = nonce;
        self.awaiting_ack = false;
        self.next_ns = now_ns;
    }

    /// A verified TIME corrected this host's clock: heartbeat again at once,
    /// on the broker's time (the broker sends at most one TIME a second).
    pub fn corrected(&mut self, now_ns: u64) {
        self.next_ns = now_ns;
    }

    /// Another broker: its heartbeats start unanswered from none, at once.
    pub fn moved(&mut self, now_ns: u64) {
        self.unanswered = 0;
        self.network_changed(now_ns);
    }

    /// Addresses, routes or links changed here: send soon.
    pub fn network_changed(&mut self, now_ns: u64) {
        self.awaiting_ack = false;
        let earliest = self.last_sent_ns.map_or(0, |s| s + MIN_CHANGE_SPACING.as_nanos() as u64);
        self.next_ns = self.next_ns.min((now_ns + DEBOUNCE.as_nanos() as u64).max(earliest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn unacknowledged_heartbeats_back_off_up_to_the_interval() {
        let mut s = Schedule::new(Duration::from_secs(10), 0);
        assert!(s.due(0));
        let mut at = 0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            s.sent(at);
            gaps.push((s.next_ns() - at) / S);
            at = s.next_ns();
        }
        assert_eq!(gaps, vec![1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn an_ack_sets_the_next_heartbeat_one_interval_after_the_last() {
        let mut s = Schedule::new(Duration::from_secs(10), 0);
        s.sent(5 * S);
        assert_eq!(s.acked(5 * S + 30_000_000), Some(Duration::from_millis(30)));
        assert_eq!(s.next_ns(), 15 * S);
        assert_eq!(s.acked(6 * S), None, "a second ACK measures nothing");
        s.sent(15 * S);
        assert_eq!(s.next_ns(), 16 * S, "retry starts at one second again");
    }

    #[test]
    fn a_challenge_is_answered_at_once_with_its_nonce_until_acknowledged() {
        let mut s = Schedule::new(Duration::from_secs(10), 0);
        s.sent(0);
        s.acked(S / 10);
        s.challenged(3 * S, [9; 8]);
        assert!(s.due(3 * S));
        assert_eq!(s.nonce(), [9; 8]);
        s.sent(3 * S);
        assert_eq!(s.nonce(), [9; 8], "kept for retries");
        s.acked(3 * S + 1);
        assert_eq!(s.nonce(), [0; 8]);
    }

    #[test]
    fn network_changes_are_debounced() {
        let mut s = Schedule::new(Duration::from_secs(10), 0);
        s.sent(0);
        s.acked(1);
        s.network_changed(2 * S);
        s.network_changed(2 * S + 50_000_000);
        let debounce = DEBOUNCE.as_nanos() as u64;
        assert_eq!(s.next_ns(), 2 * S + debounce, "the burst's first change sets the time");
        assert!(!s.due(2 * S + debounce - 1));
        assert!(s.due(2 * S + debounce));
    }

    #[test]
    fn unanswered_heartbeats_are_counted_until_an_ack() {
        let mut s = Schedule::new(Duration::from_secs(10), 0);
        for i in 0..4 {
            s.sent(i * S);
        }
        assert_eq!(s.unanswered(), 4);
        s.acked(5 * S);
        assert_eq!(s.unanswered(), 0);
    }

    #[test]
    fn change_triggered_heartbeats_are_a_second_apart() {
        let mut s = Schedule::new(Duration::from_secs(10), 0);
        s.sent(0);
        s.acked(S / 10);
        // Container churn: a change every 50 ms right after a heartbeat.
        s.network_changed(S / 10);
        assert_eq!(s.next_ns(), S, "not before a second after the last heartbeat");
        s.sent(S);
        s.acked(S + S / 10);
        for i in 0..20 {
            s.network_changed(S + S / 10 + i * 50_000_000);
        }
        assert_eq!(s.next_ns(), 2 * S, "twenty changes in a second: one heartbeat, a second later");
        // Long after the last heartbeat the debounce alone applies.
        s.sent(2 * S);
        s.acked(2 * S);
        s.network_changed(7 * S);
        assert_eq!(s.next_ns(), 7 * S + DEBOUNCE.as_nanos() as u64);
    }
}
