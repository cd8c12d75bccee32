//! `cargo xtask bench`: every benchmark in one run on this machine, written
//! to bench/results.md and bench/results.json.

use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{build_ebpf, cmd, router_bench, setup, vm};

#[derive(clap::Args)]
pub struct Options {
    /// Measure nothing: write bench/results.md again from bench/results.json
    /// (after a change to how the results are presented).
    #[arg(long)]
    render: bool,
    /// Measure only the router client (section 6) and merge it into
    /// bench/results.json, the other sections as they were measured.
    #[arg(long)]
    router_only: bool,
    /// Measure only several brokers (section 7: anycast takeovers, one
    /// broker restarted) and merge it into bench/results.json.
    #[arg(long)]
    brokers_only: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.render {
        let out = cmd::workspace_root().join("bench");
        let json = out.join("results.json");
        std::fs::write(out.join("results.md"), render(&read_json(&json)?))?;
        println!("rendered {} from {}", out.join("results.md").display(), json.display());
        return Ok(());
    }
    cmd::require_root("bench")?;
    setup::run()?;
    build_ebpf::run()?;
    if opts.router_only {
        return router_only();
    }
    if opts.brokers_only {
        return brokers_only();
    }
    cmd::run(cmd::cargo().args(["build", "--release", "--package", "footunnel"]))?;
    let root = cmd::workspace_root();
    let raw = root.join("target/bench");
    let _ = std::fs::remove_dir_all(&raw);
    std::fs::create_dir_all(&raw)?;
    let started = std::time::Instant::now();

    println!("\n===== bench: host (per-packet cost, flood) =====");
    let bench = cmd::executable(
        &["bench", "--package", "footunnel-tests", "--bench", "bench", "--no-run", "--message-format=json"],
        "bench",
    )?;
    cmd::run(Command::new(&bench).arg("host").arg(&raw))?;

    println!("\n===== bench: VM (link changes, 1,000 and 10,000 tunnels, controller under flood) =====");
    let in_vm = |command: Vec<String>| in_vm(&raw, command);
    in_vm(vec![bench.clone(), "vm".into(), raw.display().to_string()])?;

    println!("\n===== bench: VM (failover, end-to-end scenarios) =====");
    vm_tests(&raw, &in_vm, &["seven_scenarios"])?;

    println!("\n===== bench: VM (several brokers: anycast takeovers, one broker restarted) =====");
    let brokers = brokers(&raw, &in_vm)?;

    println!("\n===== bench: the router client (sizes; memory in the VM) =====");
    let (router_size, router_memory) = router(&raw, &in_vm)?;

    let read = |name: &str| raw_json(&raw, name);
    let results = json!({
        "date": utc_now()?,
        "machine": machine()?,
        "minutes": started.elapsed().as_secs_f64() / 60.0,
        "per_packet": read("per_packet")?,
        "flood": read("flood")?,
        "flood_failover": read("flood_failover")?,
        "link_change": read("link_change")?,
        "scale": read("scale")?,
        "shared": read("shared")?,
        "failover": read("failover")?,
        "brokers": brokers,
        "router_size": router_size,
        "router_memory": router_memory,
    });
    let out = root.join("bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    let markdown = render(&results);
    std::fs::write(out.join("results.md"), &markdown)?;
    println!("\n{markdown}");
    println!("written to {} and {}", out.join("results.md").display(), out.join("results.json").display());
    Ok(())
}

/// A test's figures, `NAME.json` in the directory the VM tests write them to.
fn raw_json(raw: &std::path::Path, name: &str) -> Result<Value> {
    read_json(&raw.join(format!("{name}.json")))
}

/// Now, for a result's date.
fn utc_now() -> Result<String> {
    Ok(cmd::output(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC"))?.trim().to_owned())
}

/// Section 6: sizes on the host, the client's memory in the VM.
fn router(raw: &std::path::Path, in_vm: &dyn Fn(Vec<String>) -> Result<()>) -> Result<(Value, Value)> {
    let size = router_bench::measure(raw)?;
    vm_tests(raw, in_vm, &["router::the_x86_64_router_client_follows_its_nat"])?;
    let mut memory = raw_json(raw, "router_client")?;
    memory["date"] = utc_now()?.into();
    Ok((size, memory))
}

/// Section 7, in the VM: five rounds of each anycast takeover, and one
/// broker's restart.
fn brokers(raw: &std::path::Path, in_vm: &dyn Fn(Vec<String>) -> Result<()>) -> Result<Value> {
    let tests = ["anycast::", "vrrp::", "brokers::a_client_moves", "broker::after_kill_9_a_restart"];
    vm_tests(raw, in_vm, &tests)?;
    let read = |name: &str| raw_json(raw, name);
    Ok(json!({
        "date": utc_now()?,
        "anycast_machine": read("anycast_machine")?,
        "anycast_footunnel": read("anycast_footunnel")?,
        "anycast_shared": read("anycast_shared")?,
        "vrrp_machine": read("vrrp_machine")?,
        "vrrp_footunnel": read("vrrp_footunnel")?,
        "client_failover": read("client_failover")?,
        "restart": read("restart")?,
    }))
}

fn brokers_only() -> Result<()> {
    let root = cmd::workspace_root();
    let raw = root.join("target/bench");
    std::fs::create_dir_all(&raw)?;
    let in_vm = |command: Vec<String>| in_vm(&raw, command);
    let json = root.join("bench/results.json");
    let mut results = read_json(&json)?;
    results["brokers"] = brokers(&raw, &in_vm)?;
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    let markdown = render(&results);
    std::fs::write(root.join("bench/results.md"), &markdown)?;
    println!("{}", brokers_md(&results["brokers"]));
    Ok(())
}

/// Section 7's table.
fn brokers_md(b: &Value) -> String {
    let times = |v: &Value| -> Vec<f64> {
        let mut t: Vec<f64> = v["seconds"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
        t.sort_by(f64::total_cmp);
        t
    };
    let row = |what: &str, t: &[f64]| match (t.get(t.len() / 2), t.last()) {
        (Some(median), Some(max)) => format!("| {what} | {median:.1} s | {max:.1} s | {} |\n", t.len()),
        _ => format!("| {what} | — | — | 0 |\n"),
    };
    let restart = f(&b["restart"]["start_to_repointed_s"]);
    let mut md = format!(
        "\n## 7. Several brokers (in the VM; measured {})\n\nTwo brokers behind one anycast address \
         (tests/vm/anycast.rs: BIRD, BGP with BFD at 100 ms × 5, ECMP; clients heartbeat every 1 s): the time from \
         the broker serving a client stopping until an internet host's ping reaches that client through the other \
         broker, which then alone announces its prefix.\n\n| broker serving the client | takeover median | max | \
         rounds |\n|---|---:|---:|---:|\n",
        b["date"].as_str().unwrap_or("?")
    );
    md += &row("its machine stops (processes killed, uplink silent: BFD)", &times(&b["anycast_machine"]));
    md += &row("its footunnel stops (health check every 1 s: `show --check`, birdc)", &times(&b["anycast_footunnel"]));
    md += &row(
        "its machine stops, shared-device mode (both clients behind one NAT address)",
        &times(&b["anycast_shared"]),
    );
    md += "\nTwo brokers on one segment sharing the address by VRRP (tests/vm/vrrp.rs: keepalived, `advert_int 1`, \
           track script `show --check` every 1 s, `fall 2`): the master stopping until an internet host reaches every \
           client through the backup.\n\n| the master | takeover median | max | rounds |\n|---|---:|---:|---:|\n";
    md += &row("its machine stops (adverts stop: master-down interval)", &times(&b["vrrp_machine"]));
    md += &row("its footunnel stops (track script fails: FAULT)", &times(&b["vrrp_footunnel"]));
    let failover = times(&b["client_failover"]);
    md += &format!(
        "\nOne broker alone, its footunnel killed and restarted by systemd (`RestartSec=2s`): a client that moved \
         meanwhile is followed {restart:.1} s after the start, {:.1} s after the kill; its links carry traffic all \
         along (the kernel needs no controller), but a dead machine is down until it is back. Two brokers at two \
         addresses, the client failing over itself (tests/vm/brokers.rs, default 10 s heartbeats, one round): {}.\n",
        2.0 + restart,
        failover.first().map_or("not measured".to_owned(), |s| format!("{s:.1} s"))
    );
    md
}

/// The VM tests named by `filters`, in turn, writing their figures into `raw`.
fn vm_tests(raw: &std::path::Path, in_vm: &dyn Fn(Vec<String>) -> Result<()>, filters: &[&str]) -> Result<()> {
    cmd::run(cmd::cargo().args(["build", "--package", "footunnel"]))?;
    let mut command = vec![
        "env".into(),
        format!("FOOTUNNEL_BENCH_OUT={}", raw.display()),
        cmd::test_executable("vm")?,
        "--test-threads=1".into(),
        "--nocapture".into(),
    ];
    command.extend(filters.iter().map(|f| f.to_string()));
    in_vm(command)
}

/// `--router-only`: section 6 measured now, merged into the last full run.
fn router_only() -> Result<()> {
    let root = cmd::workspace_root();
    let raw = root.join("target/bench");
    std::fs::create_dir_all(&raw)?;
    let in_vm = |command: Vec<String>| in_vm(&raw, command);
    let (size, memory) = router(&raw, &in_vm)?;
    let json = root.join("bench/results.json");
    let mut results = read_json(&json)?;
    results["router_size"] = size;
    results["router_memory"] = memory;
    std::fs::write(&json, serde_json::to_vec_pretty(&results)?)?;
    let markdown = render(&results);
    std::fs::write(root.join("bench/results.md"), &markdown)?;
    println!("{}", router_bench::render(&results["router_size"], &results["router_memory"]));
    Ok(())
}

/// Runs `command` in the VM on the kernel the published results were
/// measured on, `raw` writable for its results.
fn in_vm(raw: &std::path::Path, command: Vec<String>) -> Result<()> {
    let opts = vm::Options {
        systemd: false,
        kernel: Some("6.1".into()),
        memory: "4G".into(),
        cpus: 2,
        timeout: 1500,
        rwdirs: vec![raw.to_path_buf()],
        command,
        prefix: None,
    };
    match vm::run(&opts)? {
        0 => Ok(()),
        code => bail!("{} failed in the VM (exit status {code})", opts.command.join(" ")),
    }
}

fn read_json(path: &std::path::Path) -> Result<Value> {
    serde_json::from_slice(&std::fs::read(path).with_context(|| format!("missing {}", path.display()))?)
        .with_context(|| format!("cannot parse {}", path.display()))
}

fn machine() -> Result<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']))
        .unwrap_or("?");
    let kernel = cmd::output(Command::new("uname").arg("-r"))?;
    Ok(format!(
        "{} × {model}, Linux {} (host); VM: Debian's kernel under QEMU TCG",
        std::thread::available_parallelism()?.get(),
        kernel.trim()
    ))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// Section 2b: a legitimate client's failover while the FoU port is flooded.
fn flood_failover(ff: &Value) -> String {
    let ms = |v: &Value| v.as_f64().map_or("—".to_owned(), |x| format!("{x:.2} ms"));
    let mut md = format!(
        "\n## 2b. A client's failover during a flood of forged heartbeats\n\n{} rounds: the client moves to a new \
         source port and sends one heartbeat; failover is the time until the broker has recorded the new endpoint, \
         and a heartbeat not recorded within {} ms is lost (the real client retries). The flood comes from the other \
         core, one UDP socket sending as fast as it can, fresh timestamps, the tunnel's id, wrong tags. The userspace \
         broker does the same checks on a UDP socket with the default receive buffer.\n\n",
        ff["rounds"], ff["give_up_ms"]
    );
    md += "| broker | flood | failover median | p90 | max | heartbeats lost |\n|---|---:|---:|---:|---:|---:|\n";
    for (name, key) in [("eBPF (XDP)", "ebpf"), ("userspace (UDP socket)", "userspace")] {
        for (when, rate) in [("quiet", None), ("flooded", Some(f(&ff[key]["flood_packets_per_second"])))] {
            let row = &ff[key][when];
            md += &format!(
                "| {name} | {} | {} | {} | {} | {} of {} |\n",
                rate.map_or("none".to_owned(), |r| format!("{:.0} k/s", r / 1e3)),
                ms(&row["median_ms"]),
                ms(&row["p90_ms"]),
                ms(&row["max_ms"]),
                row["lost"],
                row["rounds"]
            );
        }
    }
    let slowdown = |key: &str| f(&ff[key]["flooded"]["median_ms"]) / f(&ff[key]["quiet"]["median_ms"]);
    md += &format!(
        "\nMedian failover, flooded ÷ quiet: eBPF {:.1}×, userspace {:.1}×.\n",
        slowdown("ebpf"),
        slowdown("userspace")
    );
    md
}

/// The results as bench/results.md shows them.
pub fn render(r: &Value) -> String {
    let mut md = format!(
        "# footunnel benchmarks\n\n{} — {} — {:.1} minutes\n\n",
        r["date"].as_str().unwrap_or("?"),
        r["machine"].as_str().unwrap_or("?"),
        f(&r["minutes"])
    );
    md += "## 1. Per-packet cost (BPF_PROG_TEST_RUN), next to an empty XDP program\n\n";
    md += "| packet | footunnel ns | empty ns | ratio | rounds' ratios | runs | target |\n|---|---:|---:|---:|---:|---:|---|\n";
    for row in r["per_packet"]["rows"].as_array().into_iter().flatten() {
        let case = row["case"].as_str().unwrap_or("?");
        let target = match case {
            "unrelated UDP" | "FoU data from the endpoint" | "IPv6: unrelated UDP" => verdict(f(&row["ratio"]) <= 1.5),
            _ => "—",
        };
        let spread = match (row["ratio_min"].as_f64(), row["ratio_max"].as_f64()) {
            (Some(lo), Some(hi)) => format!("{lo:.2}–{hi:.2}×"),
            _ => "—".to_owned(),
        };
        md += &format!(
            "| {case} | {:.1} | {:.1} | {:.2}× | {spread} | {} ({}) | {target} |\n",
            f(&row["footunnel_ns"]),
            f(&row["empty_ns"]),
            f(&row["ratio"]),
            row["runs"],
            row["how"].as_str().unwrap_or("")
        );
    }
    let trace = &r["per_packet"]["trace"];
    md += &format!(
        "\n`--trace` (every row above runs with it off): the verifier leaves {} bytes of XDP program with it off, \
         {} with it on — the logging is gone, not skipped at run time. A forged heartbeat: {:.1} ns off, {:.1} ns on \
         ({:.2}×, median of 11 rounds).\n",
        trace["translated_bytes_off"],
        trace["translated_bytes_on"],
        f(&trace["forged"]["empty_ns"]),
        f(&trace["forged"]["footunnel_ns"]),
        f(&trace["forged"]["ratio"]),
    );
    let fl = &r["flood"];
    md += "\n## 2. Flood of forged heartbeats over veth\n\n";
    md += "| path | rejected | rejected/s | CPU per packet in the rejecting code | whole machine per packet, sender included |\n|---|---:|---:|---:|---:|\n";
    md += &format!(
        "| eBPF (XDP) | {} | {:.0} | {:.0} ns | {:.0} ns |\n| userspace (recvmmsg) | {} of {} | {:.0} | {:.0} ns | {:.0} ns |\n",
        fl["ebpf"]["rejected"],
        f(&fl["ebpf"]["rejected_per_second"]),
        f(&fl["ebpf"]["ns_per_packet"]),
        f(&fl["ebpf"]["system_cpu_ns_per_packet"]),
        fl["userspace"]["rejected"],
        fl["packets_sent"],
        f(&fl["userspace"]["rejected_per_second"]),
        f(&fl["userspace"]["cpu_ns_per_packet"]),
        f(&fl["userspace"]["system_cpu_ns_per_packet"]),
    );
    let ratio = f(&fl["cost_ratio"]);
    md += &format!(
        "\nCPU per rejected packet, userspace ÷ eBPF: **{ratio:.1}×** in the rejecting code (BPF run time with run-time \
         stats on, against the broker thread's CPU time; target ≥ 10×: {}), {:.1}× for the whole machine with the sender \
         included. Both paths verify the tag of every fresh forged heartbeat (SipHash from the tunnel's precomputed \
         state); the eBPF figure is well above its cost in section 1, most likely because each packet's bytes, written \
         on the sender's core, miss this core's cache; the userspace figure leaves out the kernel's UDP receive path, \
         which the eBPF path never runs. One UDP socket on the other core is the sender and bounds the rate both \
         reach.\n",
        verdict(ratio >= 10.0),
        f(&fl["system_cost_ratio"])
    );
    for row in r["scale"]["rows"].as_array().into_iter().flatten() {
        md += &format!(
            "Controller CPU at {} tunnels: {:.2} s during {:.0} s of forged heartbeats ({} packets), {:.2} s during \
             {:.0} s just before without them (its sweep reads a tenth of the links each second).\n",
            row["tunnels"],
            f(&row["controller_cpu_s_during_flood"]),
            f(&row["flood_s"]),
            row["flood_packets"],
            f(&row["controller_cpu_s_quiet"]),
            f(&row["quiet_s"]),
        );
    }
    md += &flood_failover(&r["flood_failover"]);
    let lc = &r["link_change"];
    md += &format!(
        "\n## 3. Failover and link changes\n\nOne link change (`remote` + `encap-dport`): rtnetlink {:.2} ms, `ip link set` as a process {:.2} ms ({:.1}× slower; {} changes each, in the VM).\n\n",
        f(&lc["rtnetlink_ms"]),
        f(&lc["ip_process_ms"]),
        f(&lc["ratio"]),
        lc["changes"]
    );
    let interval = f(&r["failover"]["interval_s"]);
    md += &format!(
        "| scenario (heartbeat interval {interval:.0} s) | failover | of the interval | target (< 5 %, client-side changes) |\n|---|---:|---:|---|\n"
    );
    for row in r["failover"]["rows"].as_array().into_iter().flatten() {
        let scenario = row["scenario"].as_str().unwrap_or("?");
        let share = f(&row["of_interval"]);
        let target = if scenario.starts_with("1.") { verdict(share < 0.05) } else { "—" };
        md += &format!("| {scenario} | {:.3} s | {:.1} % | {target} |\n", f(&row["seconds"]), 100.0 * share);
    }
    let mechanism = f(&r["failover"]["client_change_noticed_to_ack_s"]);
    md += &format!(
        "\nBy the client's own log, its address change was noticed, heartbeated, applied by the broker and acknowledged \
         in {:.3} s ({:.1} % of the interval; target < 5 %: {}). The end-to-end times above also count starting `ip` and \
         `ping` under emulation, tens of milliseconds per process here.\n",
        mechanism,
        100.0 * mechanism / interval,
        verdict(mechanism / interval < 0.05)
    );
    md += "\n## 4. Scale (in the VM)\n\n| tunnels | controller start-up | resident memory | time per change (median) |\n|---:|---:|---:|---:|\n";
    let rows: Vec<&Value> = r["scale"]["rows"].as_array().into_iter().flatten().collect();
    for row in &rows {
        md += &format!(
            "| {} | {:.1} s | {:.1} MiB | {:.2} ms |\n",
            row["tunnels"],
            f(&row["startup_s"]),
            f(&row["rss_kib"]) / 1024.0,
            f(&row["change_ms_median"])
        );
    }
    if let [small, large] = rows.as_slice() {
        let growth = f(&large["change_ms_median"]) / f(&small["change_ms_median"]);
        md += &format!(
            "\nTime per change, 10,000 ÷ 1,000 tunnels: {growth:.2}× (target: flat, ≤ 1.5×: {}).\n",
            verdict(growth <= 1.5)
        );
    }
    md += &shared_mode(&r["scale"], &r["shared"]);
    if !r["router_size"].is_null() {
        md += &router_bench::render(&r["router_size"], &r["router_memory"]);
    }
    if !r["brokers"].is_null() {
        md += &brokers_md(&r["brokers"]);
    }
    md += "\nThe VM runs under software emulation (QEMU TCG, no KVM on these machines): its absolute times are slow; compare within a table.\n";
    md
}

/// Section 5: shared-device mode beside per-link mode, measured alike.
fn shared_mode(per_link: &Value, shared: &Value) -> String {
    let mut md = String::from(
        "\n## 5. Shared-device mode beside per-link mode (in the VM)\n\n\
         Failover: a heartbeat from a new address and port → the first packet of a stream the broker sends every \
         100 µs that arrives there (median of 10 tunnels). Per packet: the sender's time for one 64-byte datagram \
         through the tunnel (median of 10 runs of 20,000): the shared device's egress program against the kernel's \
         own ipip link with FoU. Memory: what the whole VM uses more once the broker runs.\n\n\
         | mode | tunnels | start-up | controller memory | machine memory added | failover | per packet |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    let per_link_rows: Vec<&Value> = per_link["rows"].as_array().into_iter().flatten().collect();
    let shared_rows: Vec<&Value> = shared["rows"].as_array().into_iter().flatten().collect();
    for (mode, rows) in [("per-link", &per_link_rows), ("shared", &shared_rows)] {
        for row in rows.iter() {
            md += &format!(
                "| {mode} | {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:.2} ms | {:.0} ns |\n",
                row["tunnels"],
                f(&row["startup_s"]),
                f(&row["rss_kib"]) / 1024.0,
                f(&row["machine_kib_added"]) / 1024.0,
                f(&row["failover_ms_median"]),
                f(&row["send_ns_median"])
            );
        }
    }
    fn at<'a>(rows: &[&'a Value], n: u64) -> Option<&'a Value> {
        rows.iter().find(|r| r["tunnels"].as_u64() == Some(n)).copied()
    }
    for n in [1_000u64, 10_000] {
        if let (Some(p), Some(s)) = (at(&per_link_rows, n), at(&shared_rows, n)) {
            md += &format!(
                "\nAt {n} tunnels: failover {:.1}× faster in shared mode (no userspace step); per packet, shared ÷ \
                 per-link: {:.2}×.",
                f(&p["failover_ms_median"]) / f(&s["failover_ms_median"]),
                f(&s["send_ns_median"]) / f(&p["send_ns_median"])
            );
        }
    }
    if let (Some(small), Some(large)) = (shared_rows.first(), shared_rows.last()) {
        let growth = f(&large["send_ns_median"]) / f(&small["send_ns_median"]);
        md += &format!(
            "\nShared mode per packet, {} ÷ {} tunnels: {growth:.2}× (target: flat, ≤ 1.5×: {}).\n",
            large["tunnels"],
            small["tunnels"],
            verdict(growth <= 1.5)
        );
    }
    md
}
