//! What the client accepts from the broker (docs/protocol.md): ACK, ACK6,
//! CHALLENGE, TIME and PROBE_ACK, checked by the rules of [`crate::wire`]
//! that the data plane applies to heartbeats the other way.

use core::net::Ipv4Addr;

use crate::{
    siphash::SipKey,
    wire::{
        ACK6_LEN, Acceptance, Ack6, ControlMessage, Kind, MESSAGE_LEN, Probe, Reject, check_ack6, check_header,
        check_signed, check_tunnel,
    },
};

/// A verified message from the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromBroker {
    /// ACK or ACK6: where the broker saw this end.
    Ack {
        timestamp_ns: u64,
        seen: core::net::SocketAddr,
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
/// may be wrong, and the client checks its echo against the heartbeats it sent instead).
pub fn verify(
    payload: &[u8],
    identity: (u64, &SipKey),
    last_timestamp_ns: u64,
    now_ns: u64,
    window_ns: u64,
) -> Result<FromBroker, Reject> {
    let (key_id, key) = identity;
    if payload.len() >= MESSAGE_LEN && payload[2] == Kind::ProbeAck as u8 {
        return verify_probe_ack(payload, key_id, key);
    }
    if let Ok(bytes) = <&[u8; ACK6_LEN]>::try_from(payload) {
        let msg = Ack6::from_bytes(bytes);
        let rules = Acceptance { expected: Kind::Ack6, now_ns, window_ns };
        if msg.key_id() != key_id && msg.kind == Kind::Ack6 as u8 {
            return Err(Reject::UnknownTunnel);
        }
        check_ack6(&msg, *key, last_timestamp_ns, &rules)?;
        let seen = core::net::SocketAddr::new(core::net::Ipv6Addr::from(msg.addr).into(), msg.port());
        return Ok(FromBroker::Ack { timestamp_ns: msg.timestamp_ns(), seen });
    }
    let bytes: &[u8; MESSAGE_LEN] = payload.try_into().map_err(|_| Reject::Malformed)?;
    let msg = ControlMessage::from_bytes(bytes);
    let kind = match Kind::from_u8(msg.kind) {
        Some(k @ (Kind::Ack | Kind::Challenge | Kind::Time)) => k,
        _ => Kind::Ack,
    };
    check_header(&msg, kind)?;
    if msg.key_id() != key_id {
        return Err(Reject::UnknownTunnel);
    }
    let window_ns = if kind == Kind::Time { 0 } else { window_ns };
    check_tunnel(&msg, key, last_timestamp_ns, &Acceptance { expected: kind, now_ns, window_ns })?;
    let d = msg.detail;
    Ok(match kind {
        Kind::Challenge => FromBroker::Challenge { timestamp_ns: msg.timestamp_ns(), nonce: d },
        Kind::Time => FromBroker::Time { timestamp_ns: msg.timestamp_ns(), echo_ns: u64::from_be_bytes(d) },
        _ => FromBroker::Ack {
            timestamp_ns: msg.timestamp_ns(),
            seen: core::net::SocketAddr::new(
                Ipv4Addr::new(d[0], d[1], d[2], d[3]).into(),
                u16::from_be_bytes([d[4], d[5]]),
            ),
        },
    })
}

/// A PROBE_ACK: its tag and its length. Neither freshness nor the
/// increasing rule apply: its timestamp is the PROBE's, which the caller
/// matches against the PROBEs it sent in the last 5 s.
fn verify_probe_ack(payload: &[u8], key_id: u64, key: &SipKey) -> Result<FromBroker, Reject> {
    let head: &[u8; MESSAGE_LEN] = payload[..MESSAGE_LEN].try_into().map_err(|_| Reject::Malformed)?;
    let msg = ControlMessage::view(head);
    check_header(msg, Kind::ProbeAck)?;
    if msg.key_id() != key_id {
        return Err(Reject::UnknownTunnel);
    }
    check_signed(msg, key)?;
    let probe = Probe::from_detail(msg.detail);
    if !probe.fits(payload.len()) {
        return Err(Reject::Malformed);
    }
    Ok(FromBroker::ProbeAck { echo_ns: msg.timestamp_ns(), probe })
}
