//! The clock the client stamps heartbeats and checks the broker's messages
//! with: its own, or corrected by the broker's authenticated TIME when its
//! own is wrong (a router without a real-time clock, before NTP answers;
//! docs/protocol.md, TIME). Pure: the caller passes the clocks in.

use std::collections::VecDeque;

/// A TIME must echo a heartbeat sent at most this long ago.
pub const ECHO_WINDOW_NS: u64 = 30_000_000_000;
/// Offsets this small are the clocks agreeing: none is applied, and one in
/// use is dropped.
pub const AGREEMENT_NS: u64 = 1_000_000_000;
/// No clock is this wrong; a TIME saying so is refused.
pub const MAX_OFFSET_NS: i128 = 10 * 366 * 86_400 * 1_000_000_000;
/// Heartbeats remembered for echoes (more than 30 s of the shortest interval is not needed).
const REMEMBERED: usize = 64;

#[derive(Debug, Default)]
pub struct Clock {
    /// Broker's clock − ours, in ns; 0 while ours is trusted.
    offset_ns: i64,
    /// (timestamp, monotonic send time) of recent heartbeats, oldest first.
    sent: VecDeque<(u64, u64)>,
}

/// Why a verified TIME changed nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum TimeIgnored {
    /// Its echo is no heartbeat sent in the last 30 s (a replay, or a late answer).
    UnknownEcho,
    /// The broker's clock agrees with ours (a duplicated heartbeat drew it).
    Agrees,
    /// An offset of years: the broker's clock is what is wrong.
    Insane(i128),
}

impl Clock {
    /// The time to stamp and check with: `local_ns` (CLOCK_REALTIME) corrected.
    pub fn now(&self, local_ns: u64) -> u64 {
        local_ns.saturating_add_signed(self.offset_ns)
    }

    /// Broker's clock − ours, while a correction is in use.
    pub fn offset_ns(&self) -> Option<i64> {
        (self.offset_ns != 0).then_some(self.offset_ns)
    }

    /// A heartbeat stamped `timestamp_ns` left at `mono_ns`.
    pub fn sent(&mut self, timestamp_ns: u64, mono_ns: u64) {
        if self.sent.len() == REMEMBERED {
            self.sent.pop_front();
        }
        self.sent.push_back((timestamp_ns, mono_ns));
    }

    /// A TIME whose tag and increasing timestamp are already checked: the
    /// broker's clock `broker_ns` when it answered the heartbeat stamped
    /// `echo_ns`. The new offset, or why it changed nothing.
    pub fn correct(&mut self, broker_ns: u64, echo_ns: u64, local_ns: u64, mono_ns: u64) -> Result<i64, TimeIgnored> {
        let Some(&(_, sent_mono)) =
            self.sent.iter().find(|(ts, mono)| *ts == echo_ns && mono_ns.saturating_sub(*mono) <= ECHO_WINDOW_NS)
        else {
            return Err(TimeIgnored::UnknownEcho);
        };
        // The broker read its clock about half a round trip after we sent.
        let half_rtt = mono_ns.saturating_sub(sent_mono) / 2;
        let offset = broker_ns as i128 + half_rtt as i128 - local_ns as i128;
        if offset.abs() > MAX_OFFSET_NS {
            return Err(TimeIgnored::Insane(offset));
        }
        if offset.unsigned_abs() < AGREEMENT_NS as u128 {
            return Err(TimeIgnored::Agrees);
        }
        self.offset_ns = offset as i64;
        // Echoes of heartbeats stamped on the old clock are answered already.
        self.sent.clear();
        Ok(self.offset_ns)
    }

    /// An accepted message stamped `broker_ns` by the broker: once our own
    /// clock agrees with it (NTP has answered), the correction is dropped.
    /// True if it was.
    pub fn heard(&mut self, broker_ns: u64, local_ns: u64) -> bool {
        if self.offset_ns != 0 && broker_ns.abs_diff(local_ns) < AGREEMENT_NS {
            self.offset_ns = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: u64 = 1_600_000_000_000_000_000;
    const DAY: u64 = 86_400_000_000_000;
    const MS: u64 = 1_000_000;

    #[test]
    fn a_time_echoing_a_recent_heartbeat_sets_the_offset_half_a_round_trip_later() {
        let mut clock = Clock::default();
        clock.sent(LOCAL, 5_000 * MS);
        let broker = LOCAL + 2 * DAY;
        // Answered 40 ms after it was sent, read while our clock said LOCAL + 40 ms.
        let offset = clock.correct(broker, LOCAL, LOCAL + 40 * MS, 5_040 * MS).unwrap();
        assert_eq!(offset, (2 * DAY + 20 * MS - 40 * MS) as i64);
        assert_eq!(clock.now(LOCAL + 40 * MS), broker + 20 * MS);
        assert_eq!(clock.offset_ns(), Some(offset));
    }

    #[test]
    fn a_clock_days_ahead_is_corrected_backwards() {
        let mut clock = Clock::default();
        clock.sent(LOCAL, 0);
        let offset = clock.correct(LOCAL - 3 * DAY, LOCAL, LOCAL, 10 * MS).unwrap();
        assert!(offset < 0);
        assert!(clock.now(LOCAL).abs_diff(LOCAL - 3 * DAY) < 10 * MS);
    }

    #[test]
    fn a_replayed_unknown_or_late_echo_changes_nothing() {
        let mut clock = Clock::default();
        clock.sent(LOCAL, 0);
        // An echo of something never sent.
        assert_eq!(clock.correct(LOCAL + DAY, LOCAL + 1, LOCAL, MS), Err(TimeIgnored::UnknownEcho));
        // An echo of a heartbeat sent more than 30 s ago.
        assert_eq!(clock.correct(LOCAL + DAY, LOCAL, LOCAL, ECHO_WINDOW_NS + 1), Err(TimeIgnored::UnknownEcho));
        assert_eq!(clock.offset_ns(), None);
        // Accepted once; the same TIME again finds its echo used up.
        clock.correct(LOCAL + DAY, LOCAL, LOCAL, MS).unwrap();
        let before = clock.offset_ns();
        assert_eq!(clock.correct(LOCAL + 5 * DAY, LOCAL, LOCAL, 2 * MS), Err(TimeIgnored::UnknownEcho));
        assert_eq!(clock.offset_ns(), before);
    }

    #[test]
    fn offsets_of_years_and_of_less_than_a_second_are_not_applied() {
        let mut clock = Clock::default();
        clock.sent(LOCAL, 0);
        let years = LOCAL + 11 * 366 * DAY;
        assert!(matches!(clock.correct(years, LOCAL, LOCAL, MS), Err(TimeIgnored::Insane(_))));
        assert_eq!(clock.correct(LOCAL + 300 * MS, LOCAL, LOCAL, MS), Err(TimeIgnored::Agrees));
        assert_eq!(clock.offset_ns(), None);
    }

    #[test]
    fn the_offset_is_dropped_once_our_own_clock_agrees() {
        let mut clock = Clock::default();
        clock.sent(LOCAL, 0);
        clock.correct(LOCAL + DAY, LOCAL, LOCAL, MS).unwrap();
        // The broker's ACKs still disagree with our own clock: kept.
        assert!(!clock.heard(LOCAL + DAY + MS, LOCAL + MS));
        assert!(clock.offset_ns().is_some());
        // NTP stepped our clock: it agrees, and the correction goes.
        assert!(clock.heard(LOCAL + DAY + 2 * MS, LOCAL + DAY));
        assert_eq!((clock.offset_ns(), clock.now(LOCAL)), (None, LOCAL));
    }

    #[test]
    fn only_recent_heartbeats_are_remembered() {
        let mut clock = Clock::default();
        for i in 0..(REMEMBERED as u64 + 10) {
            clock.sent(LOCAL + i, i * MS);
        }
        assert_eq!(clock.sent.len(), REMEMBERED);
        assert_eq!(clock.correct(LOCAL + DAY, LOCAL, LOCAL, 100 * MS), Err(TimeIgnored::UnknownEcho));
    }
}
