//! 1. Per-packet cost through BPF_PROG_TEST_RUN, next to an empty XDP program.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use aya::programs::Xdp;
use footunnel::broker::dataplane::XDP_PROGRAM;
use footunnel_tests::{
    broker::{Broker, FOU_PORT, XDP_DROP, XDP_PASS, now_ns},
    frame::{Udp4, Udp6},
};
use serde_json::{Value, json};

use crate::raw_bpf::{empty_xdp, test_run};

pub const REPEAT: u32 = 1_000_000;
const CLIENT: [u8; 4] = [203, 0, 113, 5];
const BROKER: [u8; 4] = [198, 51, 100, 1];
const CLIENT6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
const BROKER6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn inner(src: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&[10, 0, 0, 1]);
    p
}

pub fn run() -> Value {
    let broker = Broker::new(false);
    let xdp: &Xdp = broker.ebpf.program(XDP_PROGRAM).unwrap().try_into().unwrap();
    let ours = xdp.fd().unwrap().as_fd().as_raw_fd();
    let empty = empty_xdp();
    let t0 = now_ns();
    let hb = |ts: u64| Udp4::new(CLIENT, 40001, BROKER, FOU_PORT, &broker.heartbeat(ts)).build();
    assert_eq!(test_run(ours, &hb(t0), 1).0, XDP_DROP, "the endpoint is recorded");
    let mut forged = broker.heartbeat(t0 + 3_600_000_000_000 / 60);
    forged[39] ^= 1;

    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("unrelated UDP", Udp4::new(CLIENT, 40001, BROKER, 53, b"dns-ish payload of some length").build(), XDP_PASS),
        (
            "FoU data from the endpoint",
            Udp4::new(CLIENT, 40001, BROKER, FOU_PORT, &inner([10, 0, 0, 2])).build(),
            XDP_PASS,
        ),
        (
            "FoU data from elsewhere",
            Udp4::new([192, 0, 2, 9], 5555, BROKER, FOU_PORT, &inner([10, 0, 0, 2])).build(),
            XDP_PASS,
        ),
        ("forged heartbeat", Udp4::new(CLIENT, 40001, BROKER, FOU_PORT, &forged).build(), XDP_DROP),
        ("replayed heartbeat", hb(t0), XDP_DROP),
        ("stale heartbeat", hb(t0 - 600_000_000_000), XDP_DROP),
        (
            "heartbeat for an unknown tunnel",
            Udp4::new(
                CLIENT,
                40001,
                BROKER,
                FOU_PORT,
                &footunnel_tests::by_hand::heartbeat("no such tunnel", t0, [0; 8]),
            )
            .build(),
            XDP_DROP,
        ),
    ];
    let mut rows = Vec::new();
    for (name, frame, verdict) in &cases {
        rows.push(side_by_side(name, ours, empty.as_raw_fd(), frame, *verdict));
    }
    // A valid heartbeat is accepted once: repeating it would measure the
    // replay check. Each run gets a fresh timestamp instead.
    let accepted_before = broker.count(footunnel_ebpf::maps::Counter::Accepted);
    let per_round = REPEAT as u64 / 10;
    let mut ours_total = 0u64;
    let mut empty_total = 0u64;
    for round in 0..10 {
        let frames: Vec<Vec<u8>> = (1..=per_round).map(|i| hb(t0 + round * per_round + i)).collect();
        for f in &frames {
            ours_total += test_run(ours, f, 1).1 as u64;
            empty_total += test_run(empty.as_raw_fd(), f, 1).1 as u64;
        }
    }
    let n = 10 * per_round;
    let accepted = broker.count(footunnel_ebpf::maps::Counter::Accepted) - accepted_before;
    assert_eq!(accepted, n, "every timed heartbeat was a valid, accepted one");
    rows.insert(
        3,
        row("valid heartbeat", ours_total as f64 / n as f64, empty_total as f64 / n as f64, n, "single runs"),
    );

    // The same client over IPv6 (its endpoint moves there first); its data
    // carries ip6tnl's destination-options header, as the kernel sends it.
    let six = |src: [u8; 16], sport: u16, dport: u16, payload: &[u8], dstopts: bool| {
        let mut f = Udp6::new(src, sport, BROKER6, dport, payload);
        if dstopts {
            f.extensions.push(Udp6::destination_options());
        }
        f.build()
    };
    let moved = six(CLIENT6, 40001, FOU_PORT, &broker.heartbeat(t0 + n + 1), false);
    assert_eq!(test_run(ours, &moved, 1).0, XDP_DROP, "the IPv6 endpoint is recorded");
    let mut forged6 = broker.heartbeat(t0 + 3_600_000_000_000 / 30);
    forged6[39] ^= 1;
    let mut elsewhere = CLIENT6;
    elsewhere[15] = 9;
    let cases6: Vec<(&str, Vec<u8>, u32)> = vec![
        ("IPv6: unrelated UDP", six(CLIENT6, 40001, 53, b"dns-ish payload of some length", false), XDP_PASS),
        ("IPv6: FoU data from the endpoint", six(CLIENT6, 40001, FOU_PORT, &inner([10, 0, 0, 2]), true), XDP_PASS),
        ("IPv6: FoU data from elsewhere", six(elsewhere, 5555, FOU_PORT, &inner([10, 0, 0, 2]), true), XDP_PASS),
        ("IPv6: forged heartbeat", six(CLIENT6, 40001, FOU_PORT, &forged6, false), XDP_DROP),
    ];
    for (name, frame, verdict) in &cases6 {
        rows.push(side_by_side(name, ours, empty.as_raw_fd(), frame, *verdict));
    }
    let forged_frame = Udp4::new(CLIENT, 40001, BROKER, FOU_PORT, &forged).build();
    json!({ "repeat": REPEAT, "rows": rows, "trace": trace_cost(&broker, &forged_frame) })
}

/// `--trace` off (as every other row here runs) against on: the size of the
/// program the verifier left, and a forged heartbeat's cost side by side
/// (with the trace on, the log's ring buffer is soon full: each run still
/// formats and tries to reserve a line, as under a real flood).
fn trace_cost(off: &Broker, forged: &[u8]) -> Value {
    let on = Broker::loaded(false, true);
    let xdp = |b: &Broker| -> (RawFd, u32) {
        let xdp: &Xdp = b.ebpf.program(XDP_PROGRAM).unwrap().try_into().unwrap();
        let size = xdp.info().unwrap().size_translated().expect("the kernel reports the translated size");
        (xdp.fd().unwrap().as_fd().as_raw_fd(), size)
    };
    let ((off_fd, off_size), (on_fd, on_size)) = (xdp(off), xdp(&on));
    let row = side_by_side("forged heartbeat, trace on ÷ off", on_fd, off_fd, forged, XDP_DROP);
    json!({ "translated_bytes_off": off_size, "translated_bytes_on": on_size, "forged": row })
}

/// Rounds of [`REPEAT`]/`ROUNDS` runs, ours then the empty program's, back
/// to back: the median of the per-round ratios. On a shared machine a
/// neighbour's burst during one long run skewed a single pair by tens of
/// nanoseconds; a round it hits is one of many here, and both programs of a
/// round see the same machine.
const ROUNDS: u32 = 11;

fn side_by_side(name: &str, ours: RawFd, empty: RawFd, frame: &[u8], verdict: u32) -> Value {
    let per_round = REPEAT / ROUNDS;
    let mut rounds: Vec<(f64, f64)> = (0..ROUNDS)
        .map(|_| {
            let (rv, ours_ns) = test_run(ours, frame, per_round);
            assert_eq!(rv, verdict, "{name}");
            let (_, empty_ns) = test_run(empty, frame, per_round);
            (f64::from(ours_ns), f64::from(empty_ns))
        })
        .collect();
    rounds.sort_by(|a, b| (a.0 / a.1.max(1.0)).total_cmp(&(b.0 / b.1.max(1.0))));
    let (ours_ns, empty_ns) = rounds[rounds.len() / 2];
    let mut r = row(name, ours_ns, empty_ns, u64::from(per_round * ROUNDS), "median of 11 rounds");
    let ratios: Vec<f64> = rounds.iter().map(|(o, e)| o / e.max(1.0)).collect();
    r["ratio_min"] = json!(ratios[0]);
    r["ratio_max"] = json!(ratios[ratios.len() - 1]);
    r
}

fn row(name: &str, ours: f64, empty: f64, runs: u64, how: &str) -> Value {
    json!({ "case": name, "footunnel_ns": ours, "empty_ns": empty, "ratio": ours / empty.max(1.0), "runs": runs, "how": how })
}
