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
    fn prefix_list(&self) -> String {
        sorted_text(&self.prefixes).join(", ")
    }
}

/// The prefixes as text, sorted, each once: the same set reads the same.
fn sorted_text(prefixes: &[Prefix]) -> Vec<String> {
    let mut text: Vec<String> = prefixes.iter().map(Prefix::to_string).collect();
    text.sort();
    text.dedup();
    text
}

/// The first 8 bytes of SHA-256 over the prefixes, sorted, as text: the
/// same set gives the same digest in any order.
pub(super) fn prefix_digest(prefixes: &[Prefix]) -> [u8; 8] {
    let text = sorted_text(prefixes).join(",");
    let digest = Sha256::new().chain_update(b"footunnel-v1 prefixes").chain_update([0]).chain_update(text);
    digest.finalize()[..8].try_into().expect("8 of 32 bytes")
}

/// The tunnels as peers ask about them: by key id, each with its digest.
pub(super) struct PeerTunnels {
    tunnels: Vec<PeerTunnel>,
    digests: Vec<[u8; 8]>,
    by_id: HashMap<u64, (usize, TunnelIdentity)>,
}

impl PeerTunnels {
    /// Each tunnel's configuration with the prefixes it routes (a plan's or the running table's).
    pub(super) fn of<'a>(tunnels: impl Iterator<Item = (&'a crate::config::Tunnel, &'a [Prefix])>) -> Self {
        Self::new(
            tunnels
                .map(|(config, prefixes)| PeerTunnel {
                    name: config.name.clone(),
                    identities: config.identities().collect(),
                    prefixes: prefixes.to_vec(),
                })
                .collect(),
        )
    }

    pub(super) fn new(tunnels: Vec<PeerTunnel>) -> Self {
        let digests = tunnels.iter().map(|t| prefix_digest(&t.prefixes)).collect();
        let by_id = tunnels
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.identities.iter().map(move |id| (id.id, (i, *id))))
            .collect();
        PeerTunnels { tunnels, digests, by_id }
    }

    fn len(&self) -> usize {
        self.tunnels.len()
    }

    fn find(&self, key_id: u64) -> Option<(usize, TunnelIdentity)> {
        self.by_id.get(&key_id).copied()
    }

    /// The PEER_QUERY about tunnel `i`, under its current secret.
    fn query(&self, i: usize, now_ns: u64) -> [u8; MESSAGE_LEN] {
        let id = self.tunnels[i].identities[0];
        ControlMessage::new(Kind::PeerQuery, id.id, now_ns, self.digests[i]).sign(id.sip_key()).to_bytes()
    }
}

/// A PEER_ANSWER's flag: the answerer has no tunnel with this id. It
/// cannot tag that (it has no key), so it proves nothing: it only saves the
/// asker the wait, and at worst makes it warn.
const NOT_SERVED: u8 = 1;

/// What a peer said of one of our tunnels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Same,
    Other,
    NotServed,
}

/// A query from a peer, verified: the tunnel it is about (none here), and the answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Asked {
    pub tunnel: Option<usize>,
    pub agrees: bool,
    pub answer: [u8; MESSAGE_LEN],
}

/// A fresh PEER_QUERY: correctly tagged for one of `tunnels`, answered with
/// our digest; for an id we do not know, answered untagged with
/// [`NOT_SERVED`]. `None` for anything else (dropped).
pub(super) fn on_query(tunnels: &PeerTunnels, payload: &[u8], now_ns: u64, window_ns: u64) -> Option<Asked> {
    let bytes: &[u8; MESSAGE_LEN] = payload.try_into().ok()?;
    let msg = ControlMessage::from_bytes(bytes);
    wire::check_header(&msg, Kind::PeerQuery).ok()?;
    wire::check_fresh(&msg, &Acceptance { expected: Kind::PeerQuery, now_ns, window_ns }).ok()?;
    let Some((tunnel, id)) = tunnels.find(msg.key_id()) else {
        let mut answer = ControlMessage::new(Kind::PeerAnswer, msg.key_id(), msg.timestamp_ns(), [0; 8]);
        answer.flags = NOT_SERVED;
        return Some(Asked { tunnel: None, agrees: false, answer: answer.to_bytes() });
    };
    wire::check_signed(&msg, &id.sip_key()).ok()?;
    let ours = tunnels.digests[tunnel];
    let answer = ControlMessage::new(Kind::PeerAnswer, id.id, msg.timestamp_ns(), ours).sign(id.sip_key());
    Some(Asked { tunnel: Some(tunnel), agrees: msg.detail == ours, answer: answer.to_bytes() })
}

/// A PEER_ANSWER to a query we sent (`sent`: its timestamp per key id),
/// correctly tagged or flagged [`NOT_SERVED`]: which tunnel, and what the peer said.
pub(super) fn on_answer(tunnels: &PeerTunnels, sent: &HashMap<u64, u64>, payload: &[u8]) -> Option<(usize, Reply)> {
    let bytes: &[u8; MESSAGE_LEN] = payload.try_into().ok()?;
    let msg = ControlMessage::from_bytes(bytes);
    wire::check_header(&msg, Kind::PeerAnswer).ok()?;
    if sent.get(&msg.key_id()) != Some(&msg.timestamp_ns()) {
        return None;
    }
    let (tunnel, id) = tunnels.find(msg.key_id())?;
    if msg.flags & NOT_SERVED != 0 {
        return Some((tunnel, Reply::NotServed));
    }
    wire::check_signed(&msg, &id.sip_key()).ok()?;
    Some((tunnel, if msg.detail == tunnels.digests[tunnel] { Reply::Same } else { Reply::Other }))
}

/// Up to `most` names, and how many more.
fn some_of(names: &[&str], most: usize) -> String {
    let shown = names.iter().take(most).map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    match names.len().saturating_sub(most) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// The outcome of asking every peer: an error naming the disagreements and
/// the fix; warnings for peers that did not answer, or not for every tunnel.
pub(super) fn verdict(
    tunnels: &PeerTunnels,
    peers: &[IpAddr],
    answers: &HashMap<IpAddr, HashMap<usize, Reply>>,
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
        let (mut not_served, mut silent) = (Vec::new(), Vec::new());
        for (i, t) in tunnels.tunnels.iter().enumerate() {
            match theirs.get(&i) {
                Some(Reply::Same) => {}
                Some(Reply::Other) => disagreements.push(format!(
                    "tunnel {:?}: the broker at {peer} has its secret with other prefixes than this broker's ({})",
                    t.name,
                    t.prefix_list()
                )),
                Some(Reply::NotServed) => not_served.push(t.name.as_str()),
                None => silent.push(t.name.as_str()),
            }
        }
        if !not_served.is_empty() {
            warnings.push(format!(
                "peer {peer} does not serve {} tunnel(s) (or has other secrets for them), so a client of theirs \
                 that reaches it is not heard: {}",
                not_served.len(),
                some_of(&not_served, 5)
            ));
        }
        if !silent.is_empty() {
            warnings.push(format!(
                "peer {peer} did not answer about {} tunnel(s) in time: {}",
                silent.len(),
                some_of(&silent, 5)
            ));
        }
    }
    if !disagreements.is_empty() {
        let more = disagreements.len().saturating_sub(10);
        disagreements.truncate(10);
        if more > 0 {
            disagreements.push(format!("and {more} more"));
        }
        bail!(
            "{}: give every broker with a tunnel's secret the same peer_prefixes (or the same addresses on the \
             tunnel's link), or give the tunnel a secret of its own on each",
            disagreements.join("; ")
        );
    }
    Ok(warnings)
}

/// Queries in flight to one peer at a time: what a socket's default receive
/// buffer holds with room to spare, so a full broker's start loses none.
const BURST: usize = 128;

/// The socket brokers ask and answer each other on.
pub(super) struct PeerSocket {
    socket: UdpSocket,
    port: u16,
    /// The running tunnels, as peers' queries are answered.
    pub(super) running: PeerTunnels,
}

impl PeerSocket {
    /// Bound on every address at `port`; `None` when no peers are configured.
    pub(super) async fn bind(peers: &[IpAddr], port: u16, running: PeerTunnels) -> Result<Option<PeerSocket>> {
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
        Ok(Some(PeerSocket { socket, port, running }))
    }

    /// Asks every peer about every tunnel of `tunnels`, [`BURST`] at a time,
    /// answering their queries meanwhile; fails on a disagreement, returns
    /// the warnings (also logged).
    pub(super) async fn agree(&self, peers: &[IpAddr], tunnels: &PeerTunnels, window_ns: u64) -> Result<Vec<String>> {
        let now = crate::now_ns();
        let sent: HashMap<u64, u64> = (0..tunnels.len()).map(|i| (tunnels.tunnels[i].identities[0].id, now)).collect();
        let mut answers: HashMap<IpAddr, HashMap<usize, Reply>> = HashMap::new();
        for first in (0..tunnels.len()).step_by(BURST) {
            let burst = first..(first + BURST).min(tunnels.len());
            // After the first burst, only the peers that answered it.
            let asking: Vec<IpAddr> = peers.iter().copied().filter(|p| first == 0 || answers.contains_key(p)).collect();
            if asking.is_empty() {
                break;
            }
            for (peer, i) in asking.iter().flat_map(|p| burst.clone().map(move |i| (*p, i))) {
                if let Err(e) = self.socket.send_to(&tunnels.query(i, now), SocketAddr::new(peer, self.port)).await {
                    warn!("cannot ask peer {peer} about tunnel {:?}: {e}", tunnels.tunnels[i].name);
                }
            }
            self.collect(peers, &asking, burst, (tunnels, &sent), &mut answers, window_ns).await?;
        }
        let warnings = verdict(tunnels, peers, &answers)?;
        for w in &warnings {
            warn!("{w}");
        }
        let agreed: Vec<String> = answers.keys().map(IpAddr::to_string).collect();
        if !agreed.is_empty() {
            info!("peers {} have the same prefixes for every tunnel they serve", agreed.join(", "));
        }
        Ok(warnings)
    }

    /// Answers to one burst until each asked peer answered it all, or
    /// [`ANSWER_WAIT`] passed; other peers' queries are answered meanwhile.
    async fn collect(
        &self,
        peers: &[IpAddr],
        asking: &[IpAddr],
        burst: std::ops::Range<usize>,
        (tunnels, sent): (&PeerTunnels, &HashMap<u64, u64>),
        answers: &mut HashMap<IpAddr, HashMap<usize, Reply>>,
        window_ns: u64,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        let answered = |a: &HashMap<IpAddr, HashMap<usize, Reply>>| {
            asking.iter().all(|p| a.get(p).is_some_and(|t| burst.clone().all(|i| t.contains_key(&i))))
        };
        while !answered(answers) {
            let Ok(received) = tokio::time::timeout_at(deadline, self.receive()).await else { break };
            let (payload, from) = received?;
            if !peers.contains(&from) {
                continue;
            }
            match on_answer(tunnels, sent, &payload) {
                Some((tunnel, reply)) => drop(answers.entry(from).or_default().insert(tunnel, reply)),
                None => self.answer(&self.running, &payload, from, window_ns).await,
            }
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
    pub(super) async fn answer(&self, tunnels: &PeerTunnels, payload: &[u8], from: IpAddr, window_ns: u64) {
        let Some(asked) = on_query(tunnels, payload, crate::now_ns(), window_ns) else {
            debug!("dropped a datagram from peer {from} that is no valid PEER_QUERY");
            return;
        };
        if let (Some(t), false) = (asked.tunnel, asked.agrees) {
            let t = &tunnels.tunnels[t];
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
