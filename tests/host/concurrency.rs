//! Heartbeats for one tunnel accepted on several CPUs at once: the entry
//! must end as the newest accepted heartbeat left it, with no update lost.

use footunnel_ebpf::maps::Counter;
use footunnel_tests::{
    broker::{Broker, FOU_PORT, now_ns},
    frame::Udp4,
};

const THREADS: u64 = 4;
const PER_THREAD: u64 = 25_000;
const STEP_NS: u64 = 1_000;

#[test]
fn concurrent_heartbeats_for_one_tunnel_lose_no_update_and_never_go_back() {
    let mut broker = Broker::new(false);
    let base = now_ns();
    // Thread t sends timestamps base + (i·THREADS + t)·STEP from port 40000 + t:
    // the threads interleave, so nearly every pair of concurrent heartbeats
    // has an older and a newer one.
    let ts_of = |i: u64, t: u64| base + (i * THREADS + t) * STEP_NS;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let broker = &broker;
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let frame = Udp4::new(
                        [203, 0, 113, 5],
                        40000 + t as u16,
                        [198, 51, 100, 1],
                        FOU_PORT,
                        &broker.heartbeat(ts_of(i, t)),
                    )
                    .build();
                    broker.xdp(&frame);
                }
            });
        }
    });
    let accepted = broker.count(Counter::Accepted);
    let (replay, busy) = (broker.count(Counter::Replay), broker.count(Counter::Busy));
    println!("{accepted} accepted, {replay} overtaken (replay), {busy} busy, of {}", THREADS * PER_THREAD);
    let e = broker.endpoint().expect("an endpoint");
    assert_eq!(e.heartbeats, accepted, "an accepted heartbeat's update was lost (read, copy, write raced)");
    let t = (e.last_timestamp_ns - base) / STEP_NS % THREADS;
    assert_eq!(u64::from(e.port), 40000 + t, "the stored port is not the one of the stored timestamp (torn write)");
    assert_eq!(e.lock, 0, "the entry was left locked");
    // Nothing newer than the stored timestamp was accepted: the next
    // timestamp after the newest sent is accepted, and it is newer than any.
    let newest = ts_of(PER_THREAD - 1, THREADS - 1);
    assert!(e.last_timestamp_ns <= newest);
    broker.xdp(&Udp4::new([203, 0, 113, 5], 41000, [198, 51, 100, 1], FOU_PORT, &broker.heartbeat(newest + 1)).build());
    assert_eq!(broker.endpoint().unwrap().last_timestamp_ns, newest + 1);
    let _ = broker.events();
}
