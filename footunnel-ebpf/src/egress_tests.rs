//! The shared-device transmit path against the in-memory maps of the path
//! tests: the endpoint a heartbeat records is where the next packet goes.

use super::*;
use crate::path::{
    process,
    tests::{BROKER, CLIENT, MemEnv, NOW, env, heartbeat, udp},
};

/// An inner IPv4 packet from the broker side to `dst`, `len` bytes long.
fn inner_to(dst: [u8; 4], len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 1;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&dst);
    p
}

fn shared_env() -> MemEnv {
    let env = env();
    env.shared_uplink.set(2);
    env
}

/// RFC 1071: the one's-complement sum over a header with its checksum is all ones.
fn checksum_holds(header: &[u8]) -> bool {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn a_packet_leaves_for_the_endpoint_the_latest_heartbeat_recorded() {
    let env = shared_env();
    let packet = inner_to([10, 0, 0, 2], 84);
    assert_eq!(
        outer_headers(&packet[..], 84, &env.settings(), &env),
        Err(Counter::EgressNoEndpoint),
        "no heartbeat yet"
    );

    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    let h = outer_headers(&packet[..], 84, &env.settings(), &env).unwrap();
    assert_eq!(h[0], 0x45);
    assert_eq!(u16::from_be_bytes([h[2], h[3]]), 84 + 28, "total length");
    assert_eq!(h[9], 17, "UDP");
    assert_eq!((&h[12..16], &h[16..20]), (&BROKER[..], &CLIENT[..]), "from the tunnel's local address to the endpoint");
    assert!(checksum_holds(&h[..20]), "IPv4 header checksum: {:02x?}", &h[..20]);
    assert_eq!(u16::from_be_bytes([h[20], h[21]]), 42424, "from the FoU port");
    assert_eq!(u16::from_be_bytes([h[22], h[23]]), 40001, "to the endpoint's port");
    assert_eq!(u16::from_be_bytes([h[24], h[25]]), 84 + 8, "UDP length");

    // The NAT moves the client's port: the very next packet follows.
    process(&udp(CLIENT, 40777, 42424, &heartbeat(NOW + 1))[..], &env);
    let h = outer_headers(&packet[..], 84, &env.settings(), &env).unwrap();
    assert_eq!(u16::from_be_bytes([h[22], h[23]]), 40777);
    // A forged heartbeat from elsewhere moves nothing.
    let mut forged = heartbeat(NOW + 2);
    forged[39] ^= 1;
    process(&udp([203, 0, 113, 66], 1, 42424, &forged)[..], &env);
    assert_eq!(outer_headers(&packet[..], 84, &env.settings(), &env).unwrap(), h);
}

#[test]
fn packets_no_tunnel_owns_or_not_ipv4_do_not_leave() {
    let env = shared_env();
    process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env);
    assert_eq!(
        outer_headers(&inner_to([10, 9, 9, 9], 84)[..], 84, &env.settings(), &env),
        Err(Counter::EgressNoTunnel)
    );
    let mut v6 = inner_to([10, 0, 0, 2], 84);
    v6[0] = 0x60;
    assert_eq!(outer_headers(&v6[..], 84, &env.settings(), &env), Err(Counter::EgressNoTunnel));
    assert_eq!(outer_headers(&[0x45u8; 10][..], 10, &env.settings(), &env), Err(Counter::EgressNoTunnel), "truncated");
}
