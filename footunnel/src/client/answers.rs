//! What a verified message from the broker changes: the schedule, what
//! `show` reports, the clock correction. No effects beyond the log.

use tracing::{debug, info, warn};

use super::{ClientState, FromBroker, UNANSWERED_WARNING, clock, schedule::Schedule};

/// `now`: this host's wall time (uncorrected); `mono`: the schedule's clock.
/// True if a TIME corrected the clock.
pub(super) fn handle_message(
    msg: &FromBroker,
    now: u64,
    mono: u64,
    schedule: &mut Schedule,
    state: &mut ClientState,
    clock: &mut clock::Clock,
) -> bool {
    if !matches!(msg, FromBroker::Time { .. } | FromBroker::ProbeAck { .. }) && clock.heard(msg.timestamp_ns(), now) {
        info!("this host's clock agrees with the broker's again: heartbeats use it");
        state.clock_offset_ns = None;
    }
    match *msg {
        FromBroker::Time { timestamp_ns, echo_ns } => {
            let corrected = time(clock.correct(timestamp_ns, echo_ns, now, mono), schedule, mono);
            state.clock_offset_ns = clock.offset_ns();
            return corrected;
        }
        FromBroker::Ack { seen, .. } => {
            if schedule.unanswered() >= UNANSWERED_WARNING {
                info!("the broker answers again (after {} unanswered heartbeats)", schedule.unanswered());
            }
            let seen = seen.to_string();
            let rtt = schedule.acked(mono);
            if state.public_endpoint.as_deref() != Some(seen.as_str()) {
                info!("the broker sees this end at {seen}");
            }
            if let Some(rtt) = rtt {
                debug!("ACK after {rtt:?}");
                state.rtt_us = Some(rtt.as_micros() as u64);
            }
            state.public_endpoint = Some(seen);
            state.last_ack_ns = Some(now);
            state.acks += 1;
        }
        FromBroker::Challenge { nonce, .. } => {
            info!("challenged by the broker (our traffic arrives from a new source): answering");
            schedule.challenged(mono, nonce);
            state.challenges += 1;
        }
        FromBroker::ProbeAck { .. } => {}
    }
    false
}

/// What the broker's answer to the MTU announcement says.
pub(super) fn broker_applied(mtu: u16, applied: u16) {
    match applied {
        0 => warn!(
            "the broker did not apply MTU {mtu} to its end of the tunnel (its log says why): large packets from \
             it may be dropped"
        ),
        m if m == mtu => info!("the broker set its end of the tunnel to MTU {mtu}"),
        m => warn!("the broker set its end of the tunnel to MTU {m}, not {mtu}"),
    }
}

/// What a verified TIME did to the clock.
fn time(outcome: Result<i64, clock::TimeIgnored>, schedule: &mut Schedule, mono: u64) -> bool {
    match outcome {
        Ok(offset) => {
            warn!(
                "the broker refused a heartbeat as stale: this host's clock {} the broker's. Heartbeats use the \
                 broker's time until this host's agrees (check NTP)",
                crate::describe_offset(-i128::from(offset))
            );
            schedule.corrected(mono);
            return true;
        }
        Err(clock::TimeIgnored::Insane(offset)) => warn!(
            "ignored the broker's TIME: it says this host's clock {} the broker's, more than 10 years; \
             check the broker's clock",
            crate::describe_offset(-offset)
        ),
        Err(why) => debug!("ignored the broker's TIME: {why:?}"),
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use footunnel_ebpf::wire::Kind;

    use super::*;
    use crate::client::{
        message::tests::{NOW, from_broker, identity},
        render, verify_from_broker,
    };

    #[test]
    fn a_verified_time_corrects_the_clock_and_heartbeats_at_once() {
        let (mut state, mut clock) = (ClientState::default(), clock::Clock::default());
        let mut schedule = Schedule::new(Duration::from_secs(10), 0);
        let two_days = 2 * 86_400_000_000_000;
        clock.sent(NOW - two_days, 1_000);
        schedule.sent(1_000);
        let time = FromBroker::Time { timestamp_ns: NOW, echo_ns: NOW - two_days };
        handle_message(&time, NOW - two_days, 2_000, &mut schedule, &mut state, &mut clock);
        assert!(schedule.due(2_000), "the corrected heartbeat goes at once");
        let offset = state.clock_offset_ns.expect("an offset in use");
        assert!(offset.abs_diff(two_days as i64) < 1_000_000, "{offset}");
        assert!(render(&state, NOW).contains("clock: this host's is 2 days behind the broker's"));
        // NTP answered: the broker's next ACK agrees with our own clock.
        let ack = FromBroker::Ack { timestamp_ns: NOW + 5, seen: "203.0.113.5:40001".parse().unwrap() };
        handle_message(&ack, NOW, 3_000, &mut schedule, &mut state, &mut clock);
        assert_eq!((state.clock_offset_ns, clock.offset_ns()), (None, None));
    }

    #[test]
    fn an_ack_records_the_public_endpoint_and_a_challenge_its_nonce() {
        let id = identity();
        // The schedule's clock (monotonic) is far from the wall clock: the
        // RTT must come from the former alone.
        const MONO: u64 = 3_600_000_000_000;
        let mut schedule = Schedule::new(Duration::from_secs(10), 0);
        schedule.sent(MONO - 5_000_000);
        let mut state = ClientState::default();
        let ack = from_broker(Kind::Ack, NOW, [203, 0, 113, 5, 0x9c, 0x41, 0, 0]);
        let ack = verify_from_broker(&ack, &id, 0, NOW, 0).unwrap();
        handle_message(&ack, NOW, MONO, &mut schedule, &mut state, &mut Default::default());
        assert_eq!(state.public_endpoint.as_deref(), Some("203.0.113.5:40001"));
        assert_eq!(state.rtt_us, Some(5_000));
        let ch = from_broker(Kind::Challenge, NOW + 1, [7; 8]);
        let ch = verify_from_broker(&ch, &id, NOW, NOW, 0).unwrap();
        handle_message(&ch, NOW + 1, MONO + 1, &mut schedule, &mut state, &mut Default::default());
        assert_eq!((schedule.nonce(), schedule.due(MONO + 1), state.challenges), ([7; 8], true, 1));
        assert_eq!(state.last_ack_ns, Some(NOW), "show reports wall time");
    }
}
