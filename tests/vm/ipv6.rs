//! An IPv6-only client: ip6tnl over FoU over IPv6 (fou6), behind a NAT66
//! that changes its public address and port. The broker's uplink program
//! verifies heartbeats over IPv6 (the client's tunnel data carries an
//! ip6tnl destination-options header, which the program walks), records the
//! 128-bit endpoint, re-points the ip6tnl link keeping every other
//! parameter, and answers with ACK6. Forged, stale and replayed heartbeats
//! over IPv6 change nothing.

use std::time::{Duration, Instant};

use footunnel::os::rawudp::RawUdp;
use footunnel_tests::{Netns, NsProcess, by_hand, footunnel_once, require_vm, sh, veth};

use crate::e2e::{flush_conntrack, ping_within, sysctl};

const SECRET: &str = "the ip6tnl tunnel's secret, long enough";
const BROKER: &str = "2001:db8:100::100";

/// The NAT66's rule: masquerade out of pub0, with `how` first if given.
fn nft6(nat: &Netns, how: &str) {
    let ruleset = format!(
        "flush ruleset\ntable ip6 nat {{\n chain post {{\n  type nat hook postrouting priority srcnat;\n  oifname \"pub0\" {how}\n  oifname \"pub0\" masquerade\n }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("{}.nft6", nat.name));
    std::fs::write(&file, ruleset).unwrap();
    sh("ip", &["netns", "exec", &nat.name, "nft", "-f", file.to_str().unwrap()]);
}

fn show(broker: &Netns, state_dir: &str) -> String {
    let (ok, out) = footunnel_once(broker, &["show", "--state-dir", state_dir]);
    assert!(ok, "footunnel show failed:\n{out}");
    out
}

/// The `endpoint: …` line of `footunnel show`.
fn endpoint_line(show: &str) -> String {
    show.lines().find(|l| l.trim_start().starts_with("endpoint:")).unwrap_or("no endpoint line").trim().to_owned()
}

/// The value of counter `name` in `footunnel show`'s counters line (0 if absent).
fn counter(show: &str, name: &str) -> u64 {
    let line = show.lines().find(|l| l.trim_start().starts_with("counters:")).unwrap_or("");
    line.split(['|', ',', ':'])
        .filter_map(|part| part.trim().strip_prefix(name)?.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

#[test]
fn an_ipv6_only_client_roams_through_nat66_address_and_port_changes_and_forgeries_change_nothing() {
    require_vm();
    let broker = Netns::new("6broker");
    let nat = Netns::new("6nat");
    let client = Netns::new("6client");
    veth(&nat, "pub0", "2001:db8:100::1/64", &broker, "up0", &format!("{BROKER}/64"));
    veth(&nat, "lan0", "2001:db8:200::1/64", &client, "up0", "2001:db8:200::2/64");
    for ns in [&broker, &nat, &client] {
        // Addresses usable at once (no duplicate address detection in a lab).
        sysctl(ns, "net.ipv6.conf.all.accept_dad=0");
    }
    client.ip("-6 route add default via 2001:db8:200::1");
    broker.ip("-6 route add default via 2001:db8:100::1");
    sysctl(&nat, "net.ipv6.conf.all.forwarding=1");
    nft6(&nat, "counter");

    // As `footunnel client --help` says: ip6tnl over an IPv6 FoU listener.
    broker.ip("fou add port 42424 ipproto 4 -6");
    broker.ip(&format!(
        "link add fou6 type ip6tnl mode ipip6 remote 2001:db8:ffff::1 local {BROKER} ttl 64 \
         encap fou encap-sport 42424 encap-dport 42424"
    ));
    broker.ip("addr add 10.6.0.1/30 dev fou6");
    broker.ip("link set fou6 up");
    let before = crate::broker::read_link(&broker, "fou6").unwrap();
    client.ip("fou add port 42424 ipproto 4 -6");
    // No local address: ip6tnl sends only with one (the kernel checks each
    // packet), and the client sets it, and follows this host's address.
    client.ip(&format!(
        "link add fou6 type ip6tnl mode ipip6 remote {BROKER} ttl 64 encap fou encap-sport 42424 encap-dport 42424"
    ));
    client.ip("addr add 10.6.0.2/30 dev fou6");
    client.ip("link set fou6 up");

    let pin_dir = format!("/sys/fs/bpf/ft-{}", broker.name);
    let state_dir = format!("/tmp/ft-{}", broker.name);
    let mut broker_p = NsProcess::footunnel(
        &broker,
        &["broker", "-v", "--pin-dir", &pin_dir, "--state-dir", &state_dir, "fou6", SECRET],
    );
    broker_p.wait_for("broker running", Duration::from_secs(30));
    let start = Instant::now();
    let mut client_p =
        NsProcess::footunnel(&client, &["client", "-v", "--state-dir", &format!("{state_dir}-client"), BROKER, SECRET]);
    // ACK6: the client learns its public IPv6 endpoint, the NAT66's address.
    client_p.wait_for("the broker sees this end at [2001:db8:100::1]:", Duration::from_secs(20));
    println!(
        "ipv6: first reply after {:?}",
        ping_within(&client, "10.6.0.1", start, "first contact", &[&broker_p, &client_p])
    );
    client_p.wait_for("link fou6: local address 2001:db8:200::2 (was none)", Duration::from_secs(1));
    let first = show(&broker, &state_dir);
    assert!(endpoint_line(&first).starts_with("endpoint: [2001:db8:100::1]:"), "show prints [addr]:port:\n{first}");
    assert!(counter(&first, "fou_data") > 0, "tunnel data (behind its destination-options header) seen:\n{first}");

    // The client's own address changes: it moves its link's local address
    // there and heartbeats at once.
    let cf = client_p.mark();
    let t = Instant::now();
    client.ip("addr add 2001:db8:200::3/64 dev up0 nodad");
    client.ip("addr del 2001:db8:200::2/64 dev up0");
    let took = ping_within(&client, "10.6.0.1", t, "client address change", &[&broker_p, &client_p]);
    println!("ipv6: client address change, traffic again after {took:?}");
    client_p.wait_for_since(
        cf,
        "link fou6: local address 2001:db8:200::3 (was 2001:db8:200::2)",
        Duration::from_secs(1),
    );

    // The NAT's public address changes: only the data says so; a CHALLENGE
    // (sent over IPv6) finds it.
    let (bf, cf) = (broker_p.mark(), client_p.mark());
    let t = Instant::now();
    nat.ip("addr add 2001:db8:100::2/64 dev pub0 nodad");
    nat.ip("addr del 2001:db8:100::1/64 dev pub0");
    flush_conntrack(&nat);
    let took = ping_within(&client, "10.6.0.1", t, "NAT66 address change", &[&broker_p, &client_p]);
    println!("ipv6: NAT66 address change, traffic again after {took:?}");
    broker_p.wait_for_since(bf, "challenging", Duration::from_secs(5));
    client_p.wait_for_since(cf, "challenged by the broker", Duration::from_secs(5));
    client_p.wait_for_since(cf, "the broker sees this end at [2001:db8:100::2]:", Duration::from_secs(5));

    // The NAT's port mapping changes.
    let t = Instant::now();
    nft6(&nat, "meta l4proto udp masquerade to :50000-50999");
    flush_conntrack(&nat);
    let took = ping_within(&client, "10.6.0.1", t, "NAT66 port change", &[&broker_p, &client_p]);
    println!("ipv6: NAT66 port change, traffic again after {took:?}");
    let moved = show(&broker, &state_dir);
    assert!(endpoint_line(&moved).starts_with("endpoint: [2001:db8:100::2]:50"), "follows the new port:\n{moved}");
    let link = crate::broker::read_link(&broker, "fou6").unwrap();
    assert_eq!(link.remote(), Some("2001:db8:100::2".parse().unwrap()));
    assert_eq!(link.params_but_endpoint(), before.params_but_endpoint(), "re-pointing kept every other parameter");

    // Forged, stale and replayed heartbeats over IPv6, from the client's
    // side of the NAT and another port: dropped, counted, nothing moves.
    let endpoint = endpoint_line(&moved);
    let (stale_before, tag_before, replay_before) =
        (counter(&moved, "stale"), counter(&moved, "bad_tag"), counter(&moved, "replay"));
    let now = footunnel::now_ns();
    let mut forged = by_hand::heartbeat(SECRET, now, [0; 8]);
    forged[39] ^= 1;
    let stale = by_hand::heartbeat(SECRET, now - 300_000_000_000, [0; 8]);
    // Older than the last accepted heartbeat, yet fresh: a replay.
    let replayed = by_hand::heartbeat(SECRET, now - 60_000_000_000, [0; 8]);
    client.run(|| {
        let sock = RawUdp::open6().unwrap();
        for payload in [&forged, &stale, &replayed] {
            sock.send(
                std::net::Ipv6Addr::UNSPECIFIED,
                5555,
                BROKER.parse::<std::net::Ipv6Addr>().unwrap(),
                42424,
                payload,
            )
            .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = show(&broker, &state_dir);
    assert_eq!(endpoint_line(&after), endpoint, "a forgery moved the endpoint:\n{after}");
    assert_eq!(
        (counter(&after, "stale"), counter(&after, "bad_tag"), counter(&after, "replay")),
        (stale_before + 1, tag_before + 1, replay_before + 1),
        "each forgery is dropped and counted by its reason:\n{after}"
    );
    assert_eq!(crate::broker::read_link(&broker, "fou6").unwrap().remote(), link.remote());
    ping_within(&client, "10.6.0.1", Instant::now(), "after the forgeries", &[&broker_p, &client_p]);
    drop(client_p);
    footunnel_tests::unload(&pin_dir, &state_dir);
}
