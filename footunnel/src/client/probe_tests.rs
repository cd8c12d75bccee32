//! The search against replies as the path would give them, and against the
//! data plane's own PROBE budget.

use footunnel_ebpf::maps::probe_budget;

use super::*;

const MS: u64 = 1_000_000;
const RTT: u64 = 20 * MS;

struct Run {
    mtu: Option<u16>,
    sent: Vec<u16>,
    rounds: usize,
    took: u64,
}

/// Runs a discovery against a path that carries sizes up to `path`
/// (and drops `lost` PROBEs of the sizes listed, once each) and a broker
/// that answers within its budget, `RTT` later.
fn discover(floor: u16, ceiling: u16, path: u16, mut lost: Vec<u16>) -> Run {
    let mut d = Discovery::default();
    let start = 1_000 * MS;
    let mut now = start;
    d.start(floor, ceiling, RTT, now);
    let (mut sent, mut rounds, mut answers, mut budget) = (Vec::new(), 0, Vec::<(u64, u64, u16)>::new(), 0);
    let mut last_round_start = 0;
    for ts in 1.. {
        assert!(ts < 200, "no end: {sent:?}");
        if let Some(i) = answers.iter().position(|(at, _, _)| *at <= now) {
            let (_, echo, len) = answers.remove(i);
            assert!(d.acked(echo, Probe { len, mtu: 0 }, now));
            continue;
        }
        match d.step(now) {
            None => {
                let next_answer = answers.iter().map(|(at, _, _)| *at).min().unwrap_or(u64::MAX);
                now = d.next_ns().min(next_answer).max(now + 1);
            }
            Some(Step::Send(p)) => {
                if d.gone == 1 {
                    rounds += 1;
                    assert!(now - last_round_start >= ROUND_SPACING_NS || rounds == 1, "rounds too close");
                    last_round_start = now;
                }
                sent.push(p.len);
                d.sent(ts);
                let dropped = lost.iter().position(|l| *l == p.len).map(|i| lost.remove(i)).is_some();
                // The broker's budget, as its data plane keeps it.
                let answered = probe_budget(budget, now).inspect(|b| budget = *b).is_some();
                assert!(answered, "over the broker's budget at PROBE {}: {sent:?}", sent.len());
                if p.len <= path && !dropped {
                    answers.push((now + RTT, ts, p.len));
                }
            }
            Some(Step::SetMtu(mtu)) => return Run { mtu: Some(mtu), sent, rounds, took: now - start },
            Some(Step::Failed) => return Run { mtu: None, sent, rounds, took: now - start },
        }
    }
    unreachable!()
}

#[test]
fn a_full_size_path_takes_one_round_trip() {
    let run = discover(576, 1472, 1472, vec![]);
    assert_eq!((run.mtu, run.rounds), (Some(1472), 1), "{:?}", run.sent);
    assert!(run.sent[0] == 1472 && run.sent.len() <= ROUND, "the largest first: {:?}", run.sent);
    assert!(run.took <= RTT + MS, "{}", run.took);
}

#[test]
fn pppoe_and_smaller_paths_are_found_exactly_within_about_a_second() {
    // Each round with a size too large waits 250 ms (four round trips,
    // at least 250 ms): three or four rounds, whatever the path.
    for path in [1464, 1452, 1444, 1424, 1400, 1300, 1280, 1000, 577, 576] {
        for floor in [576, 1280].into_iter().filter(|f| *f <= path) {
            let run = discover(floor, 1472, path, vec![]);
            assert_eq!(run.mtu, Some(path), "path {path}: {:?}", run.sent);
            assert!(run.rounds <= 5, "path {path}: {} rounds, {:?}", run.rounds, run.sent);
            assert!(run.took < 1_500 * MS, "path {path}: {} ms, {:?}", run.took / MS, run.sent);
            assert!(run.sent.iter().all(|l| (floor..=1472).contains(l)), "never outside the bounds: {:?}", run.sent);
        }
    }
}

#[test]
fn a_slow_first_round_trip_does_not_slow_the_later_rounds() {
    // The heartbeat's round trip can be long (a broker busy at start);
    // the PROBEs' own set the later rounds' timeouts.
    let mut d = Discovery::default();
    d.start(576, 1472, 400 * MS, 0);
    let mut now = 0;
    while let Some(Step::Send(p)) = d.step(now) {
        d.sent(u64::from(p.len));
    }
    assert_eq!(d.next_ns(), 1_600 * MS, "first round: four heartbeat round trips");
    now += 10 * MS;
    let smallest = d.round[ROUND - 1].probe.len;
    assert!(d.acked(u64::from(smallest), Probe { len: smallest, mtu: 0 }, now), "{:?}", d.round);
    now = d.next_ns();
    assert_eq!(d.step(now), None, "the round ends, the next is planned");
    let next = d.next_ns();
    assert_eq!(next, now, "{:?}", d.round);
    while let Some(Step::Send(_)) = d.step(now) {}
    assert_eq!(d.next_ns(), now + MIN_TIMEOUT_NS, "later rounds: four PROBE round trips, at least 250 ms");
}

#[test]
fn a_lost_probe_is_sent_again_before_its_size_counts_as_too_large() {
    let run = discover(576, 1472, 1464, vec![1464]);
    assert_eq!(run.mtu, Some(1464), "{:?}", run.sent);
    assert_eq!(run.sent.iter().filter(|l| **l == 1464).count(), 2, "{:?}", run.sent);
    let run = discover(576, 1472, 1472, vec![1472]);
    assert_eq!((run.mtu, run.rounds), (Some(1472), 2), "{:?}", run.sent);
}

#[test]
fn a_path_below_the_floor_or_a_broker_that_never_answers_fails() {
    let run = discover(1280, 1472, 1200, vec![]);
    assert_eq!(run.mtu, None, "{:?}", run.sent);
    assert!(run.sent.iter().filter(|l| **l == 1280).count() == 2, "{:?}", run.sent);
    assert!(run.sent.iter().all(|l| *l >= 1280), "{:?}", run.sent);
}

#[test]
fn an_echo_that_matches_no_probe_sent_is_ignored() {
    let mut d = Discovery::default();
    d.start(1400, 1472, 0, 0);
    let Some(Step::Send(first)) = d.step(0) else { panic!("no PROBE") };
    d.sent(77);
    let ack = |len| Probe { len, mtu: 0 };
    assert!(!d.acked(76, ack(first.len), MS), "another timestamp");
    assert!(!d.acked(77, ack(first.len + 1), MS), "another length");
    assert!(!d.acked(77, ack(first.len), ECHO_WINDOW_NS + MS), "too late");
    assert!(d.acked(77, ack(first.len), MS));
    assert!(!d.acked(77, ack(first.len), 2 * MS), "answered once");
    assert!(!d.acked(0, ack(d.round[1].probe.len), 2 * MS), "not sent yet");
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
    // Unanswered: done all the same after TRIES, the broker's view unknown.
    d.mtu_set(1400, 0);
    let (mut now, mut sent) = (0, 0);
    while d.phase() != (Phase::Done { mtu: 1400, broker: None }) {
        assert!(now < 10_000 * MS);
        if let Some(Step::Send(_)) = d.step(now) {
            d.sent(now + 1);
            sent += 1;
        }
        now += 100 * MS;
    }
    assert_eq!(sent, TRIES);
}
