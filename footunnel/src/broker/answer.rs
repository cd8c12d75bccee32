//! What the broker says to clients: the handler of each data-plane event,
//! and the one place that signs and sends ACK, CHALLENGE and TIME.

use std::net::IpAddr;

use footunnel_ebpf::{
    maps::{EVENT_HEARTBEAT, EVENT_LEGACY, EVENT_OBSERVED, EVENT_PROBE, EVENT_STALE, Event},
    wire::{Ack6, ControlMessage, Kind, Probe},
};
use tracing::{debug, info, warn};

use super::{Broker, Mode};
use crate::os::sys::getrandom;
use crate::{addr::endpoint, broker::decide, broker::tunnels, now_ns};

/// What the broker sends a client.
#[derive(Clone, Copy)]
pub(super) enum Answer {
    /// ACK, or ACK6 for a client at an IPv6 address.
    Ack,
    /// CHALLENGE with this nonce.
    Challenge([u8; 8]),
    /// TIME, echoing a refused heartbeat's timestamp.
    Time(u64),
    /// PROBE_ACK: the PROBE's length, the MTU applied, and its timestamp (echoed).
    ProbeAck(Probe, u64),
}

impl Broker {
    pub(super) async fn handle(&mut self, event: Event) {
        let Some(i) = self.table.by_record_id(event.record_id) else {
            debug!("event for unknown tunnel record {:016x}", event.record_id);
            return;
        };
        let source = (event.addr.ip(), event.port);
        let name = self.table.tunnels[i].config.name.clone();
        match event.kind {
            EVENT_HEARTBEAT | EVENT_LEGACY => {
                debug!("tunnel {name}: heartbeat from {}", endpoint(source.0, source.1));
                self.table.tunnels[i].legacy_client = event.kind == EVENT_LEGACY;
                // Accepted, so under a secret the tunnel has now.
                self.table.tunnels[i].evicted = false;
                self.check_silence(i).await;
                let after = self.reconcile(i).await;
                self.announce(i, decide::may_ack(after, source)).await;
                if event.kind != EVENT_HEARTBEAT {
                    return; // the proof of concept's client cannot read an ACK
                }
                let link_down = matches!(self.mode, Mode::PerLink) && !self.table.tunnels[i].link.up;
                if link_down {
                    info!(
                        "tunnel {name}: no ACK to {}: link {} is down, so nothing passes; \
                         `ip link set {} up` (footunnel never sets a link down)",
                        endpoint(source.0, source.1),
                        self.table.tunnels[i].link.name,
                        self.table.tunnels[i].link.name
                    );
                } else if decide::may_ack(after, source) {
                    // Under the key of the heartbeat it answers, which the endpoint records.
                    let key_id = self.endpoint(event.record_id).map_or(0, |e| e.key_id);
                    self.send(i, Answer::Ack, key_id, event.dst_addr.ip(), source);
                } else if !self.mode.serves_ipv6_clients() && source.0.is_ipv6() {
                    info!(
                        "tunnel {name}: no ACK to {}: shared-device mode carries IPv4 endpoints only; \
                         use per-link mode with an ip6tnl link for IPv6 clients",
                        endpoint(source.0, source.1)
                    );
                } else {
                    info!(
                        "tunnel {name}: no ACK to {}: the link does not point there (it points at {})",
                        endpoint(source.0, source.1),
                        after.map_or("nothing: it is missing".to_owned(), tunnels::describe)
                    );
                }
            }
            EVENT_OBSERVED => self.challenge(i, event.dst_addr.ip(), source, event.observed_payload_len()),
            EVENT_STALE => self.tell_time(i, &event, source),
            EVENT_PROBE => self.answer_probe(i, &event, source).await,
            other => debug!("unknown event kind {other}"),
        }
    }

    fn challenge(&mut self, i: usize, to_local: IpAddr, source: (IpAddr, u16), trigger_len: u16) {
        let from = endpoint(source.0, source.1);
        let now = now_ns();
        let t = &self.table.tunnels[i];
        if t.legacy_client {
            debug!(
                "tunnel {}: FoU data from {from}, but its client speaks the proof of concept's protocol and \
                 cannot answer a challenge",
                t.config.name
            );
            return;
        }
        if !decide::may_challenge(trigger_len) {
            debug!("tunnel {}: {from} sent {trigger_len} bytes, too few to answer with a challenge", t.config.name);
            return;
        }
        if !decide::spaced(t.last_challenge_ns, now, self.config.challenge_interval_ns) || !self.challenges.allow(now) {
            debug!("tunnel {}: challenge to {from} rate-limited", t.config.name);
            return;
        }
        info!("tunnel {}: FoU data from {from}, not its endpoint: challenging", t.config.name);
        self.table.tunnels[i].last_challenge_ns = Some(now);
        self.table.tunnels[i].challenges_sent += 1;
        let mut nonce = [0u8; 8];
        getrandom(&mut nonce);
        // Under the key the client used last: during a rotation, the one it has.
        let key_id = self.endpoint(self.table.tunnels[i].config.record_id).map_or(0, |e| e.key_id);
        self.send(i, Answer::Challenge(nonce), key_id, to_local, source);
    }

    /// A correctly tagged heartbeat refused as stale or replayed (the data
    /// plane announces at most one a second per tunnel): TIME tells its
    /// sender the broker's clock, under the heartbeat's own key.
    fn tell_time(&mut self, i: usize, event: &Event, source: (IpAddr, u16)) {
        let t = &self.table.tunnels[i];
        let (key_id, echo) = (event.key_id(), event.timestamp_ns);
        if t.config.identity_for(key_id).is_none() || !self.challenges.allow(now_ns()) {
            debug!(
                "tunnel {}: no TIME to {} (rate-limited or an old key)",
                t.config.name,
                endpoint(source.0, source.1)
            );
            return;
        }
        let off = echo as i128 - now_ns() as i128;
        info!(
            "tunnel {}: heartbeat from {} refused, its clock {} ours: answering with TIME",
            t.config.name,
            endpoint(source.0, source.1),
            crate::describe_offset(off)
        );
        // Stamped after the tunnel's last accepted heartbeat: a client whose
        // clock is only a little behind its own earlier heartbeats (a reboot)
        // moves past them by this TIME.
        let last_accepted = self.endpoint(event.record_id).map_or(0, |e| e.last_timestamp_ns);
        let t = &mut self.table.tunnels[i];
        t.last_sent_ns = t.last_sent_ns.max(last_accepted);
        self.send(i, Answer::Time(echo), key_id, event.dst_addr.ip(), source);
    }

    /// Sends a control message from the tunnel's FoU port and `from`: the
    /// address the packet it answers was sent to, so an endpoint-dependent
    /// NAT lets it through (the link's local address if that is unknown).
    /// An ACK to a client seen at an IPv6 address is an ACK6.
    pub(super) fn send(&mut self, i: usize, answer: Answer, key_id: u64, from: IpAddr, to: (IpAddr, u16)) {
        let t = &mut self.table.tunnels[i];
        // A PROBE_ACK's timestamp is the PROBE's (an echo), outside the order
        // of the broker's own messages.
        let ts = match answer {
            Answer::ProbeAck(..) => 0,
            _ => {
                t.last_sent_ns = crate::next_timestamp(now_ns(), t.last_sent_ns);
                t.last_sent_ns
            }
        };
        // Answers use the key of the heartbeat they answer (the current one if unknown).
        let identity = t.config.identity_for(key_id).map_or(t.config.identity, |(_, identity)| identity);
        let key = identity.sip_key();
        let bytes = match (answer, to.0) {
            (Answer::Ack, IpAddr::V6(a)) => Ack6::new(identity.id, ts, a.octets(), to.1).sign(key).to_bytes().to_vec(),
            (Answer::Ack, IpAddr::V4(a)) => {
                let detail = ControlMessage::endpoint_detail(a.octets(), to.1);
                ControlMessage::new(Kind::Ack, identity.id, ts, detail).sign(key).to_bytes().to_vec()
            }
            (Answer::Challenge(nonce), _) => {
                ControlMessage::new(Kind::Challenge, identity.id, ts, nonce).sign(key).to_bytes().to_vec()
            }
            (Answer::Time(echo), _) => {
                ControlMessage::new(Kind::Time, identity.id, ts, echo.to_be_bytes()).sign(key).to_bytes().to_vec()
            }
            (Answer::ProbeAck(probe, echo), _) => {
                let msg = ControlMessage::new(Kind::ProbeAck, identity.id, echo, probe.detail()).sign(key);
                let mut bytes = vec![0; usize::from(probe.len)];
                probe.write(&msg, &mut bytes);
                bytes
            }
        };
        let from = match t.link.local_ip() {
            Some(local) if from.is_unspecified() => local,
            _ => from,
        };
        let sport = t.link.encap_sport().unwrap_or(self.config.fou_ports[0]);
        let sent = match (to.0, &self.sender6) {
            (IpAddr::V4(_), _) => self.sender.send(from, sport, to.0, to.1, &bytes),
            (IpAddr::V6(_), Ok(sender6)) => sender6.send(from, sport, to.0, to.1, &bytes),
            (IpAddr::V6(_), Err(e)) => Err(anyhow::anyhow!("cannot answer {}: {e}", endpoint(to.0, to.1))),
        };
        if let Err(e) = sent {
            warn!("tunnel {}: {e:#}", t.config.name);
        }
    }
}
