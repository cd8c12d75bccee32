//! Section 2b: while someone floods the broker's FoU port with forged
//! heartbeats (fresh timestamps, the tunnel's id, wrong tags) from the other
//! core as fast as one socket sends, does a legitimate client still fail
//! over? Each round the client moves to a new source port and sends one
//! heartbeat; the round's failover is the time until the broker has recorded
//! that endpoint, and a heartbeat not recorded within GIVE_UP is lost (the
//! real client would retry). The eBPF path and a userspace broker doing the
//! same checks on a UDP socket (default receive buffer, as a broker would
//! run) each run quiet and flooded, in one run.

use std::{
    collections::HashMap,
    net::UdpSocket,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use footunnel::{broker::dataplane::XDP_PROGRAM, os::rawudp::RawUdp, secret::TunnelIdentity};
use footunnel_ebpf::wire::HeartbeatKey;
use footunnel_tests::{
    Netns,
    broker::{Broker, FOU_PORT, SECRET, now_ns},
    by_hand,
};
use serde_json::{Value, json};

const ROUNDS: u16 = 40;
const SPACING: Duration = Duration::from_millis(25);
const GIVE_UP: Duration = Duration::from_millis(500);
const FIRST_PORT: u16 = 41_000;

/// Failover times of the recorded rounds (ms) and the rounds lost.
struct Outcome {
    ms: Vec<f64>,
    lost: u32,
}

impl Outcome {
    fn json(mut self) -> Value {
        self.ms.sort_by(f64::total_cmp);
        let at = |q: f64| self.ms.get(((self.ms.len() as f64 - 1.0) * q).round() as usize).copied();
        json!({
            "rounds": ROUNDS,
            "lost": self.lost,
            "median_ms": at(0.5),
            "p90_ms": at(0.9),
            "max_ms": self.ms.last().copied(),
        })
    }
}

/// ROUNDS legitimate heartbeats from 192.0.2.1, each from a new port, each
/// waited for until `recorded` reports its port.
fn rounds(gen_ns: &Netns, recorded: &(dyn Fn() -> Option<u16> + Sync)) -> Outcome {
    gen_ns.run(|| {
        let sock = RawUdp::send_only().unwrap();
        let mut outcome = Outcome { ms: Vec::new(), lost: 0 };
        for k in 0..ROUNDS {
            let port = FIRST_PORT + k;
            let hb = by_hand::heartbeat(SECRET, now_ns(), [0; 8]);
            let sent = Instant::now();
            sock.send(
                std::net::Ipv4Addr::new(192, 0, 2, 1),
                port,
                std::net::Ipv4Addr::new(192, 0, 2, 2),
                FOU_PORT,
                &hb,
            )
            .unwrap();
            loop {
                if recorded() == Some(port) {
                    outcome.ms.push(sent.elapsed().as_secs_f64() * 1e3);
                    break;
                }
                if sent.elapsed() > GIVE_UP {
                    outcome.lost += 1;
                    break;
                }
                std::hint::spin_loop();
            }
            std::thread::sleep(SPACING);
        }
        outcome
    })
}

/// Forged heartbeats from 192.0.2.1:40001 until `stop`, 64 to a sendmmsg
/// call (the most one core sends here); counts them.
fn flood_until(gen_ns: &Netns, stop: &AtomicBool, sent: &AtomicU64) {
    let mut forged = by_hand::heartbeat(SECRET, now_ns(), [0; 8]);
    forged[39] ^= 1;
    gen_ns.run(|| {
        let sock = UdpSocket::bind("192.0.2.1:40001").unwrap();
        sock.connect(("192.0.2.2", FOU_PORT)).unwrap();
        const BATCH: usize = 64;
        let mut iov = libc::iovec { iov_base: forged.as_mut_ptr().cast(), iov_len: forged.len() };
        // SAFETY: zeroed mmsghdr is valid; all point at the one forged datagram.
        let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| {
                // SAFETY: mmsghdr is plain data; all zeros is a valid value.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = &mut iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: msgs point at a live buffer; the socket is connected.
            let r = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
            if r > 0 {
                n += r as u64;
            }
        }
        sent.store(n, Ordering::Relaxed);
    });
}

/// Runs `rounds` with a flood beside it (or none): (outcome, forged packets per second).
fn measured(gen_ns: &Netns, recorded: &(dyn Fn() -> Option<u16> + Sync), flooded: bool) -> (Outcome, f64) {
    if !flooded {
        return (rounds(gen_ns, recorded), 0.0);
    }
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let (outcome, elapsed) = std::thread::scope(|s| {
        let started = Instant::now();
        s.spawn(|| flood_until(gen_ns, &stop, &sent));
        std::thread::sleep(Duration::from_millis(200)); // the flood is at full rate first
        let outcome = rounds(gen_ns, recorded);
        stop.store(true, Ordering::Relaxed);
        (outcome, started.elapsed())
    });
    // Read after the scope: the flood thread stores its count as it ends.
    (outcome, sent.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// A userspace broker on 192.0.2.2:FOU_PORT with the default receive
/// buffer: recvmmsg in batches, the same checks in the same order; the port
/// of the latest accepted heartbeat goes to `recorded`.
fn userspace_broker(ready: &AtomicBool, stop: &AtomicBool, recorded: &AtomicU32) {
    let id = TunnelIdentity::derive(SECRET);
    let tunnels: HashMap<u64, HeartbeatKey> = [(id.id, HeartbeatKey::new(id.sip_key(), id.id))].into();
    let mut last_ts: HashMap<u64, u64> = HashMap::new();
    let sock = UdpSocket::bind(("192.0.2.2", FOU_PORT)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    ready.store(true, Ordering::Release);
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 64]; BATCH];
    // SAFETY: all-zero sockaddr_in is valid.
    let mut names: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: zeroed mmsghdr is valid; the pointers are to live buffers.
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: mmsghdr is plain data; all zeros is a valid value.
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                m
            })
            .collect();
        // MSG_WAITFORONE: return as soon as there is one, not when BATCH are in.
        // SAFETY: msgs point at live buffers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let now = now_ns();
        for (i, m) in msgs[..n as usize].iter().enumerate() {
            let payload = &bufs[i][..(m.msg_len as usize).min(64)];
            let accepted = crate::flood::userspace_check(payload, &tunnels, &mut last_ts, now);
            if accepted.is_ok() {
                recorded.store(u32::from(u16::from_be(names[i].sin_port)), Ordering::Release);
            }
        }
    }
}

pub fn run() -> Value {
    // eBPF: the real program on the uplink (driver mode on veth), its map read directly.
    let mut broker = Broker::new(false);
    let (gen_ns, uplink) = crate::flood::pair();
    uplink.run(|| {
        let xdp: &mut Xdp = broker.ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.attach("up0", XdpMode::Default).or_else(|_| xdp.attach("up0", XdpMode::Skb)).unwrap();
    });
    let endpoint = std::sync::Mutex::new(&broker);
    let recorded_ebpf = || endpoint.lock().unwrap().endpoint().map(|e| e.port);
    let (ebpf_quiet, _) = measured(&gen_ns, &recorded_ebpf, false);
    let (ebpf_flooded, ebpf_rate) = measured(&gen_ns, &recorded_ebpf, true);
    drop((gen_ns, uplink));

    // Userspace: the same rounds against a UDP socket, no program attached.
    let (gen_ns, uplink) = crate::flood::pair();
    let (ready, stop, port) = (AtomicBool::new(false), AtomicBool::new(false), AtomicU32::new(0));
    let ((user_quiet, _), (user_flooded, user_rate)) = std::thread::scope(|s| {
        s.spawn(|| uplink.run(|| userspace_broker(&ready, &stop, &port)));
        while !ready.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let recorded = || Some(port.load(Ordering::Acquire) as u16);
        let quiet = measured(&gen_ns, &recorded, false);
        let flooded = measured(&gen_ns, &recorded, true);
        stop.store(true, Ordering::Relaxed);
        (quiet, flooded)
    });
    json!({
        "rounds": ROUNDS,
        "give_up_ms": GIVE_UP.as_millis() as u64,
        "ebpf": { "quiet": ebpf_quiet.json(), "flooded": ebpf_flooded.json(), "flood_packets_per_second": ebpf_rate },
        "userspace": { "quiet": user_quiet.json(), "flooded": user_flooded.json(), "flood_packets_per_second": user_rate },
    })
}
