//! The benchmarks that need fou/ipip, run in the VM: one link change over
//! rtnetlink against `ip link set` as a process; the controller at 1,000 and
//! 10,000 tunnels (start-up, memory, time per change, failover and the
//! sender's cost per packet measured as for shared-device mode in
//! `shared.rs`); the controller's CPU time during a flood of forged heartbeats.

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::{Duration, Instant},
};

use footunnel::now_ns;
use footunnel::os::rawudp::RawUdp;
use footunnel_tests::{Netns, NsProcess, by_hand, log_seconds, require_vm, sh, veth};
use serde_json::{Value, json};

const CHANGES: u32 = 200;

pub fn run() -> Vec<(&'static str, Value)> {
    require_vm();
    vec![("link_change", link_change()), ("scale", scale()), ("shared", crate::shared::run())]
}

/// The same change, `remote` and `encap-dport`, CHANGES times each way.
fn link_change() -> Value {
    let ns = Netns::new("lc");
    ns.ip("link add up0 type dummy");
    ns.ip("addr add 198.51.100.1/24 dev up0");
    ns.ip("fou add port 42424 ipproto 4");
    ns.ip("link add fou0 type ipip remote 203.0.113.9 local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    let ours = ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().unwrap();
            tokio::spawn(conn);
            let start = Instant::now();
            for i in 0..CHANGES {
                // As the broker does: read the link's parameters, send them back changed.
                let link = footunnel::os::link::get(&handle, "fou0").await.unwrap();
                footunnel::os::link::repoint(
                    &handle,
                    &link,
                    Ipv4Addr::new(203, 0, 113, (i % 200) as u8 + 1).into(),
                    40000 + i as u16,
                )
                .await
                .unwrap();
            }
            start.elapsed()
        })
    });
    let start = Instant::now();
    for i in 0..CHANGES {
        let remote = format!("203.0.113.{}", i % 200 + 1);
        let dport = (41000 + i).to_string();
        sh("ip", &["-n", &ns.name, "link", "set", "fou0", "type", "ipip", "remote", &remote, "encap-dport", &dport]);
    }
    let ip = start.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e3 / CHANGES as f64;
    json!({ "changes": CHANGES, "rtnetlink_ms": per(ours), "ip_process_ms": per(ip), "ratio": per(ip) / per(ours) })
}

/// The client end's inner address of tunnel `i` (in its /30).
fn client_inner(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32 + 4 * i + 2)
}

/// Tunnel `i`: link, secret, peer prefix, broker local address, placeholder remote.
fn tunnel(i: u32) -> (String, String, String, Ipv4Addr, Ipv4Addr) {
    let inner = 0x0a00_0000u32 + 4 * i;
    (
        format!("ft{i}"),
        format!("bench secret of tunnel number {i}"),
        format!("{}/30", Ipv4Addr::from(inner)),
        Ipv4Addr::new(198, 51, 100, 1 + (i / 256) as u8),
        Ipv4Addr::new(192, 0, 2, (i % 256) as u8),
    )
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn scale() -> Value {
    let mut rows = Vec::new();
    for size in [1_000u32, 10_000] {
        rows.push(scale_one(size));
    }
    json!({ "rows": rows })
}

fn scale_one(size: u32) -> Value {
    let broker = Netns::new("scale");
    let client = Netns::new("scalec");
    veth(&broker, "up0", "198.51.100.1/24", &client, "up0", "198.51.100.200/24");
    // Each sampled change comes from its own address: two links with the same
    // remote and local would be one tunnel to the kernel.
    for a in 201..=220 {
        client.ip(&format!("addr add 198.51.100.{a}/24 dev up0"));
    }
    let locals = (size - 1) / 256 + 1;
    let mut batch = String::new();
    for l in 1..locals {
        batch += &format!("addr add 198.51.100.{}/24 dev up0\n", 1 + l);
    }
    batch += "fou add port 42424 ipproto 4\n";
    let mut toml = format!("pin_dir = \"/sys/fs/bpf/ft-{}\"\nstate_dir = \"/tmp/ft-{}\"\n", broker.name, broker.name);
    let samples: Vec<u32> = (0..20).map(|k| k * size / 20 + 7).collect();
    for i in 0..size {
        let (link, secret, prefix, local, remote) = tunnel(i);
        batch += &format!(
            "link add {link} type ipip remote {remote} local {local} ttl 64 encap fou encap-sport 42424 encap-dport 42424\n"
        );
        if samples.contains(&i) {
            // A stream to the client's inner address goes through this link.
            batch += &format!("link set {link} up\nroute add {} dev {link}\n", client_inner(i));
        }
        toml += &format!(
            "[[tunnel]]\nname = \"{link}\"\nlink = \"{link}\"\nsecret = \"{secret}\"\npeer_prefixes = [\"{prefix}\"]\n"
        );
    }
    let batch_file = format!("/tmp/{}.batch", broker.name);
    std::fs::write(&batch_file, batch).unwrap();
    let setup = Instant::now();
    sh("ip", &["-n", &broker.name, "-batch", &batch_file]);
    eprintln!("bench: {size} tunnels created in {:?}", setup.elapsed());
    let config = format!("/tmp/{}.toml", broker.name);
    std::fs::write(&config, toml).unwrap();

    let used_before = crate::shared::used_kib();
    let started = Instant::now();
    let mut process = NsProcess::footunnel(&broker, &["broker", "-v", "--config", &config]);
    process.wait_for("broker running", Duration::from_secs(900));
    let startup = started.elapsed();
    let pid = process.child.id();
    let machine_kib_added = crate::shared::used_kib().saturating_sub(used_before);

    // Time per change: heartbeats for a spread of tunnels, from new ports;
    // failover and the sender's cost per packet as in shared.rs.
    let mut per_change = Vec::new();
    let mut failover = Vec::new();
    let mut send_ns = Vec::new();
    for (n, i) in samples.iter().enumerate() {
        let (link, secret, _, local, _) = tunnel(*i);
        let before = process.log().lines().count();
        let port = 30000 + n as u16;
        let source = Ipv4Addr::new(198, 51, 100, 201 + n as u8);
        if n < 10 {
            failover.push(crate::shared::first_packet(
                &broker,
                &client,
                &secret,
                local,
                client_inner(*i),
                (source, port),
            ));
            send_ns.push(crate::shared::send_cost_ns(&broker, client_inner(*i)));
        } else {
            client.run(|| {
                RawUdp::open()
                    .unwrap()
                    .send(source, port, local, 42424, &by_hand::heartbeat(&secret, now_ns(), [0; 8]))
                    .unwrap()
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let needle = format!("link {link} now points at {source}:{port}");
        loop {
            let log = process.log();
            if let (Some(heard), Some(done)) = (
                log_seconds(&log, before, &format!("tunnel {link}: heartbeat from")),
                log_seconds(&log, before, &needle),
            ) {
                per_change.push(done - heard);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tunnel {link} was not re-pointed:\n{}",
                log.lines().skip(before).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    per_change.sort_by(f64::total_cmp);
    let median_ms = per_change[per_change.len() / 2] * 1e3;
    let rss = rss_kib(pid);

    // Controller CPU during a bounded flood of forged heartbeats (the data plane rejects them).
    let (_, secret, _, local, _) = tunnel(0);
    let mut forged = by_hand::heartbeat(&secret, now_ns(), [0; 8]);
    forged[39] ^= 1;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // The same span without the flood first: what the controller spends
    // anyway (its sweep), against which the flood's cost shows.
    let quiet_ticks0 = cpu_ticks(pid);
    let quiet_start = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    let controller_cpu_quiet_s = (cpu_ticks(pid) - quiet_ticks0) as f64 / hz;
    let quiet_s = quiet_start.elapsed().as_secs_f64();
    let ticks0 = cpu_ticks(pid);
    let flood = client.run(|| {
        let sock = UdpSocket::bind("198.51.100.200:45000").unwrap();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(5) && sent < 2_000_000 {
            if sock.send_to(&forged, (local, 42424)).is_ok() {
                sent += 1;
            }
        }
        (sent, start.elapsed())
    });
    let controller_cpu_s = (cpu_ticks(pid) - ticks0) as f64 / hz;
    drop(process);
    footunnel_tests::unload(&format!("/sys/fs/bpf/ft-{}", broker.name), &format!("/tmp/ft-{}", broker.name));
    send_ns.sort_by(f64::total_cmp);
    json!({
        "tunnels": size,
        "startup_s": startup.as_secs_f64(),
        "rss_kib": rss,
        "machine_kib_added": machine_kib_added,
        "failover_ms_median": crate::shared::median_ms(failover),
        "send_ns_median": send_ns[send_ns.len() / 2],
        "change_ms_median": median_ms,
        "changes_measured": per_change.len(),
        "flood_packets": flood.0,
        "flood_s": flood.1.as_secs_f64(),
        "controller_cpu_s_during_flood": controller_cpu_s,
        "controller_cpu_s_quiet": controller_cpu_quiet_s,
        "quiet_s": quiet_s,
    })
}
