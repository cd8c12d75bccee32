//! Silence policy (SixXS disabled tunnels whose heartbeats stopped): a
//! tunnel without an accepted heartbeat for its `silence_timeout` is
//! reported silent, and with `on_silence = "down"` its link is set down
//! until the next accepted heartbeat. Whether it is silent is decided in
//! `decide::silent_for`, from the same map `footunnel show` reads.

use tracing::{info, warn};

use crate::{config::OnSilence, decide, link, now_ns};

use super::Broker;

impl Broker {
    /// The latest accepted heartbeat of tunnel `i`, on the broker's clock.
    pub(super) fn last_heard_ns(&self, i: usize) -> Option<u64> {
        let e = self.endpoint(self.table.tunnels[i].config.record_id)?;
        decide::known_endpoint(&e).map(|_| e.last_seen_ns)
    }

    pub(super) async fn check_silence_all(&mut self) {
        for i in 0..self.table.tunnels.len() {
            self.check_silence(i).await;
        }
    }

    /// Reports tunnel `i` silent, or heard from again, when that changes,
    /// and keeps its link down or up to match under `on_silence = "down"`.
    pub(super) async fn check_silence(&mut self, i: usize) {
        let policy = self.table.tunnels[i].config.silence;
        let t = &self.table.tunnels[i];
        if policy.is_none() && !t.silent && !t.set_down {
            // Not watched: no map lookup (this runs every second for every tunnel).
            return;
        }
        let last_heard = self.last_heard_ns(i);
        let t = &mut self.table.tunnels[i];
        let silent = policy.and_then(|p| decide::silent_for(last_heard, t.since_ns, now_ns(), p.timeout_ns));
        let down_when_silent = policy.is_some_and(|p| p.action == OnSilence::Down);
        match (silent, t.silent) {
            (Some(quiet), false) => {
                warn!(
                    "tunnel {}: silent: no accepted heartbeat for {} s (silence_timeout {} s){}",
                    t.config.name,
                    quiet / 1_000_000_000,
                    policy.map_or(0, |p| p.timeout_ns) / 1_000_000_000,
                    if down_when_silent { "; setting its link down until it is heard again" } else { "" }
                );
                t.silent = true;
            }
            (None, true) => {
                info!(
                    "tunnel {}: {}",
                    t.config.name,
                    if policy.is_some() { "heard from again" } else { "no longer watched for silence" }
                );
                t.silent = false;
            }
            _ => {}
        }
        // Under "down" the link's state follows silence, also after a restart
        // (a link set down by the previous run comes back up on a heartbeat);
        // a link set down under a policy a reload removed comes back up.
        let want_up = if down_when_silent {
            !t.silent
        } else if t.set_down {
            true
        } else {
            return;
        };
        if t.link.up != want_up {
            match link::set_up(&self.handle, t.link.index, want_up).await {
                Ok(()) => {
                    t.link.up = want_up;
                    info!("tunnel {}: link {} set {}", t.config.name, t.link.name, if want_up { "up" } else { "down" });
                }
                Err(e) => {
                    warn!("tunnel {}: {e:#}", t.config.name);
                    return;
                }
            }
        }
        t.set_down = !want_up;
    }
}
