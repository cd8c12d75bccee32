//! What the broker says to the client, verified (docs/protocol.md): ACK,
//! ACK6, CHALLENGE, TIME and PROBE_ACK.

use std::net::{IpAddr, Ipv4Addr};

use footunnel_ebpf::wire::{
    ACK6_LEN, Acceptance, Ack6, ControlMessage, Kind, MESSAGE_LEN, Probe, Reject, check_ack6, check_header,
    check_signed, check_tunnel,
};

use crate::{os::datagram::Datagram, secret::TunnelIdentity};

/// A verified message from the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromBroker {
    /// ACK or ACK6: where the broker saw this end.
    Ack {
        timestamp_ns: u64,
        seen: std::net::SocketAddr,
    },
    Challenge {
        timestamp_ns: u64,
        nonce: [u8; 8],
    },
    /// TIME: the broker's clock, answering the heartbeat stamped `echo_ns`.
    Time {
        timestamp_ns: u64,
        echo_ns: u64,
    },
    /// PROBE_ACK: a PROBE stamped `echo_ns` passed, both ways, at its length.
    ProbeAck {
        echo_ns: u64,
        probe: Probe,
    },
}

impl FromBroker {
    pub fn timestamp_ns(&self) -> u64 {
        match self {
            FromBroker::Ack { timestamp_ns, .. }
            | FromBroker::Challenge { timestamp_ns, .. }
            | FromBroker::Time { timestamp_ns, .. } => *timestamp_ns,
            // An echo of our own clock, not the broker's.
            FromBroker::ProbeAck { .. } => 0,
        }
    }
}

/// Checks a message from the broker: an ACK (40 bytes), ACK6 (56),
/// CHALLENGE (40) or TIME (40) for our tunnel, correctly tagged, newer than
/// the last one accepted, fresh (TIME excepted: it comes because our clock
/// may be wrong, and [`clock::Clock::correct`] checks its echo instead).
pub fn verify_from_broker(
    payload: &[u8],
    identity: &TunnelIdentity,
    last_timestamp_ns: u64,
    now_ns: u64,
    window_ns: u64,
) -> Result<FromBroker, Reject> {
    if payload.len() >= MESSAGE_LEN && payload[2] == Kind::ProbeAck as u8 {
        return verify_probe_ack(payload, identity);
    }
    if let Ok(bytes) = <&[u8; ACK6_LEN]>::try_from(payload) {
        let msg = Ack6::from_bytes(bytes);
        let rules = Acceptance { expected: Kind::Ack6, now_ns, window_ns };
        if msg.key_id() != identity.id && msg.kind == Kind::Ack6 as u8 {
            return Err(Reject::UnknownTunnel);
        }
        check_ack6(&msg, identity.sip_key(), last_timestamp_ns, &rules)?;
        let seen = std::net::SocketAddr::new(std::net::Ipv6Addr::from(msg.addr).into(), msg.port());
        return Ok(FromBroker::Ack { timestamp_ns: msg.timestamp_ns(), seen });
    }
    let bytes: &[u8; MESSAGE_LEN] = payload.try_into().map_err(|_| Reject::Malformed)?;
    let msg = ControlMessage::from_bytes(bytes);
    let kind = match Kind::from_u8(msg.kind) {
        Some(k @ (Kind::Ack | Kind::Challenge | Kind::Time)) => k,
        _ => Kind::Ack,
    };
    check_header(&msg, kind)?;
    if msg.key_id() != identity.id {
        return Err(Reject::UnknownTunnel);
    }
    let window_ns = if kind == Kind::Time { 0 } else { window_ns };
    check_tunnel(&msg, &identity.sip_key(), last_timestamp_ns, &Acceptance { expected: kind, now_ns, window_ns })?;
    let d = msg.detail;
    Ok(match kind {
        Kind::Challenge => FromBroker::Challenge { timestamp_ns: msg.timestamp_ns(), nonce: d },
        Kind::Time => FromBroker::Time { timestamp_ns: msg.timestamp_ns(), echo_ns: u64::from_be_bytes(d) },
        _ => FromBroker::Ack {
            timestamp_ns: msg.timestamp_ns(),
            seen: std::net::SocketAddr::new(
                Ipv4Addr::new(d[0], d[1], d[2], d[3]).into(),
                u16::from_be_bytes([d[4], d[5]]),
            ),
        },
    })
}

/// A PROBE_ACK: its tag and its length. Neither freshness nor the
/// increasing rule apply: its timestamp is the PROBE's, which the caller
/// matches against the PROBEs it sent in the last 5 s.
fn verify_probe_ack(payload: &[u8], identity: &TunnelIdentity) -> Result<FromBroker, Reject> {
    let head: &[u8; MESSAGE_LEN] = payload[..MESSAGE_LEN].try_into().map_err(|_| Reject::Malformed)?;
    let msg = ControlMessage::view(head);
    check_header(msg, Kind::ProbeAck)?;
    if msg.key_id() != identity.id {
        return Err(Reject::UnknownTunnel);
    }
    check_signed(msg, &identity.sip_key())?;
    let probe = Probe::from_detail(msg.detail);
    if !probe.fits(payload.len()) {
        return Err(Reject::Malformed);
    }
    Ok(FromBroker::ProbeAck { echo_ns: msg.timestamp_ns(), probe })
}

/// The payload of `d` if it comes from the broker's FoU port to ours and
/// starts like a control message.
pub fn from_broker(d: &Datagram, broker: IpAddr, sport: u16, dport: u16) -> Option<&[u8]> {
    (d.src == broker && d.sport == dport && d.dport == sport && d.payload.first().is_some_and(|b| b >> 4 == 0xF))
        .then_some(d.payload.as_slice())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::client) const NOW: u64 = 1_790_000_000_000_000_000;

    pub(in crate::client) fn identity() -> TunnelIdentity {
        TunnelIdentity::derive("client test secret, long enough")
    }

    /// A message from the broker, signed with [`identity`]'s key.
    pub(in crate::client) fn from_broker(kind: Kind, ts: u64, detail: [u8; 8]) -> Vec<u8> {
        let id = identity();
        ControlMessage::new(kind, id.id, ts, detail).sign(id.sip_key()).to_bytes().to_vec()
    }

    #[test]
    fn a_time_is_accepted_whatever_our_clock_says_but_never_replayed_or_forged() {
        let id = identity();
        let window = 120_000_000_000;
        let two_days = 2 * 86_400_000_000_000;
        // Our clock is two days behind the broker's: the TIME is far outside
        // the window, and accepted all the same.
        let time = from_broker(Kind::Time, NOW, (NOW - two_days).to_be_bytes());
        let got = verify_from_broker(&time, &id, 0, NOW - two_days, window).unwrap();
        assert_eq!(got, FromBroker::Time { timestamp_ns: NOW, echo_ns: NOW - two_days });
        // An ACK that old is not.
        let ack = from_broker(Kind::Ack, NOW, [203, 0, 113, 5, 0x9c, 0x41, 0, 0]);
        assert_eq!(verify_from_broker(&ack, &id, 0, NOW - two_days, window), Err(Reject::Stale));
        // The same TIME again, or an older one: the increasing rule holds.
        assert_eq!(verify_from_broker(&time, &id, NOW, NOW - two_days, window), Err(Reject::Replay));
        let mut forged = time.clone();
        forged[20] ^= 1;
        assert_eq!(verify_from_broker(&forged, &id, 0, NOW - two_days, window), Err(Reject::BadTag));
        let other = TunnelIdentity::derive("another tunnel's secret, long enough");
        let theirs = ControlMessage::new(Kind::Time, other.id, NOW, [0; 8]).sign(other.sip_key()).to_bytes();
        assert_eq!(verify_from_broker(&theirs, &id, 0, NOW, window), Err(Reject::UnknownTunnel));
    }

    /// A PROBE_ACK of `len` bytes, signed with [`identity`]'s key.
    fn probe_ack(echo: u64, len: u16, mtu: u16) -> Vec<u8> {
        let (id, p) = (identity(), Probe { len, mtu });
        let mut bytes = vec![0; usize::from(len)];
        assert!(p.write(&ControlMessage::new(Kind::ProbeAck, id.id, echo, p.detail()).sign(id.sip_key()), &mut bytes));
        bytes
    }

    #[test]
    fn a_probe_ack_is_verified_by_tag_and_length_whatever_its_age() {
        let id = identity();
        let ack = probe_ack(NOW - 86_400_000_000_000, 1400, 1372);
        let got = verify_from_broker(&ack, &id, NOW, NOW, 120_000_000_000).unwrap();
        assert_eq!(
            got,
            FromBroker::ProbeAck { echo_ns: NOW - 86_400_000_000_000, probe: Probe { len: 1400, mtu: 1372 } }
        );
        let small = probe_ack(NOW, 40, 0);
        assert!(verify_from_broker(&small, &id, 0, NOW, 0).is_ok());
        // Cut short on the way, or grown: its length says it is not what was sent.
        assert_eq!(verify_from_broker(&ack[..1399], &id, 0, NOW, 0), Err(Reject::Malformed));
        assert_eq!(verify_from_broker(&[&ack[..], &[0]].concat(), &id, 0, NOW, 0), Err(Reject::Malformed));
        let mut forged = ack.clone();
        forged[26] ^= 1; // the MTU field
        assert_eq!(verify_from_broker(&forged, &id, 0, NOW, 0), Err(Reject::BadTag));
        let other = TunnelIdentity::derive("another tunnel's secret, long enough");
        assert_eq!(verify_from_broker(&ack, &other, 0, NOW, 0), Err(Reject::UnknownTunnel));
        // A 56-byte one is no ACK6.
        let ack56 = probe_ack(NOW, 56, 0);
        assert!(matches!(verify_from_broker(&ack56, &id, 0, NOW, 0), Ok(FromBroker::ProbeAck { .. })));
    }

    #[test]
    fn acks_and_challenges_are_verified() {
        let id = identity();
        let ack = from_broker(Kind::Ack, NOW, [203, 0, 113, 5, 0x9c, 0x41, 0, 0]);
        assert!(verify_from_broker(&ack, &id, 0, NOW, 120_000_000_000).is_ok());
        assert_eq!(verify_from_broker(&ack, &id, NOW, NOW, 120_000_000_000).unwrap_err(), Reject::Replay);
        let challenge = from_broker(Kind::Challenge, NOW + 1, [7; 8]);
        assert!(verify_from_broker(&challenge, &id, NOW, NOW, 120_000_000_000).is_ok());
        let heartbeat = from_broker(Kind::Heartbeat, NOW + 2, [0; 8]);
        assert_eq!(verify_from_broker(&heartbeat, &id, 0, NOW, 120_000_000_000).unwrap_err(), Reject::BadType);
        let mut forged = from_broker(Kind::Challenge, NOW + 3, [7; 8]);
        forged[24] ^= 1;
        assert_eq!(verify_from_broker(&forged, &id, 0, NOW, 120_000_000_000).unwrap_err(), Reject::BadTag);
        let other = TunnelIdentity::derive("some other tunnel's secret");
        assert_eq!(verify_from_broker(&ack, &other, 0, NOW, 120_000_000_000).unwrap_err(), Reject::UnknownTunnel);
        assert_eq!(verify_from_broker(&ack[..39], &id, 0, NOW, 120_000_000_000).unwrap_err(), Reject::Malformed);
    }

    #[test]
    fn an_ack6_carries_the_ipv6_endpoint_and_is_verified_like_an_ack() {
        let id = identity();
        let addr: std::net::Ipv6Addr = "2001:db8:10::5".parse().unwrap();
        let ack6 = Ack6::new(id.id, NOW, addr.octets(), 40001).sign(id.sip_key()).to_bytes();
        let msg = verify_from_broker(&ack6, &id, 0, NOW, 120_000_000_000).unwrap();
        assert_eq!(msg, FromBroker::Ack { timestamp_ns: NOW, seen: "[2001:db8:10::5]:40001".parse().unwrap() });
        assert_eq!(verify_from_broker(&ack6, &id, NOW, NOW, 120_000_000_000).unwrap_err(), Reject::Replay);
        let mut forged = ack6;
        forged[30] ^= 1;
        assert_eq!(verify_from_broker(&forged, &id, 0, NOW, 120_000_000_000).unwrap_err(), Reject::BadTag);
        let other = TunnelIdentity::derive("some other tunnel's secret");
        assert_eq!(verify_from_broker(&ack6, &other, 0, NOW, 120_000_000_000).unwrap_err(), Reject::UnknownTunnel);
        assert_eq!(verify_from_broker(&ack6[..55], &id, 0, NOW, 120_000_000_000).unwrap_err(), Reject::Malformed);
    }
}
