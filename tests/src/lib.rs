//! Helpers for footunnel's privileged and VM tests: network namespaces,
//! veth pairs, crafted packets. A missing prerequisite is a failure that
//! says what is missing, never a quiet pass.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Fails the test unless it runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root (BPF, network namespaces): run it through `sudo -E cargo xtask test`");
}

/// Fails the test unless it runs inside `cargo xtask vm`.
pub fn require_vm() {
    assert!(
        std::env::var_os("FOOTUNNEL_IN_VM").is_some(),
        "this test needs a kernel with fou/ipip: run it through `cargo xtask test` (which boots a VM), not directly"
    );
    require_root();
    static HOLD: std::sync::Once = std::sync::Once::new();
    HOLD.call_once(hold_static_keys);
}

/// Keeps the kernel's networking static keys switched on for the whole run.
///
/// Under QEMU TCG (no KVM here), a CPU running through a static branch while
/// another CPU patches it can trap on the patch's int3 and panic the guest
/// ("Oops: int3" in netif_rx_internal, seen in the shared-device test). The
/// keys flip whenever the first user comes or the last goes: every `ping`
/// (timestamps), the first or last XDP program in generic mode, clsact
/// qdisc, external-mode tunnel. Holding one user of each for the run means
/// they never flip while test traffic flows. A real machine is not affected.
fn hold_static_keys() {
    // Timestamps (netstamp_needed_key): a socket that asks for them, kept open.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and option value.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMP,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_TIMESTAMP: {}", std::io::Error::last_os_error());
    std::mem::forget(sock);
    // Ingress and egress hooks (clsact), generic XDP: on a dummy device of
    // the VM's own namespace, which no test touches.
    ip("link add ftkeys0 type dummy");
    ip("link set ftkeys0 up");
    sh("tc", &["qdisc", "add", "dev", "ftkeys0", "clsact"]);
    let mut ebpf = footunnel::broker::dataplane::open().expect("load the eBPF object");
    let xdp: &mut aya::programs::Xdp =
        ebpf.program_mut(footunnel::broker::dataplane::XDP_PROGRAM).unwrap().try_into().unwrap();
    xdp.load().expect("load the XDP program");
    xdp.attach("ftkeys0", aya::programs::XdpMode::Skb).expect("generic XDP on ftkeys0");
    std::mem::forget(ebpf);
    // Tunnel metadata (ip_tunnel_metadata_cnt): an external-mode device, as
    // shared-device mode creates and removes.
    ip("link add ftkeys1 type ipip external");
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is it installed? `cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip …`, which must succeed.
pub fn ip(args: &str) -> String {
    sh("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// A network namespace that exists for the life of this value.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("ft{}-{role}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&format!("netns add {name}"));
        ip(&format!("-n {name} link set lo up"));
        Netns { name }
    }

    /// `ip -n NAME …`
    pub fn ip(&self, args: &str) -> String {
        ip(&format!("-n {} {args}", self.name))
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it
    /// opens, interfaces it names, all belong to the namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
                // SAFETY: a valid namespace fd; only this thread moves.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns into {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("the thread inside the namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Connects `a` and `b` with a veth pair named `a_if`/`b_if`, with the given
/// addresses (`192.0.2.1/24` style), both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&format!("link add {a_if} type veth peer name {b_if} netns {}", b.name));
    a.ip(&format!("addr add {a_addr} dev {a_if}"));
    b.ip(&format!("addr add {b_addr} dev {b_if}"));
    a.ip(&format!("link set {a_if} up"));
    b.ip(&format!("link set {b_if} up"));
}

/// Crafted frames for `BPF_PROG_TEST_RUN`.
pub mod frame {
    pub const ETH_P_IP: u16 = 0x0800;

    /// Fields of an Ethernet + IPv4 + UDP frame; `build` makes consistent
    /// lengths and a correct IPv4 header checksum.
    #[derive(Clone, Debug)]
    pub struct Udp4 {
        pub src: [u8; 4],
        pub dst: [u8; 4],
        pub sport: u16,
        pub dport: u16,
        pub protocol: u8,
        pub frag: u16,
        pub options: Vec<u8>,
        pub payload: Vec<u8>,
    }

    impl Udp4 {
        pub fn new(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Self {
            Udp4 { src, dst, sport, dport, protocol: 17, frag: 0, options: Vec::new(), payload: payload.to_vec() }
        }

        pub fn build(&self) -> Vec<u8> {
            let ihl = 20 + self.options.len();
            assert!(ihl.is_multiple_of(4) && ihl <= 60, "IPv4 options must pad to 4 bytes, at most 40");
            let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
            ip.extend_from_slice(&((ihl + 8 + self.payload.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34]);
            ip.extend_from_slice(&self.frag.to_be_bytes());
            ip.extend_from_slice(&[64, self.protocol, 0, 0]);
            ip.extend_from_slice(&self.src);
            ip.extend_from_slice(&self.dst);
            ip.extend_from_slice(&self.options);
            let csum = checksum(&ip);
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&self.sport.to_be_bytes());
            f.extend_from_slice(&self.dport.to_be_bytes());
            f.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
            f.extend_from_slice(&self.payload);
            f
        }
    }

    pub const ETH_P_IPV6: u16 = 0x86DD;

    /// Fields of an Ethernet + IPv6 (+ extension headers) + UDP frame;
    /// `build` makes consistent lengths and next-header chains.
    #[derive(Clone, Debug)]
    pub struct Udp6 {
        pub src: [u8; 16],
        pub dst: [u8; 16],
        pub sport: u16,
        pub dport: u16,
        /// Extension headers in order: their type and whole bytes (the
        /// next-header byte is filled in; the length byte is the caller's).
        pub extensions: Vec<(u8, Vec<u8>)>,
        pub payload: Vec<u8>,
    }

    impl Udp6 {
        pub fn new(src: [u8; 16], sport: u16, dst: [u8; 16], dport: u16, payload: &[u8]) -> Self {
            Udp6 { src, dst, sport, dport, extensions: Vec::new(), payload: payload.to_vec() }
        }

        /// A destination-options header of 8 bytes (PadN), as ip6tnl adds.
        pub fn destination_options() -> (u8, Vec<u8>) {
            (60, vec![0, 0, 1, 4, 0, 0, 0, 0])
        }

        pub fn build(&self) -> Vec<u8> {
            let ext_len: usize = self.extensions.iter().map(|(_, b)| b.len()).sum();
            let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((ext_len + 8 + self.payload.len()) as u16).to_be_bytes());
            f.push(self.extensions.first().map_or(17, |(t, _)| *t));
            f.push(64);
            f.extend_from_slice(&self.src);
            f.extend_from_slice(&self.dst);
            for (i, (_, bytes)) in self.extensions.iter().enumerate() {
                f.push(self.extensions.get(i + 1).map_or(17, |(t, _)| *t));
                f.extend_from_slice(&bytes[1..]);
            }
            f.extend_from_slice(&self.sport.to_be_bytes());
            f.extend_from_slice(&self.dport.to_be_bytes());
            f.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            // The checksum is not checked on this path; a fixed non-zero one.
            f.extend_from_slice(&[0x12, 0x34]);
            f.extend_from_slice(&self.payload);
            f
        }
    }

    /// The Internet checksum (RFC 1071).
    pub fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes.chunks(2).map(|c| u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }
}

/// The real eBPF program, loaded with one tunnel, for host tests.
pub mod broker {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use aya::{
        Ebpf,
        programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    };
    use footunnel::{
        broker::dataplane::{self, TC_PROGRAM, XDP_PROGRAM},
        secret::TunnelIdentity,
    };
    use footunnel_ebpf::{
        maps::{Counter, Endpoint, Settings},
        wire::{ControlMessage, Kind},
    };

    pub const SECRET: &str = "host-test secret, 28 chars..";
    pub const FOU_PORT: u16 = 42424;
    pub const LEGACY_PORT: u16 = 42425;
    /// Inner addresses of the tunnel's client side.
    pub const PEER_PREFIX: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 0, 0, 0), 30);
    /// The same for IPv6 inside the tunnel (sit, `ipproto 41`).
    pub const PEER_PREFIX_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2001, 0xdb8, 0xf0, 0, 0, 0, 0, 0), 64);
    pub const WINDOW_NS: u64 = 120_000_000_000;

    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const TC_ACT_OK: u32 = 0;
    pub const TC_ACT_SHOT: u32 = 2;

    pub use footunnel::now_ns;

    pub struct Broker {
        pub ebpf: Ebpf,
        pub tunnel: TunnelIdentity,
    }

    impl Broker {
        /// Maps filled as the controller would, both entry points loaded.
        pub fn new(legacy: bool) -> Self {
            Self::loaded(legacy, false)
        }

        /// As [`Broker::new`], with the programs' trace (`--trace`) on or off.
        pub fn loaded(legacy: bool, trace: bool) -> Self {
            crate::require_root();
            let tunnel = TunnelIdentity::derive(SECRET);
            let mut ebpf = dataplane::loader(trace).load(dataplane::OBJECT).expect("load the eBPF object");
            let settings = Settings {
                realtime_offset_ns: dataplane::realtime_offset_ns(),
                window_ns: WINDOW_NS,
                observe_interval_ns: 1_000_000_000,
                ..Default::default()
            };
            dataplane::set_settings(&mut ebpf, settings).unwrap();
            dataplane::watch_port(&mut ebpf, FOU_PORT).unwrap();
            dataplane::add_tunnel(&mut ebpf, tunnel.id, tunnel.sip_key(), None).unwrap();
            dataplane::add_prefix(&mut ebpf, PEER_PREFIX.0.into(), PEER_PREFIX.1, tunnel.id, None).unwrap();
            dataplane::add_prefix(&mut ebpf, PEER_PREFIX_V6.0.into(), PEER_PREFIX_V6.1, tunnel.id, None).unwrap();
            if legacy {
                dataplane::watch_legacy_port(&mut ebpf, LEGACY_PORT).unwrap();
                dataplane::add_legacy_secret(&mut ebpf, SECRET.as_bytes(), tunnel.id).unwrap();
            }
            let xdp: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
            xdp.load().expect("the verifier accepts the XDP program");
            let tc: &mut SchedClassifier = ebpf.program_mut(TC_PROGRAM).unwrap().try_into().unwrap();
            tc.load().expect("the verifier accepts the TC program");
            Broker { ebpf, tunnel }
        }

        /// A signed heartbeat payload for this broker's tunnel.
        pub fn heartbeat(&self, timestamp_ns: u64) -> Vec<u8> {
            ControlMessage::new(Kind::Heartbeat, self.tunnel.id, timestamp_ns, [0; 8])
                .sign(self.tunnel.sip_key())
                .to_bytes()
                .to_vec()
        }

        /// Verdict of the XDP entry point on `frame` (BPF_PROG_TEST_RUN).
        pub fn xdp(&self, frame: &[u8]) -> u32 {
            let xdp: &Xdp = self.ebpf.program(XDP_PROGRAM).unwrap().try_into().unwrap();
            xdp.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() })
                .expect("BPF_PROG_TEST_RUN (XDP)")
                .return_value
        }

        /// Verdict of the TC entry point on `frame`.
        pub fn tc(&self, frame: &[u8]) -> u32 {
            let tc: &SchedClassifier = self.ebpf.program(TC_PROGRAM).unwrap().try_into().unwrap();
            tc.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() })
                .expect("BPF_PROG_TEST_RUN (TC)")
                .return_value
        }

        /// The TC verdict, or `None` where BPF_PROG_TEST_RUN itself refuses
        /// the frame (it checks an skb's headers before the program runs).
        pub fn try_tc(&self, frame: &[u8]) -> Option<u32> {
            let tc: &SchedClassifier = self.ebpf.program(TC_PROGRAM).unwrap().try_into().unwrap();
            tc.test_run(TestRunOptions { data_in: Some(frame), ..Default::default() }).ok().map(|r| r.return_value)
        }

        pub fn endpoint(&self) -> Option<Endpoint> {
            dataplane::endpoint(&self.ebpf, self.tunnel.id).unwrap()
        }

        pub fn count(&self, counter: Counter) -> u64 {
            dataplane::counter(&self.ebpf, counter).unwrap()
        }

        /// Events waiting in the ring buffer, drained.
        pub fn events(&mut self) -> Vec<footunnel_ebpf::maps::Event> {
            let map = self.ebpf.map_mut(footunnel_ebpf::maps::EVENTS).unwrap();
            let mut ring = aya::maps::RingBuf::try_from(map).unwrap();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                out.push(*bytemuck::from_bytes(&item[..size_of::<footunnel_ebpf::maps::Event>()]));
            }
            out
        }
    }
}

/// Protocol v1 messages built by hand from docs/protocol.md, with independent
/// SHA-256 and SipHash implementations: never by the code under test.
pub mod by_hand {
    use std::hash::Hasher;

    use sha2::{Digest, Sha256};

    pub fn key(secret: &str) -> [u8; 16] {
        let d = Sha256::new().chain_update(b"footunnel-v1 key").chain_update([0]).chain_update(secret).finalize();
        d[..16].try_into().unwrap()
    }

    pub fn key_id(secret: &str) -> [u8; 8] {
        let d = Sha256::new().chain_update(b"footunnel-v1 id").chain_update([0]).chain_update(secret).finalize();
        d[..8].try_into().unwrap()
    }

    /// The tag over bytes 0..32, in the reference implementation's byte order.
    pub fn tag(secret: &str, first32: &[u8]) -> [u8; 8] {
        let mut h = siphasher::sip::SipHasher24::new_with_key(&key(secret));
        h.write(first32);
        h.finish().to_le_bytes()
    }

    /// A HEARTBEAT: marker, version 1, type 1, id, timestamp, detail, tag.
    pub fn heartbeat(secret: &str, timestamp_ns: u64, detail: [u8; 8]) -> Vec<u8> {
        let mut m = vec![0xF7, 1, 1, 0, 0, 0, 0, 0];
        m.extend_from_slice(&key_id(secret));
        m.extend_from_slice(&timestamp_ns.to_be_bytes());
        m.extend_from_slice(&detail);
        let tag = tag(secret, &m);
        m.extend_from_slice(&tag);
        m
    }

    /// Checks a broker→client message by hand: marker, version, type, id, tag.
    pub fn verify(secret: &str, msg: &[u8], kind: u8) -> Result<(), String> {
        if msg.len() != 40 {
            return Err(format!("{} bytes, not 40", msg.len()));
        }
        if msg[0..3] != [0xF7, 1, kind] {
            return Err(format!("header {:02x?}, wanted [f7, 01, {kind:02x}]", &msg[0..3]));
        }
        if msg[8..16] != key_id(secret) {
            return Err("wrong key id".into());
        }
        if msg[32..40] != tag(secret, &msg[..32]) {
            return Err("wrong tag".into());
        }
        Ok(())
    }
}

/// The `footunnel` binary next to this test executable (cargo builds both).
pub fn footunnel_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps").join("footunnel");
    assert!(bin.is_file(), "{} is missing: `cargo build -p footunnel` (cargo xtask test does)", bin.display());
    bin
}

/// The binary that runs `footunnel client` in the tests: the router build
/// (static musl, client only) that `cargo xtask test` names in
/// FOOTUNNEL_CLIENT, else the one beside this test ([`footunnel_bin`]).
pub fn client_bin() -> std::path::PathBuf {
    match std::env::var_os("FOOTUNNEL_CLIENT") {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            assert!(path.is_file(), "FOOTUNNEL_CLIENT={} is missing: `cargo xtask dist` builds it", path.display());
            path
        }
        None => footunnel_bin(),
    }
}

/// The binary for `footunnel ARGS…`: [`client_bin`] for the client.
fn bin_for(args: &[&str]) -> std::path::PathBuf {
    if args.first() == Some(&"client") { client_bin() } else { footunnel_bin() }
}

/// target/dist/footunnel-TRIPLE, as `cargo xtask dist` builds it.
pub fn dist_bin(triple: &str) -> std::path::PathBuf {
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dist").join(format!("footunnel-{triple}"));
    assert!(bin.is_file(), "{} is missing: run `cargo xtask dist` (cargo xtask test does)", bin.display());
    bin
}

/// A process started inside a network namespace, killed (SIGKILL) on drop.
pub struct NsProcess {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl NsProcess {
    /// Runs `footunnel ARGS…` in `ns` (network namespace only, so /sys/fs/bpf
    /// stays the one the test sees), logging to a file.
    pub fn footunnel(ns: &Netns, args: &[&str]) -> Self {
        let bin = bin_for(args);
        let netns = format!("--net=/run/netns/{}", ns.name);
        let mut wrapped: Vec<&str> = vec![&netns, bin.to_str().unwrap()];
        wrapped.extend_from_slice(args);
        Self::spawn("nsenter", &wrapped)
    }

    /// Like [`NsProcess::footunnel`], in a mount namespace of its own where
    /// `hosts` is bind-mounted over /etc/hosts: a name resolution the test
    /// controls (rewrite the file in place, keeping its inode).
    pub fn footunnel_with_hosts(ns: &Netns, hosts: &std::path::Path, args: &[&str]) -> Self {
        let bin = bin_for(args);
        let netns = format!("--net=/run/netns/{}", ns.name);
        let mut wrapped: Vec<&str> = vec![
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec "$@""#,
            hosts.to_str().unwrap(),
            "nsenter",
            &netns,
            bin.to_str().unwrap(),
        ];
        wrapped.extend_from_slice(args);
        Self::spawn("unshare", &wrapped)
    }

    /// `PROGRAM ARGS…` in `ns` (network namespace only), logging to a file.
    pub fn run_in(ns: &Netns, program: &str, args: &[&str]) -> Self {
        let netns = format!("--net=/run/netns/{}", ns.name);
        let mut wrapped: Vec<&str> = vec![&netns, program];
        wrapped.extend_from_slice(args);
        Self::spawn("nsenter", &wrapped)
    }

    fn spawn(program: &str, args: &[&str]) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "footunnel-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        NsProcess { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, or fails with the log.
    pub fn wait_for(&mut self, needle: &str, timeout: std::time::Duration) {
        self.wait_for_since(0, needle, timeout);
    }

    /// Where the log ends now: `wait_for_since` then looks only at what
    /// comes after (a line logged earlier for another reason must not count).
    pub fn mark(&self) -> usize {
        self.log().len()
    }

    /// Waits until the log after `mark` contains `needle`, or fails with the log.
    pub fn wait_for_since(&mut self, mark: usize, needle: &str, timeout: std::time::Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if self.log().get(mark..).is_some_and(|after| after.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("footunnel exited ({status}) before logging {needle:?}:\n{}", self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("footunnel did not log {needle:?} within {timeout:?}:\n{}", self.log());
    }

    /// SIGTERM, as a service manager stops a daemon (keepalived then gives
    /// its address back); SIGKILL if it has not exited within 5 s.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill9();
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `footunnel ARGS…` in `ns` to completion: (success, stdout+stderr).
/// A command that has not exited after 30 s fails the test (a broker that
/// should have refused to start would otherwise hang it).
pub fn footunnel_once(ns: &Netns, args: &[&str]) -> (bool, String) {
    let mut p = NsProcess::footunnel(ns, args);
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().expect("wait for footunnel") {
            return (status.success(), p.log());
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "`footunnel {}` did not exit within 30 s:\n{}",
            args.join(" "),
            p.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Seconds of the day at which a footunnel log line containing `needle`,
/// after line `from`, was written (logs carry RFC 3339 UTC timestamps).
pub fn log_seconds(log: &str, from: usize, needle: &str) -> Option<f64> {
    let line = log.lines().skip(from).find(|l| l.contains(needle))?;
    let time = line.split('T').nth(1)?.split('Z').next()?;
    time.split(':').map(|p| p.parse::<f64>().ok()).try_fold(0.0, |acc, x| Some(acc * 60.0 + x?))
}

/// Under `cargo xtask bench` (FOOTUNNEL_BENCH_OUT set): how many rounds a
/// measured scenario repeats; one otherwise.
pub fn bench_rounds() -> usize {
    if std::env::var_os("FOOTUNNEL_BENCH_OUT").is_some() { 5 } else { 1 }
}

/// Under `cargo xtask bench`: a test's figures, as `NAME.json` in the
/// directory the bench reads them from.
pub fn bench_out(name: &str, value: &serde_json::Value) {
    if let Some(dir) = std::env::var_os("FOOTUNNEL_BENCH_OUT") {
        let file = std::path::Path::new(&dir).join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(value).unwrap())
            .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }
}

/// Under `cargo xtask bench`: a scenario's times over its rounds, seconds.
pub fn bench_times(name: &str, times: &[f64]) {
    bench_out(name, &serde_json::json!({ "seconds": times }));
}

/// `footunnel unload` for a test's broker; failures are ignored, as a
/// test that already failed may have left nothing to unload.
pub fn unload(pin_dir: &str, state_dir: &str) {
    let _ = Command::new(footunnel_bin()).args(["unload", "--pin-dir", pin_dir, "--state-dir", state_dir]).output();
}
