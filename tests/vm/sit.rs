//! IPv6 inside IPv4 FoU (sit, ipproto 41) end to end under a real NAT: the
//! client's IPv6 prefix reaches the broker's and follows the client through
//! its own address change and the NAT's address and port changes, the
//! latter found by CHALLENGEs that the inner IPv6 source drives.

use std::time::{Duration, Instant};

use footunnel_tests::{Netns, NsProcess, footunnel_once, require_vm, veth};

use crate::e2e::{flush_conntrack, nft, ping_within, sysctl};

const SECRET: &str = "the sit tunnel's secret, long enough";

#[test]
fn a_sit_tunnel_carries_ipv6_under_nat_through_address_and_port_changes() {
    require_vm();
    let broker = Netns::new("sbroker");
    let nat = Netns::new("snat");
    let client = Netns::new("sclient");
    veth(&nat, "pub0", "203.0.113.1/24", &broker, "up0", "203.0.113.100/24");
    veth(&nat, "lan0", "192.0.2.1/29", &client, "up0", "192.0.2.2/29");
    client.ip("route add default via 192.0.2.1");
    sysctl(&client, "net.ipv4.conf.all.promote_secondaries=1");
    sysctl(&client, "net.ipv4.conf.up0.promote_secondaries=1");
    sysctl(&nat, "net.ipv4.ip_forward=1");
    sysctl(&nat, "net.ipv4.conf.all.promote_secondaries=1");
    sysctl(&nat, "net.ipv4.conf.pub0.promote_secondaries=1");
    nft(&nat, "masquerade");

    // As docs/broker.md says, with sit for ipip and ipproto 41 for the listeners.
    broker.ip("fou add port 42424 ipproto 41");
    broker.ip("link add sit6 type sit remote 192.0.2.200 local 203.0.113.100 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    broker.ip("addr add 2001:db8:6::1/64 dev sit6 nodad");
    broker.ip("link set sit6 up");
    client.ip("fou add port 42424 ipproto 41");
    client.ip("link add sit6 type sit remote 203.0.113.100 ttl 64 encap fou encap-sport 42424 encap-dport 42424");
    client.ip("addr add 2001:db8:6::2/64 dev sit6 nodad");
    client.ip("link set sit6 up");

    let pin_dir = format!("/sys/fs/bpf/ft-{}", broker.name);
    let state_dir = format!("/tmp/ft-{}", broker.name);
    let mut broker_p = NsProcess::footunnel(
        &broker,
        &["broker", "-v", "--pin-dir", &pin_dir, "--state-dir", &state_dir, "sit6", SECRET],
    );
    broker_p.wait_for("broker running", Duration::from_secs(30));
    let (ok, show) = footunnel_once(&broker, &["show", "--state-dir", &state_dir]);
    assert!(ok && show.contains("peer prefixes: 2001:db8:6::/64"), "the inner IPv6 prefix is the link's:\n{show}");
    let start = Instant::now();
    let mut client_p = NsProcess::footunnel(
        &client,
        &["client", "-v", "--state-dir", &format!("{state_dir}-client"), "203.0.113.100", SECRET],
    );
    client_p.wait_for("the broker sees this end at 203.0.113.1:", Duration::from_secs(20));
    println!(
        "sit: first IPv6 reply after {:?}",
        ping_within(&client, "2001:db8:6::1", start, "first contact", &[&broker_p, &client_p])
    );

    // The client's own address changes: it notices and heartbeats at once.
    let t = Instant::now();
    client.ip("addr add 192.0.2.3/29 dev up0");
    client.ip("addr del 192.0.2.2/29 dev up0");
    client.ip("route replace default via 192.0.2.1");
    let took = ping_within(&client, "2001:db8:6::1", t, "client address change", &[&broker_p, &client_p]);
    println!("sit: client address change, IPv6 through the tunnel again after {took:?}");

    // The NAT's public address changes: only the data says so; a CHALLENGE finds it.
    let (bf, cf) = (broker_p.log().lines().count(), client_p.log().lines().count());
    let t = Instant::now();
    nat.ip("addr add 203.0.113.2/24 dev pub0");
    nat.ip("addr del 203.0.113.1/24 dev pub0");
    flush_conntrack(&nat);
    let took = ping_within(&client, "2001:db8:6::1", t, "NAT address change", &[&broker_p, &client_p]);
    println!("sit: NAT address change, IPv6 through the tunnel again after {took:?}");
    assert!(broker_p.log().lines().skip(bf).any(|l| l.contains("challenging")), "{}", broker_p.log());
    assert!(client_p.log().lines().skip(cf).any(|l| l.contains("challenged by the broker")), "{}", client_p.log());

    // The NAT's port mapping changes.
    let t = Instant::now();
    nft(&nat, "meta l4proto udp masquerade to :50000-50999");
    flush_conntrack(&nat);
    let took = ping_within(&client, "2001:db8:6::1", t, "NAT port change", &[&broker_p, &client_p]);
    println!("sit: NAT port change, IPv6 through the tunnel again after {took:?}");
    let (_, show) = footunnel_once(&broker, &["show", "--state-dir", &state_dir]);
    assert!(show.contains("endpoint: 203.0.113.2:50"), "the sit link follows the new port:\n{show}");
    let link = crate::broker::read_link(&broker, "sit6").unwrap();
    assert_eq!(link.local(), Some("203.0.113.100".parse().unwrap()), "re-pointing kept the sit link's local");
    assert_eq!(link.encap_sport(), Some(42424));
    drop(client_p);
    footunnel_tests::unload(&pin_dir, &state_dir);
}
