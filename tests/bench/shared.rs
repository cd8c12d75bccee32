//! Shared-device mode beside per-link mode, in the VM: start-up, memory,
//! failover measured the same way in both (a heartbeat from a new source →
//! the first packet of a steady stream that reaches it), and the sender's
//! cost per packet through the shared device against an ipip link with FoU.

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use footunnel::{now_ns, os::rawudp::RawUdp};
use footunnel_tests::{Netns, NsProcess, by_hand, veth};
use serde_json::{Value, json};

/// Packets per send-cost measurement.
const SEND_PACKETS: u32 = 20_000;
const SAMPLES: u32 = 10;

/// Heartbeat from `source:port` (a new endpoint for the tunnel) → the first
/// packet of a stream the broker sends to `inner` every 100 µs that arrives
/// there: verification, whatever re-points the tunnel, and transit.
pub fn first_packet(
    broker: &Netns,
    client: &Netns,
    secret: &str,
    local: Ipv4Addr,
    inner: Ipv4Addr,
    (source, port): (Ipv4Addr, u16),
) -> Duration {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            broker.run(|| {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                let deadline = Instant::now() + Duration::from_secs(15);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let _ = sock.send_to(&[0u8; 32], (inner, 9));
                    std::thread::sleep(Duration::from_micros(100));
                }
            })
        });
        let took = client.run(|| {
            let sock = UdpSocket::bind((source, port)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            std::thread::sleep(Duration::from_millis(100)); // the stream runs
            let sent = Instant::now();
            RawUdp::open()
                .unwrap()
                .send(source, port, local, 42424, &by_hand::heartbeat(secret, now_ns(), [0; 8]))
                .unwrap();
            let mut buf = [0u8; 2048];
            loop {
                let (n, _) = sock
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("nothing reached {source}:{port} after its heartbeat: {e}"));
                // FoU data (an inner IPv4 header), not the broker's ACK.
                if n >= 20 && buf[0] >> 4 == 4 {
                    return sent.elapsed();
                }
            }
        });
        stop.store(true, Ordering::Relaxed);
        took
    })
}

/// The sender's time per 64-byte datagram to `inner`, through whatever
/// encapsulates it (ns).
pub fn send_cost_ns(broker: &Netns, inner: Ipv4Addr) -> f64 {
    broker.run(|| {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        let start = Instant::now();
        for _ in 0..SEND_PACKETS {
            let _ = sock.send_to(&[0u8; 64], (inner, 9));
        }
        start.elapsed().as_nanos() as f64 / f64::from(SEND_PACKETS)
    })
}

/// Memory in use on the whole (VM) machine, KiB: what a broker adds to it
/// counts the kernel's side too (maps, routes, devices).
pub fn used_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    field("MemTotal:") - field("MemAvailable:")
}

pub fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn inner(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0001 + i)
}

fn secret(i: u32) -> String {
    format!("shared bench secret of tunnel {i}")
}

pub fn run() -> Value {
    let rows: Vec<Value> = [1_000u32, 10_000, 100_000].into_iter().map(shared_one).collect();
    json!({ "rows": rows })
}

fn shared_one(size: u32) -> Value {
    let broker = Netns::new("shb");
    let client = Netns::new("shc");
    veth(&broker, "up0", "198.51.100.1/24", &client, "up0", "198.51.100.200/24");
    for a in 201..=220 {
        client.ip(&format!("addr add 198.51.100.{a}/24 dev up0"));
    }
    let dir = format!("/tmp/ft-{}", broker.name);
    let pin_dir = format!("/sys/fs/bpf/ft-{}", broker.name);
    let mut toml = format!(
        "pin_dir = \"{pin_dir}\"\nstate_dir = \"{dir}\"\nmode = \"shared\"\n[shared]\nlocal = \"198.51.100.1\"\naddress = \"10.255.255.254/32\"\n"
    );
    for i in 0..size {
        toml += &format!(
            "[[tunnel]]\nname = \"t{i}\"\nsecret = \"{}\"\npeer_prefixes = [\"{}/32\"]\n",
            secret(i),
            inner(i)
        );
    }
    let config = format!("/tmp/{}.toml", broker.name);
    std::fs::write(&config, toml).unwrap();

    let used_before = used_kib();
    let started = Instant::now();
    let mut process = NsProcess::footunnel(&broker, &["broker", "--config", &config]);
    process.wait_for("broker running", Duration::from_secs(1200));
    let startup = started.elapsed();
    let rss = crate::vm::rss_kib(process.child.id());
    let added_kib = used_kib().saturating_sub(used_before);

    let mut failover = Vec::new();
    let mut send_ns = Vec::new();
    for n in 0..SAMPLES {
        let i = n * size / SAMPLES + 7;
        let local = Ipv4Addr::new(198, 51, 100, 1);
        // The tunnel has an endpoint first; the measured heartbeat moves it.
        first_packet(
            &broker,
            &client,
            &secret(i),
            local,
            inner(i),
            (Ipv4Addr::new(198, 51, 100, 200), 39000 + n as u16),
        );
        let to = (Ipv4Addr::new(198, 51, 100, 201 + n as u8), 30000 + n as u16);
        failover.push(first_packet(&broker, &client, &secret(i), local, inner(i), to));
        send_ns.push(send_cost_ns(&broker, inner(i)));
    }
    drop(process);
    footunnel_tests::unload(&pin_dir, &dir);
    send_ns.sort_by(f64::total_cmp);
    json!({
        "tunnels": size,
        "startup_s": startup.as_secs_f64(),
        "rss_kib": rss,
        "machine_kib_added": added_kib,
        "failover_ms_median": median_ms(failover),
        "send_ns_median": send_ns[send_ns.len() / 2],
        "samples": SAMPLES,
    })
}
