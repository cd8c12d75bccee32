//! The router client (`cargo xtask dist`) on foreign architectures: the
//! aarch64 and mipsel binaries, run by qemu-user in a client namespace
//! behind a NAT, against the real broker. qemu-user 7.2 proxies rtnetlink
//! but not generic netlink, so the test makes the FoU listener and link.

use std::time::{Duration, Instant};

use footunnel_tests::{Netns, NsProcess, dist_bin, footunnel_once, require_vm, veth};

use crate::e2e::{flush_conntrack, nft, ping_within, sysctl};

const SECRET: &str = "router client secret, long enough to pass";

/// ELF e_machine of each foreign target, so a native binary cannot pass.
const EM_AARCH64: u16 = 183;
const EM_MIPS: u16 = 8;
const EM_X86_64: u16 = 62;

fn elf_machine(bin: &std::path::Path) -> u16 {
    let head = std::fs::read(bin).unwrap();
    assert_eq!(&head[..4], b"\x7fELF", "{} is no ELF file", bin.display());
    let little = head[5] == 1;
    let bytes = [head[18], head[19]];
    if little { u16::from_le_bytes(bytes) } else { u16::from_be_bytes(bytes) }
}

struct Lab {
    broker: Netns,
    nat: Netns,
    client: Netns,
    pin_dir: String,
    state_dir: String,
}

impl Lab {
    fn new() -> Self {
        require_vm();
        let lab = {
            let broker = Netns::new("broker");
            let pin_dir = format!("/sys/fs/bpf/ft-{}", broker.name);
            let state_dir = format!("/tmp/ft-{}", broker.name);
            Lab { broker, nat: Netns::new("nat"), client: Netns::new("router"), pin_dir, state_dir }
        };
        veth(&lab.nat, "pub0", "203.0.113.1/24", &lab.broker, "up0", "203.0.113.100/24");
        veth(&lab.nat, "lan0", "192.0.2.1/29", &lab.client, "up0", "192.0.2.2/29");
        lab.client.ip("route add default via 192.0.2.1");
        sysctl(&lab.nat, "net.ipv4.ip_forward=1");
        nft(&lab.nat, "masquerade");
        lab.broker.ip("fou add port 42424 ipproto 4");
        lab.broker.ip("link add fou0 type ipip remote 192.0.2.200 local 203.0.113.100 ttl 64 \
             encap fou encap-sport 42424 encap-dport 42424");
        lab.broker.ip("addr add 10.0.0.1/30 dev fou0");
        lab.broker.ip("link set fou0 up");
        lab.client.ip("fou add port 42424 ipproto 4");
        lab.client
            .ip("link add fou0 type ipip remote 203.0.113.100 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
        lab.client.ip("addr add 10.0.0.2/30 dev fou0");
        lab.client.ip("link set fou0 up");
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        footunnel_tests::unload(&self.pin_dir, &self.state_dir);
    }
}

/// First contact, a ping through the tunnel, a NAT port change followed;
/// under `qemu` for a foreign target.
fn the_router_client_follows_its_nat(triple: &str, qemu: Option<&str>, machine: u16) {
    let bin = dist_bin(triple);
    assert_eq!(elf_machine(&bin), machine, "{} is not built for {triple}", bin.display());
    let bin = bin.to_str().unwrap();
    let lab = Lab::new();
    let mut broker = NsProcess::footunnel(
        &lab.broker,
        &["broker", "-v", "--pin-dir", &lab.pin_dir, "--state-dir", &lab.state_dir, "fou0", SECRET],
    );
    broker.wait_for("broker running", Duration::from_secs(20));

    let client_state = format!("{}-client", lab.state_dir);
    let started = Instant::now();
    let args = ["client", "-v", "--state-dir", &client_state, "203.0.113.100", SECRET];
    let mut client = match qemu {
        Some(qemu) => NsProcess::run_in(&lab.client, qemu, &[&[bin][..], &args].concat()),
        None => NsProcess::run_in(&lab.client, bin, &args),
    };
    std::thread::sleep(Duration::from_millis(200));
    let log = client.log();
    assert!(!log.contains("nsenter: failed to execute"), "{qemu:?} is missing (qemu-user-static): {log}");
    client.wait_for("the broker sees this end at 203.0.113.1:", Duration::from_secs(30));
    println!("{triple}: first ACK {:?} after the start", started.elapsed());
    ping_within(&lab.client, "10.0.0.1", Instant::now(), &format!("{triple}: first contact"), &[&broker, &client]);

    // The NAT moves the tunnel to another port: the broker sees FoU data
    // from a new source and challenges; the client answers at once, so
    // traffic is back well within the 10 s heartbeat interval.
    nft(&lab.nat, "meta l4proto udp masquerade to :50000-50999");
    flush_conntrack(&lab.nat);
    let changed = Instant::now();
    let took =
        ping_within(&lab.client, "10.0.0.1", changed, &format!("{triple}: NAT port change"), &[&broker, &client]);
    println!("{triple}: NAT port change, traffic again after {took:?}");
    let (ok, show) = footunnel_once(&lab.broker, &["show", "--state-dir", &lab.state_dir]);
    assert!(ok && show.contains("endpoint: 203.0.113.1:50"), "the broker follows the new port:\n{show}");
    // The client's own view, written by the foreign binary, read natively.
    let (ok, show) = footunnel_once(&lab.client, &["show", "--state-dir", &client_state]);
    assert!(ok && show.contains("public endpoint (as the broker sees it): 203.0.113.1:50"), "{show}");

    // Its memory, for `cargo xtask bench` (natively only: under qemu-user
    // it would be the emulator's).
    if let (Some(_), None) = (std::env::var_os("FOOTUNNEL_BENCH_OUT"), qemu) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", client.child.id())).unwrap();
        let kib = |key: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in {status}"));
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        let value = serde_json::json!({ "triple": triple, "rss_kib": kib("VmRSS:"), "peak_rss_kib": kib("VmHWM:") });
        footunnel_tests::bench_out("router_client", &value);
    }
}

#[test]
fn the_aarch64_client_under_qemu_user_follows_its_nat() {
    the_router_client_follows_its_nat("aarch64-unknown-linux-musl", Some("qemu-aarch64-static"), EM_AARCH64);
}

#[test]
fn the_mipsel_client_under_qemu_user_follows_its_nat() {
    the_router_client_follows_its_nat("mipsel-unknown-linux-musl", Some("qemu-mipsel-static"), EM_MIPS);
}

#[test]
fn the_x86_64_router_client_follows_its_nat() {
    the_router_client_follows_its_nat("x86_64-unknown-linux-musl", None, EM_X86_64);
}

#[test]
fn the_router_build_is_the_client_alone() {
    let bin = dist_bin("x86_64-unknown-linux-musl");
    let out = std::process::Command::new(&bin).args(["broker", "--help"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("unrecognized subcommand 'broker'"), "{stderr}");
    let bytes = std::fs::read(&bin).unwrap();
    assert!(!bytes.windows(13).any(|w| w == b"footunnel_xdp"), "the eBPF object is embedded in {}", bin.display());
}
