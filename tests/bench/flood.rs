//! Section 2: a flood of forged heartbeats over veth, rejected by the eBPF
//! path and, for comparison, by a plain userspace broker (a UDP socket with
//! recvmmsg doing the same checks). Bounded: PACKETS datagrams, at most LIMIT.

use std::{
    collections::HashMap,
    net::UdpSocket,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use aya::programs::{Xdp, XdpMode};
use footunnel::{broker::dataplane::XDP_PROGRAM, secret::TunnelIdentity};
use footunnel_ebpf::{
    maps::Counter,
    wire::{Acceptance, HeartbeatKey, Kind, Message, MessageWords, Reject, check_header, check_tunnel},
};
use footunnel_tests::{
    Netns,
    broker::{Broker, FOU_PORT, SECRET, WINDOW_NS, now_ns},
    veth,
};
use serde_json::{Value, json};

const PACKETS: u64 = 400_000;
const LIMIT: Duration = Duration::from_secs(15);

pub fn pair() -> (Netns, Netns) {
    let gen_ns = Netns::new("gen");
    let uplink = Netns::new("uplink");
    veth(&gen_ns, "up0", "192.0.2.1/24", &uplink, "up0", "192.0.2.2/24");
    uplink.ip("link set up0 address 02:00:00:00:00:02");
    gen_ns.ip("neigh replace 192.0.2.2 lladdr 02:00:00:00:00:02 dev up0 nud permanent");
    (gen_ns, uplink)
}

/// Busy time of all CPUs so far (user, nice, system, irq, softirq, steal).
fn system_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat.lines().next().unwrap().split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let jiffies = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    Duration::from_nanos(jiffies * 1_000_000_000 / hz)
}

/// Sends PACKETS forged heartbeats (fresh timestamps, wrong tag); returns
/// the time it took and the sender's own CPU time.
fn flood(gen_ns: &Netns, broker: &Broker) -> (Duration, Duration) {
    let mut forged = broker.heartbeat(now_ns());
    forged[39] ^= 1;
    gen_ns.run(|| {
        let sock = UdpSocket::bind("192.0.2.1:40001").unwrap();
        let cpu0 = thread_cpu();
        let start = Instant::now();
        let mut sent = 0;
        while sent < PACKETS && start.elapsed() < LIMIT {
            if sock.send_to(&forged, ("192.0.2.2", FOU_PORT)).is_ok() {
                sent += 1;
            }
        }
        (start.elapsed(), thread_cpu() - cpu0)
    })
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A userspace broker's checks of one datagram, in the data plane's order
/// and form (the message as words, each tunnel's SipHash state after its
/// heartbeats' first 16 bytes worked out beforehand); an accepted
/// heartbeat's timestamp becomes its tunnel's last.
pub fn userspace_check(
    payload: &[u8],
    tunnels: &HashMap<u64, HeartbeatKey>,
    last_ts: &mut HashMap<u64, u64>,
    now: u64,
) -> Result<(), Reject> {
    let bytes: &[u8; 40] = payload.try_into().map_err(|_| Reject::Malformed)?;
    let msg = MessageWords::from_bytes(bytes);
    check_header(&msg, Kind::Heartbeat)?;
    let key = tunnels.get(&msg.key_id()).ok_or(Reject::UnknownTunnel)?;
    let last = last_ts.get(&msg.key_id()).copied().unwrap_or(0);
    check_tunnel(&msg, key, last, &Acceptance { expected: Kind::Heartbeat, now_ns: now, window_ns: WINDOW_NS })?;
    last_ts.insert(msg.key_id(), msg.timestamp_ns());
    Ok(())
}

/// The userspace broker the eBPF path replaces: recvmmsg in batches, then
/// the same checks in the same order.
fn userspace_broker(stop_after_idle: Duration) -> (u64, u64, Duration, Duration) {
    let id = TunnelIdentity::derive(SECRET);
    let tunnels: HashMap<u64, HeartbeatKey> = [(id.id, HeartbeatKey::new(id.sip_key(), id.id))].into();
    let mut last_ts: HashMap<u64, u64> = HashMap::new();
    let sock = UdpSocket::bind(("192.0.2.2", FOU_PORT)).unwrap();
    let size: libc::c_int = 8 << 20;
    // SAFETY: valid option pointer.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            4,
        )
    };
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    const BATCH: usize = 64;
    let mut bufs = vec![[0u8; 64]; BATCH];
    let mut iovs: Vec<libc::iovec> =
        bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    // SAFETY: zeroed mmsghdr is valid; we fill the iov pointers.
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: mmsghdr is plain data; all zeros is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let (mut processed, mut rejected) = (0u64, 0u64);
    let cpu0 = thread_cpu();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    loop {
        // SAFETY: msgs point at live buffers.
        let n = unsafe { libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0, std::ptr::null_mut()) };
        if n <= 0 {
            if first.is_some() && last.elapsed() > stop_after_idle {
                break;
            }
            continue;
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        let now = now_ns();
        for (i, m) in msgs[..n as usize].iter().enumerate() {
            let payload = &bufs[i][..(m.msg_len as usize).min(64)];
            processed += 1;
            let verdict = userspace_check(payload, &tunnels, &mut last_ts, now);
            if verdict.is_err() {
                rejected += 1;
            }
        }
    }
    let busy = last.duration_since(first.unwrap_or(last));
    (processed, rejected, thread_cpu() - cpu0, busy)
}

pub fn run() -> Value {
    // eBPF: the real program on the uplink, in driver mode.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats");
    let mut broker = Broker::new(false);
    let (gen_ns, uplink) = pair();
    uplink.run(|| {
        let xdp: &mut Xdp = broker.ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
        xdp.attach("up0", XdpMode::Default).or_else(|_| xdp.attach("up0", XdpMode::Skb)).unwrap();
    });
    let info = |b: &Broker| {
        let xdp: &Xdp = b.ebpf.program(XDP_PROGRAM).unwrap().try_into().unwrap();
        let i = xdp.info().unwrap();
        (i.run_time(), i.run_count())
    };
    let (t0, c0) = info(&broker);
    let bad0 = broker.count(Counter::BadTag);
    let busy0 = system_busy();
    let (ebpf_elapsed, ebpf_sender_cpu) = flood(&gen_ns, &broker);
    std::thread::sleep(Duration::from_millis(300));
    // The whole machine, sender included: on veth the receive side partly runs
    // in the sender's context, so no share of it can be told apart.
    let ebpf_system = system_busy().saturating_sub(busy0);
    let _ = ebpf_sender_cpu;
    let (t1, c1) = info(&broker);
    let ebpf_rejected = broker.count(Counter::BadTag) - bad0;
    let ebpf_ns = (t1 - t0).as_nanos() as f64 / (c1 - c0).max(1) as f64;
    drop((gen_ns, uplink));

    // Userspace: the same flood into a socket, no program attached.
    let (gen_ns, uplink) = pair();
    let (processed, rejected, cpu, busy, user_elapsed, user_system) = std::thread::scope(|s| {
        let receiver = s.spawn(|| uplink.run(|| userspace_broker(Duration::from_millis(500))));
        std::thread::sleep(Duration::from_millis(200));
        let busy0 = system_busy();
        let (elapsed, sender_cpu) = flood(&gen_ns, &broker);
        let (p, r, cpu, busy) = receiver.join().unwrap();
        let _ = sender_cpu;
        let system = system_busy().saturating_sub(busy0);
        (p, r, cpu, busy, elapsed, system)
    });
    let user_ns = cpu.as_nanos() as f64 / processed.max(1) as f64;
    let ebpf_system_ns = ebpf_system.as_nanos() as f64 / ebpf_rejected.max(1) as f64;
    let user_system_ns = user_system.as_nanos() as f64 / processed.max(1) as f64;
    json!({
        "packets_sent": PACKETS,
        "ebpf": {
            "rejected": ebpf_rejected,
            "sender_seconds": ebpf_elapsed.as_secs_f64(),
            "rejected_per_second": ebpf_rejected as f64 / ebpf_elapsed.as_secs_f64(),
            "ns_per_packet": ebpf_ns,
            "system_cpu_ns_per_packet": ebpf_system_ns,
        },
        "userspace": {
            "received": processed,
            "rejected": rejected,
            "lost_before_userspace": PACKETS - processed,
            "sender_seconds": user_elapsed.as_secs_f64(),
            "rejected_per_second": rejected as f64 / busy.max(user_elapsed).as_secs_f64(),
            "cpu_ns_per_packet": user_ns,
            "system_cpu_ns_per_packet": user_system_ns,
        },
        "cost_ratio": user_ns / ebpf_ns.max(0.001),
        "system_cost_ratio": user_system_ns / ebpf_system_ns.max(0.001),
    })
}
