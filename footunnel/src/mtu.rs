//! The tunnel MTU both ends agree on (docs/protocol.md, PROBE): its
//! bounds, and the check of an MTU one end asks the other to apply.
//! FoU puts the inner packet right after the UDP header, so a PROBE whose
//! UDP payload is L bytes stands for an inner packet of L bytes: the
//! largest L that passes is the tunnel's MTU.

/// Outer headers around the inner packet: IPv4 (20) or IPv6 (40), and UDP (8).
pub const fn outer_overhead(outer_ipv6: bool) -> u16 {
    if outer_ipv6 { 48 } else { 28 }
}

/// The smallest inner MTU a tunnel may have: what IPv6 needs of every link
/// (1280) if the tunnel can carry IPv6 (sit, ip6tnl), else the IPv4
/// datagram every host must accept (576).
pub const fn floor(carries_ipv6: bool) -> u16 {
    if carries_ipv6 { 1280 } else { 576 }
}

/// The largest inner MTU a path over an interface of `device_mtu` allows.
pub fn ceiling(device_mtu: u32, outer_ipv6: bool) -> u16 {
    device_mtu.saturating_sub(u32::from(outer_overhead(outer_ipv6))).min(u32::from(u16::MAX)) as u16
}

/// `asked` if it lies in [`floor`, `ceiling`]; otherwise why not, with the fix.
pub fn check(asked: u16, floor: u16, ceiling: u16) -> Result<u16, String> {
    if asked < floor {
        return Err(format!(
            "MTU {asked} is below {floor}, the least this tunnel may have{}; the path is too small for it: \
             fix the path, or use a tunnel that carries {}",
            if floor == 1280 { " (IPv6 needs 1280 of every link)" } else { " (IPv4's 576)" },
            if floor == 1280 { "IPv4 only (ipip)" } else { "less" }
        ));
    }
    if asked > ceiling {
        return Err(format!(
            "MTU {asked} is above {ceiling}, what the uplink allows after the outer headers; it cannot pass here"
        ));
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_outer_family_and_what_the_tunnel_carries() {
        assert_eq!((ceiling(1500, false), ceiling(1500, true), ceiling(1492, false)), (1472, 1452, 1464));
        assert_eq!(ceiling(20, false), 0);
        assert_eq!(ceiling(9000, false), 8972);
        assert_eq!((floor(false), floor(true)), (576, 1280));
    }

    #[test]
    fn an_mtu_outside_the_bounds_is_refused_with_the_reason() {
        assert_eq!(check(1464, 576, 1472), Ok(1464));
        assert_eq!(check(576, 576, 1472), Ok(576));
        assert_eq!(check(1472, 576, 1472), Ok(1472));
        let low = check(575, 576, 1472).unwrap_err();
        assert!(low.contains("below 576") && low.contains("IPv4's 576"), "{low}");
        let sit = check(1200, 1280, 1472).unwrap_err();
        assert!(sit.contains("IPv6 needs 1280"), "{sit}");
        let high = check(1473, 576, 1472).unwrap_err();
        assert!(high.contains("above 1472"), "{high}");
    }
}
