//! The client's metrics page: heartbeats, ACKs and the round trip.

use super::ClientState;
use crate::metrics::page::Page;

pub fn text(state: &ClientState, now_ns: u64) -> String {
    let mut r = Page::new("footunnel_client");
    let labels = vec![("broker", state.broker.clone()), ("link", state.link.clone())];
    r.counter("heartbeats_sent_total", "Heartbeats sent", &[(labels.clone(), state.heartbeats)]);
    r.counter("acks_total", "ACKs from the broker accepted", &[(labels.clone(), state.acks)]);
    r.counter("challenges_total", "CHALLENGEs from the broker accepted", &[(labels.clone(), state.challenges)]);
    if let Some(rtt) = state.rtt_us {
        r.gauge("ack_rtt_seconds", "Round trip of the latest ACKed heartbeat", &[(labels.clone(), rtt as f64 / 1e6)]);
    }
    if let Some(at) = state.last_ack_ns {
        r.gauge(
            "ack_age_seconds",
            "Seconds since the latest ACK",
            &[(labels.clone(), now_ns.saturating_sub(at) as f64 / 1e9)],
        );
    }
    r.gauge(
        "public_endpoint_known",
        "1 once an ACK has said where the broker sees this end (`footunnel show` says where)",
        &[(labels.clone(), if state.public_endpoint.is_some() { 1.0 } else { 0.0 })],
    );
    r.gauge(
        "clock_offset_seconds",
        "The broker's clock minus this host's while heartbeats use the broker's time (its TIME said so), else 0",
        &[(labels.clone(), state.clock_offset_ns.map_or(0.0, |o| o as f64 / 1e9))],
    );
    r.counter(
        "broker_moves_total",
        "Moves from one broker to another (failover, or back to an earlier one)",
        &[(labels.clone(), state.failovers)],
    );
    if let Some(mtu) = state.mtu {
        r.gauge(
            "tunnel_mtu_bytes",
            "The tunnel link's MTU as the client set it (discovered, or --mtu)",
            &[(labels.clone(), f64::from(mtu))],
        );
    }
    r.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_metrics_say_round_trip_and_age_of_the_latest_ack() {
        let state = ClientState {
            broker: "198.51.100.1".into(),
            link: "fou0".into(),
            public_endpoint: Some("203.0.113.5:40001".into()),
            rtt_us: Some(1500),
            last_ack_ns: Some(8_000_000_000),
            heartbeats: 9,
            acks: 8,
            challenges: 1,
            clock_offset_ns: Some(-172_800_000_000_000),
            mtu: Some(1464),
            mtu_discovered: true,
            broker_mtu: Some(1464),
            failovers: 2,
            ..Default::default()
        };
        let page = text(&state, 10_000_000_000);
        for want in [
            "footunnel_client_heartbeats_sent_total{broker=\"198.51.100.1\",link=\"fou0\"} 9",
            "footunnel_client_acks_total{broker=\"198.51.100.1\",link=\"fou0\"} 8",
            "footunnel_client_ack_rtt_seconds{broker=\"198.51.100.1\",link=\"fou0\"} 0.0015",
            "footunnel_client_ack_age_seconds{broker=\"198.51.100.1\",link=\"fou0\"} 2\n",
            "footunnel_client_public_endpoint_known{broker=\"198.51.100.1\",link=\"fou0\"} 1\n",
            "footunnel_client_clock_offset_seconds{broker=\"198.51.100.1\",link=\"fou0\"} -172800\n",
            "footunnel_client_tunnel_mtu_bytes{broker=\"198.51.100.1\",link=\"fou0\"} 1464\n",
            "footunnel_client_broker_moves_total{broker=\"198.51.100.1\",link=\"fou0\"} 2\n",
        ] {
            assert!(page.contains(want), "{want:?} missing from:\n{page}");
        }
        assert!(!page.contains("203.0.113.5"), "a label carries this end's public address:\n{page}");
    }
}
