use std::net::{IpAddr, Ipv4Addr};

use footunnel_tests::{Netns, require_vm};

use crate::broker::read_link;
use netlink_packet_route::link::{InfoKind, TunnelEncapType};

#[test]
fn fou_ipip_link_parameters_read_back_over_rtnetlink() {
    require_vm();
    let broker = Netns::new("broker");
    broker.ip("link add up0 type dummy");
    broker.ip("addr add 198.51.100.1/24 dev up0");
    broker.ip("link set up0 up");
    broker.ip("fou add port 42424 ipproto 4");
    broker.ip("link add fou0 type ipip remote 203.0.113.9 local 198.51.100.1 ttl 64 \
         encap fou encap-sport 42424 encap-dport 40001");
    assert!(broker.ip("fou show").contains("port 42424 ipproto 4"), "the FoU listener exists");

    let link = read_link(&broker, "fou0").expect("fou0 reads back");
    assert_eq!(link.kind, InfoKind::IpIp);
    assert_eq!(link.remote(), Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9))));
    assert_eq!(link.local(), Some(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))));
    assert_eq!(link.ttl(), Some(64));
    assert_eq!(link.encap_type(), Some(TunnelEncapType::Fou));
    assert_eq!(link.encap_sport(), Some(42424));
    assert_eq!(link.encap_dport(), Some(40001));
}

#[test]
fn reading_a_missing_or_non_tunnel_link_names_the_problem() {
    require_vm();
    let broker = Netns::new("broker");
    broker.ip("link add up0 type dummy");
    let missing = read_link(&broker, "fou9").unwrap_err();
    assert!(format!("{missing:#}").contains("no link named \"fou9\""), "{missing:#}");
    let wrong = read_link(&broker, "up0").unwrap_err();
    assert!(format!("{wrong:#}").contains("not an ipip, sit or ip6tnl tunnel"), "{wrong:#}");
}
