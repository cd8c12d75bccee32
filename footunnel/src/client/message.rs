//! The broker's messages as the client's raw socket receives them; their
//! checks are the shared library's (`footunnel_ebpf::from_broker`).

use std::net::IpAddr;

pub use footunnel_ebpf::from_broker::FromBroker;
use footunnel_ebpf::{from_broker, wire::Reject};

use crate::{os::datagram::Datagram, secret::TunnelIdentity};

/// [`from_broker::verify`] for this tunnel's identity.
pub fn verify_from_broker(
    payload: &[u8],
    identity: &TunnelIdentity,
    last_timestamp_ns: u64,
    now_ns: u64,
    window_ns: u64,
) -> Result<FromBroker, Reject> {
    from_broker::verify(payload, (identity.id, &identity.sip_key()), last_timestamp_ns, now_ns, window_ns)
}

/// The payload of `d` if it comes from the broker's FoU port to ours and
/// starts like a control message.
pub fn from_broker(d: &Datagram, broker: IpAddr, sport: u16, dport: u16) -> Option<&[u8]> {
    (d.src == broker && d.sport == dport && d.dport == sport && d.payload.first().is_some_and(|b| b >> 4 == 0xF))
        .then_some(d.payload.as_slice())
}

#[cfg(test)]
pub(super) mod tests {
    use footunnel_ebpf::wire::{Ack6, ControlMessage, Kind, Probe};

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
