//! Brokers that serve the same tunnels (behind one anycast or VRRP
//! address) must route each the same way: a tunnel's secret on two brokers
//! with other prefixes sends its traffic to different places depending on
//! which broker the client reaches. One broker cannot see another's
//! configuration, so they ask each other (`peers`): at start and reload a
//! PEER_QUERY per tunnel and peer, tagged with the tunnel's key (only a
//! holder of the secret can ask or answer) and carrying a digest of its
//! prefixes; a PEER_ANSWER echoes the query's timestamp with the
//! answerer's digest. A disagreement refuses the start or reload, with the
//! fix; a peer that does not answer is a warning (it may be down).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use footunnel_ebpf::wire::{self, Acceptance, ControlMessage, Kind, MESSAGE_LEN};
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::{addr::Prefix, secret::TunnelIdentity};

/// How long a start or reload waits for the peers' answers.
const ANSWER_WAIT: Duration = Duration::from_secs(1);

/// What a broker tells its peers of one tunnel.
#[derive(Clone, Debug)]
pub(super) struct PeerTunnel {
    pub name: String,
    /// Each of its secrets (the next one too, during a rotation).
    pub identities: Vec<TunnelIdentity>,
    pub prefixes: Vec<Prefix>,
}

impl PeerTunnel {
    pub(super) fn of(config: &crate::config::Tunnel, prefixes: &[Prefix]) -> Self {
        PeerTunnel {
            name: config.name.clone(),
            identities: std::iter::once(config.identity).chain(config.next.iter().map(|n| n.identity)).collect(),
            prefixes: prefixes.to_vec(),
        }
    }

    fn digest(&self) -> [u8; 8] {
        prefix_digest(&self.prefixes)
    }

    fn prefix_list(&self) -> String {
        let mut p: Vec<String> = self.prefixes.iter().map(Prefix::to_string).collect();
        p.sort();
        p.join(", ")
    }
}

/// The first 8 bytes of SHA-256 over the prefixes, sorted, as text: the
/// same set gives the same digest in any order.
pub(super) fn prefix_digest(prefixes: &[Prefix]) -> [u8; 8] {
    let mut text: Vec<String> = prefixes.iter().map(Prefix::to_string).collect();
    text.sort();
    text.dedup();
    let digest = Sha256::new().chain_update(b"footunnel-v1 prefixes").chain_update([0]).chain_update(text.join(","));
    digest.finalize()[..8].try_into().expect("8 of 32 bytes")
}

pub(super) fn query(t: &PeerTunnel, now_ns: u64) -> [u8; MESSAGE_LEN] {
    let id = t.identities[0];
    ControlMessage::new(Kind::PeerQuery, id.id, now_ns, t.digest()).sign(id.sip_key()).to_bytes()
}

/// A query from a peer, verified: the tunnel it is about, and the answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Asked {
    pub tunnel: usize,
    pub agrees: bool,
    pub answer: [u8; MESSAGE_LEN],
}

/// A PEER_QUERY for one of `tunnels`, correctly tagged and fresh; `None`
/// for anything else (dropped: an unknown id may be a tunnel this broker
/// does not serve, and nothing unverified deserves an answer).
pub(super) fn on_query(tunnels: &[PeerTunnel], payload: &[u8], now_ns: u64, window_ns: u64) -> Option<Asked> {
    let bytes: &[u8; MESSAGE_LEN] = payload.try_into().ok()?;
    let msg = ControlMessage::from_bytes(bytes);
    wire::check_header(&msg, Kind::PeerQuery).ok()?;
    let (tunnel, id) = find(tunnels, msg.key_id())?;
    wire::check_signed(&msg, &id.sip_key()).ok()?;
    wire::check_fresh(&msg, &Acceptance { expected: Kind::PeerQuery, now_ns, window_ns }).ok()?;
    let ours = tunnels[tunnel].digest();
    let answer = ControlMessage::new(Kind::PeerAnswer, id.id, msg.timestamp_ns(), ours).sign(id.sip_key());
    Some(Asked { tunnel, agrees: msg.detail == ours, answer: answer.to_bytes() })
}

/// A PEER_ANSWER to a query we sent (`sent`: its timestamp per key id),
/// correctly tagged: (the tunnel, whether the peer's prefixes are ours).
pub(super) fn on_answer(tunnels: &[PeerTunnel], sent: &HashMap<u64, u64>, payload: &[u8]) -> Option<(usize, bool)> {
    let bytes: &[u8; MESSAGE_LEN] = payload.try_into().ok()?;
    let msg = ControlMessage::from_bytes(bytes);
    wire::check_header(&msg, Kind::PeerAnswer).ok()?;
    let (tunnel, id) = find(tunnels, msg.key_id())?;
    wire::check_signed(&msg, &id.sip_key()).ok()?;
    (sent.get(&msg.key_id()) == Some(&msg.timestamp_ns())).then(|| (tunnel, msg.detail == tunnels[tunnel].digest()))
}

fn find(tunnels: &[PeerTunnel], key_id: u64) -> Option<(usize, TunnelIdentity)> {
    tunnels.iter().enumerate().find_map(|(i, t)| t.identities.iter().find(|id| id.id == key_id).map(|id| (i, *id)))
}

/// The outcome of asking every peer: an error naming each disagreement and
/// its fix; warnings for peers that did not answer, or not for every tunnel.
pub(super) fn verdict(
    tunnels: &[PeerTunnel],
    peers: &[IpAddr],
    answers: &HashMap<IpAddr, HashMap<usize, bool>>,
) -> Result<Vec<String>> {
    let mut disagreements = Vec::new();
    let mut warnings = Vec::new();
    for peer in peers {
        let Some(theirs) = answers.get(peer) else {
            warnings.push(format!(
                "peer {peer} did not answer (down, or not listening on peer_port): its prefixes could not be \
                 compared with this broker's"
            ));
            continue;
        };
        for (i, t) in tunnels.iter().enumerate() {
            match theirs.get(&i) {
                Some(true) => {}
                Some(false) => disagreements.push(format!(
                    "tunnel {:?}: the broker at {peer} has its secret with other prefixes than this broker's ({})",
                    t.name,
                    t.prefix_list()
                )),
                None => warnings.push(format!(
                    "peer {peer} does not serve tunnel {:?} (or has another secret for it): a client reaching \
                     that broker is not heard",
                    t.name
                )),
            }
        }
    }
    if !disagreements.is_empty() {
        bail!(
            "{}: give every broker with a tunnel's secret the same peer_prefixes (or the same addresses on the \
             tunnel's link), or give the tunnel a secret of its own on each",
            disagreements.join("; ")
        );
    }
    Ok(warnings)
}

/// The socket brokers ask and answer each other on.
pub(super) struct PeerSocket {
    socket: UdpSocket,
    port: u16,
}

impl PeerSocket {
    /// Bound on every address at `port`; `None` when no peers are configured.
    pub(super) async fn bind(peers: &[IpAddr], port: u16) -> Result<Option<PeerSocket>> {
        if peers.is_empty() {
            return Ok(None);
        }
        // Both families on one socket; IPv4 alone on a host without IPv6.
        let socket = match UdpSocket::bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))).await {
            Ok(s) => s,
            Err(_) => {
                UdpSocket::bind(SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port))).await.with_context(|| {
                    format!("cannot listen on UDP port {port} for the peers (peer_port): is it in use?")
                })?
            }
        };
        Ok(Some(PeerSocket { socket, port }))
    }

    /// Asks every peer about every tunnel and waits for their answers
    /// (answering their queries meanwhile); fails on a disagreement.
    pub(super) async fn agree(&self, peers: &[IpAddr], tunnels: &[PeerTunnel], window_ns: u64) -> Result<()> {
        let now = crate::now_ns();
        let sent: HashMap<u64, u64> = tunnels.iter().map(|t| (t.identities[0].id, now)).collect();
        for peer in peers {
            for t in tunnels {
                let to = SocketAddr::new(*peer, self.port);
                if let Err(e) = self.socket.send_to(&query(t, now), to).await {
                    warn!("cannot ask peer {peer} about tunnel {:?}: {e}", t.name);
                }
            }
        }
        let mut answers: HashMap<IpAddr, HashMap<usize, bool>> = HashMap::new();
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let complete = |a: &HashMap<IpAddr, HashMap<usize, bool>>| {
            peers.iter().all(|p| a.get(p).is_some_and(|t| t.len() == tunnels.len()))
        };
        while !complete(&answers) {
            let Ok(received) = tokio::time::timeout_at(deadline, self.receive()).await else { break };
            let (payload, from) = received?;
            if !peers.contains(&from) {
                continue;
            }
            if let Some((tunnel, agrees)) = on_answer(tunnels, &sent, &payload) {
                answers.entry(from).or_default().insert(tunnel, agrees);
            } else {
                self.answer(tunnels, &payload, from, window_ns).await;
            }
        }
        for w in verdict(tunnels, peers, &answers)? {
            warn!("{w}");
        }
        let agreed: Vec<String> = answers.keys().map(IpAddr::to_string).collect();
        if !agreed.is_empty() {
            info!("peers {} have the same prefixes for every tunnel they serve", agreed.join(", "));
        }
        Ok(())
    }

    /// The next datagram and its sender (an IPv4 sender as IPv4).
    pub(super) async fn receive(&self) -> Result<(Vec<u8>, IpAddr)> {
        let mut buf = [0u8; MESSAGE_LEN + 1];
        let (n, from) = self.socket.recv_from(&mut buf).await.context("receiving from the peers")?;
        Ok((buf[..n].to_vec(), from.ip().to_canonical()))
    }

    /// Answers a peer's query; a disagreement is logged here too (the
    /// asking broker refuses to run, this one keeps its configuration).
    pub(super) async fn answer(&self, tunnels: &[PeerTunnel], payload: &[u8], from: IpAddr, window_ns: u64) {
        let Some(asked) = on_query(tunnels, payload, crate::now_ns(), window_ns) else {
            debug!("dropped a datagram from peer {from} that is no valid PEER_QUERY for a tunnel here");
            return;
        };
        let t = &tunnels[asked.tunnel];
        if !asked.agrees {
            warn!(
                "tunnel {:?}: the broker at {from} has its secret with other prefixes than this broker's ({}); \
                 it refuses to start or reload so: make them the same on both",
                t.name,
                t.prefix_list()
            );
        }
        if let Err(e) = self.socket.send_to(&asked.answer, SocketAddr::new(from, self.port)).await {
            warn!("cannot answer peer {from}: {e}");
        }
    }
}

#[cfg(test)]
#[path = "peers_tests.rs"]
mod tests;
