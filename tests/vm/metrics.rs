//! Prometheus metrics: the page passes `promtool check metrics`, agrees
//! with `footunnel show --json`, and a real Prometheus server scrapes it.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use footunnel_tests::{Netns, NsProcess, footunnel_once, sh};

use crate::broker::{CLIENT_B, SECRET, Topology};

/// `GET path` from `addr` (inside `ns`): (status line, body); `None` if
/// nothing answers.
pub fn try_http_get(ns: &Netns, addr: &str, path: &str) -> Option<(String, String)> {
    ns.run(|| {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        s.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        Some((head.lines().next().unwrap_or_default().to_owned(), body.to_owned()))
    })
}

pub fn http_get(ns: &Netns, addr: &str, path: &str) -> (String, String) {
    try_http_get(ns, addr, path).unwrap_or_else(|| panic!("nothing answers at {addr}"))
}

/// `promtool check metrics` on `page`: (success, its output).
fn promtool(page: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: `cargo xtask setup` installs Debian's prometheus package");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The value of the sample `name{labels}` on a metrics page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_pass_promtool_agree_with_show_and_are_scraped_by_prometheus() {
    let topo = Topology::new();
    let mut broker = topo.start_broker(&["--metrics", "127.0.0.1:9586"]);
    let client_state = format!("{}-client", topo.state_dir);
    let mut client = NsProcess::footunnel(
        &topo.client,
        &[
            "client",
            "--interval",
            "1",
            "--metrics",
            "127.0.0.1:9587",
            "--state-dir",
            &client_state,
            "198.51.100.1",
            SECRET,
        ],
    );
    topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(10));
    client.wait_for("the broker sees this end at", Duration::from_secs(5));
    // A forged heartbeat, so a rejection reason has a count.
    topo.send(CLIENT_B, 40001, &footunnel_tests::by_hand::heartbeat("not the secret", footunnel::now_ns(), [0; 8]));

    let (status, page) = http_get(&topo.client, "127.0.0.1:9587", "/metrics");
    assert!(status.contains("200"), "{status}");
    let (ok, lint) = promtool(&page);
    assert!(ok, "promtool check metrics on the client's page:\n{lint}\n{page}");
    assert!(
        sample(&page, "footunnel_client_acks_total{broker=\"198.51.100.1\",link=\"fou0\"}").is_some_and(|n| n >= 1.0),
        "{page}"
    );
    assert!(page.contains("footunnel_client_ack_rtt_seconds{"), "{page}");

    // Quiet, so that the scrape and `show` see the same counts.
    client.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let (status, page) = http_get(&topo.broker, "127.0.0.1:9586", "/metrics");
    assert!(status.contains("200"), "{status}");
    let (ok, lint) = promtool(&page);
    assert!(ok, "promtool check metrics on the broker's page:\n{lint}\n{page}");
    let (ok, json) = footunnel_once(&topo.broker, &["show", "--json", "--state-dir", &topo.state_dir]);
    assert!(ok, "{json}");
    let show: serde_json::Value = serde_json::from_str(&json).unwrap();
    let t = &show["broker"]["tunnels"][0];
    let heartbeats = t["heartbeats"].as_u64().unwrap();
    assert!(heartbeats >= 2);
    assert_eq!(sample(&page, "footunnel_tunnel_heartbeats_total{tunnel=\"fou0\"}"), Some(heartbeats as f64), "{page}");
    assert_eq!(
        sample(&page, "footunnel_tunnel_endpoint_changes_total{tunnel=\"fou0\"}"),
        t["changes"].as_u64().map(|n| n as f64),
        "{page}"
    );
    for want in [
        "footunnel_tunnel_info{key=\"current\",link=\"fou0\",tunnel=\"fou0\"} 1",
        "footunnel_tunnel_endpoint_known{tunnel=\"fou0\"} 1",
    ] {
        assert!(page.contains(want), "{want:?} missing from:\n{page}");
    }
    assert!(!page.contains(&CLIENT_B.to_string()), "a metric label carries the client's address:\n{page}");
    for pair in show["broker"]["counters"].as_array().unwrap() {
        let (name, value) = (pair[0].as_str().unwrap(), pair[1].as_u64().unwrap() as f64);
        let series = [
            format!("footunnel_heartbeats_rejected_total{{reason=\"{name}\"}}"),
            format!("footunnel_dataplane_packets_total{{outcome=\"{name}\"}}"),
            format!("footunnel_{name}_total"),
        ];
        let found: Vec<f64> = series.iter().filter_map(|s| sample(&page, s)).collect();
        assert_eq!(found, [value], "counter {name}: show says {value}, the metrics {found:?}:\n{page}");
    }
    assert_eq!(sample(&page, "footunnel_heartbeats_rejected_total{reason=\"unknown_tunnel\"}"), Some(1.0), "{page}");
    // With the kernel's BPF statistics on (this VM's own kernel), the program's runs are counted.
    sh("sysctl", &["-q", "kernel.bpf_stats_enabled=1"]);
    topo.send(CLIENT_B, 40001, &footunnel_tests::by_hand::heartbeat("not the secret", footunnel::now_ns(), [0; 8]));
    // The page scraped above is served again until it is this old.
    std::thread::sleep(footunnel::metrics::PAGE_MAX_AGE);
    let (_, page) = http_get(&topo.broker, "127.0.0.1:9586", "/metrics");
    sh("sysctl", &["-q", "kernel.bpf_stats_enabled=0"]);
    assert!(
        sample(&page, "footunnel_bpf_program_runs_total{program=\"footunnel_xdp\"}").is_some_and(|n| n >= 1.0),
        "no program statistics with kernel.bpf_stats_enabled=1:\n{page}"
    );
    assert!(page.contains("footunnel_bpf_program_run_seconds_total{program=\"footunnel_xdp\"}"), "{page}");
    let (status, _) = http_get(&topo.broker, "127.0.0.1:9586", "/nothing-here");
    assert!(status.contains("404"), "{status}");

    // A real Prometheus server scrapes the broker.
    let dir = format!("{}/prometheus", topo.state_dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        format!("{dir}/prometheus.yml"),
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: footunnel\n    static_configs:\n      - targets: ['127.0.0.1:9586']\n",
    )
    .unwrap();
    let prometheus = Command::new("ip")
        .args(["netns", "exec", &topo.broker.name, "prometheus"])
        .arg(format!("--config.file={dir}/prometheus.yml"))
        .arg(format!("--storage.tsdb.path={dir}/data"))
        .args(["--web.listen-address=127.0.0.1:9090", "--log.level=warn"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(format!("{dir}/log")).unwrap())
        .spawn()
        .expect("prometheus is missing: `cargo xtask setup` installs Debian's prometheus package");
    let _kill = KillOnDrop(prometheus);
    let start = Instant::now();
    let query = "/api/v1/query?query=footunnel_tunnel_heartbeats_total";
    loop {
        let body = try_http_get(&topo.broker, "127.0.0.1:9090", query).map(|r| r.1).unwrap_or_default();
        if body.contains("\"tunnel\":\"fou0\"") && body.contains(&format!("\"{heartbeats}\"")) {
            println!("Prometheus scraped the broker {:?} after it started", start.elapsed());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "Prometheus did not scrape the broker: {body}\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A metrics address that cannot be bound is a start-up error.
    let (ok, out) = footunnel_once(
        &topo.broker,
        &[
            "broker",
            "--metrics",
            "127.0.0.1:9586",
            "--pin-dir",
            &topo.pin_dir,
            "--state-dir",
            &topo.state_dir,
            "fou0",
            SECRET,
        ],
    );
    assert!(!ok && out.contains("cannot serve metrics on 127.0.0.1:9586"), "{out}");
    broker.wait_for("broker running", Duration::from_secs(1));
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connections to `addr` from inside `ns` as fast as `threads` threads can
/// make them (each sends a scrape's request and closes), until `stop`; at
/// most `limit` in all. Returns how many were made.
fn connect_flood(ns: &Netns, addr: &str, threads: usize, limit: usize, stop: &std::sync::atomic::AtomicBool) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let made = AtomicUsize::new(0);
    ns.run(|| {
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while !stop.load(Ordering::Relaxed) && made.fetch_add(1, Ordering::Relaxed) < limit {
                        if let Ok(mut c) = std::net::TcpStream::connect(addr) {
                            let _ = write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
                        }
                    }
                });
            }
        })
    });
    made.into_inner().min(limit)
}

/// Tunnels besides the topology's own, so that a page costs what it costs
/// on a real broker (the review reproduced the stall with 500).
const EXTRA_TUNNELS: usize = 499;

#[test]
fn a_connect_flood_on_the_metrics_port_does_not_hold_up_re_pointing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let topo = Topology::new();
    let mut batch = String::new();
    let mut config =
        format!("pin_dir = \"{}\"\nstate_dir = \"{}\"\nmetrics = \"127.0.0.1:9588\"\n", topo.pin_dir, topo.state_dir);
    config += &format!("[[tunnel]]\nname = \"fou0\"\nlink = \"fou0\"\nsecret = \"{SECRET}\"\n");
    for i in 1..=EXTRA_TUNNELS {
        batch += &format!(
            "link add fou{i} type ipip remote 10.200.{}.{} local 198.51.100.1 ttl 64 encap fou encap-sport 42424 encap-dport 42424\n",
            i / 250,
            i % 250 + 1
        );
        config += &format!(
            "[[tunnel]]\nname = \"t{i}\"\nlink = \"fou{i}\"\nsecret = \"metrics flood tunnel {i}, long enough\"\n\
             peer_prefixes = [\"10.201.{}.{}/32\"]\n",
            i / 250,
            i % 250 + 1
        );
    }
    std::fs::create_dir_all(&topo.state_dir).unwrap();
    let batch_file = format!("{}/links.batch", topo.state_dir);
    std::fs::write(&batch_file, batch).unwrap();
    let status = Command::new("ip").args(["-n", &topo.broker.name, "-batch", &batch_file]).status().unwrap();
    assert!(status.success(), "ip -batch failed");
    let config_file = format!("{}/broker.toml", topo.state_dir);
    std::fs::write(&config_file, config).unwrap();
    let mut broker = NsProcess::footunnel(&topo.broker, &["broker", "--config", &config_file]);
    broker.wait_for("broker running", Duration::from_secs(60));
    let t0 = footunnel::now_ns();
    topo.send(CLIENT_B, 40001, &footunnel_tests::by_hand::heartbeat(SECRET, t0, [0; 8]));
    let quiet = topo.wait_for_endpoint(CLIENT_B, 40001, Duration::from_secs(2));
    // Idle connections that never send a request, beyond any sane cap.
    let idle: Vec<_> =
        topo.broker.run(|| (0..200).filter_map(|_| std::net::TcpStream::connect("127.0.0.1:9588").ok()).collect());
    assert!(idle.len() >= 100, "only {} idle connections", idle.len());

    let stop = AtomicBool::new(false);
    let (made, took) = std::thread::scope(|s| {
        let flood = s.spawn(|| connect_flood(&topo.broker, "127.0.0.1:9588", 4, 100_000, &stop));
        std::thread::sleep(Duration::from_secs(1));
        // A NAT rebinding in the middle of the flood.
        topo.send(CLIENT_B, 40002, &footunnel_tests::by_hand::heartbeat(SECRET, t0 + 1_000_000, [0; 8]));
        let start = Instant::now();
        let mut took = None;
        while start.elapsed() < Duration::from_secs(5) {
            if topo.link().encap_dport() == Some(40002) {
                took = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (flood.join().unwrap(), took)
    });
    drop(idle);
    println!("metrics flood: {made} connections; link followed after {took:?} (without the flood: {quiet:?})");
    let took = took.unwrap_or_else(|| panic!("the link did not follow within 5 s of flood:\n{}", broker.log()));
    assert!(made >= 100, "the flood made only {made} connections: it tests nothing");
    assert!(took < Duration::from_secs(1), "the flood held up re-pointing for {took:?}");
    // The listener serves again once the flood is over.
    let start = Instant::now();
    while try_http_get(&topo.broker, "127.0.0.1:9588", "/metrics").is_none_or(|(status, _)| !status.contains("200")) {
        assert!(start.elapsed() < Duration::from_secs(10), "no scrape answered after the flood");
        std::thread::sleep(Duration::from_millis(200));
    }
}
