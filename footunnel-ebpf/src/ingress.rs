//! Shared-device mode's receive check: what the external-mode device
//! decapsulated passes only if its outer source is the recorded endpoint of
//! the tunnel that owns its inner source. The uplink program checks FoU
//! there by address and port; this catches every other way in — another
//! interface, a local process over loopback — by address, the most the
//! device's tunnel metadata keeps (FoU's ports are gone by then).

use crate::{
    egress::{INNER_SRC, inner_endpoint},
    maps::Counter,
    packet::PacketBytes,
    path::Env,
};

/// Checks the inner IPv4 packet at the start of `pkt`, which arrived in
/// outer IPv4 from `outer_src`; the counter saying why not, if not.
#[inline(always)]
pub fn admit<P: PacketBytes + ?Sized, E: Env>(pkt: &P, outer_src: [u8; 4], env: &E) -> Result<(), Counter> {
    // The device and its listener carry IPv4 inside only.
    match inner_endpoint(pkt, INNER_SRC, env) {
        Ok((_, endpoint, _)) if endpoint == outer_src => Ok(()),
        _ => Err(Counter::Spoofed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{Verdict, process, tests::*};

    fn inner(src: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&BROKER);
        p
    }

    #[test]
    fn only_the_endpoint_of_the_inner_sources_tunnel_gets_in() {
        let env = env();
        assert_eq!(admit(&inner([10, 0, 0, 2])[..], CLIENT, &env), Err(Counter::Spoofed), "no endpoint yet");
        assert_eq!(process(&udp(CLIENT, 40001, 42424, &heartbeat(NOW))[..], &env), Verdict::Drop);
        assert_eq!(admit(&inner([10, 0, 0, 2])[..], CLIENT, &env), Ok(()));
        assert_eq!(admit(&inner([10, 0, 0, 2])[..], [192, 0, 2, 66], &env), Err(Counter::Spoofed), "a stranger");
        assert_eq!(admit(&inner([10, 0, 0, 2])[..], BROKER, &env), Err(Counter::Spoofed), "loopback");
        assert_eq!(admit(&inner([172, 16, 0, 1])[..], CLIENT, &env), Err(Counter::Spoofed), "nobody's source");
        let mut v6 = inner([10, 0, 0, 2]);
        v6[0] = 0x60;
        assert_eq!(admit(&v6[..], CLIENT, &env), Err(Counter::Spoofed), "IPv6 inside");
        assert_eq!(admit(&[0x45u8; 8][..], CLIENT, &env), Err(Counter::Spoofed), "truncated");
    }
}
