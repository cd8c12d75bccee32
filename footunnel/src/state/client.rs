//! The client's state file and what `footunnel show` says of it.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tracing::warn;

/// What `footunnel show` reports on a client.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientState {
    pub broker: String,
    pub link: String,
    /// Where the broker saw us, from its latest ACK.
    pub public_endpoint: Option<String>,
    pub rtt_us: Option<u64>,
    pub last_ack_ns: Option<u64>,
    pub heartbeats: u64,
    pub acks: u64,
    pub challenges: u64,
    /// The broker's clock − this host's, while heartbeats use the broker's
    /// time (its TIME said this host's clock is wrong).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ns: Option<i64>,
    /// The tunnel's MTU as last set: discovered (`mtu_discovered`) or
    /// `--mtu`; `None` while unknown (`--mtu off`, or not yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    #[serde(default)]
    pub mtu_discovered: bool,
    /// Several brokers: all of them in order, why the one in use is, and
    /// how often the client moved between them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub brokers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_why: Option<String>,
    #[serde(default)]
    pub failovers: u64,
    /// What the broker said it applied to its end (0: refused); `None`: no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_mtu: Option<u16>,
}

pub const STATE_FILE: &str = "client.json";

/// What `footunnel show` says of a client.
pub fn render(state: &ClientState, now_ns: u64) -> String {
    let mut out = format!("client: broker {} over {}\n", state.broker, state.link);
    if !state.brokers.is_empty() {
        out += &format!(
            "  brokers in order: {}; this one because {}; moves so far: {}\n",
            state.brokers.join(", "),
            state.broker_why.as_deref().unwrap_or("it is the first"),
            state.failovers
        );
    }
    out += &format!(
        "  public endpoint (as the broker sees it): {}\n",
        state.public_endpoint.as_deref().unwrap_or("(no ACK yet)")
    );
    if let Some(ts) = state.last_ack_ns {
        out += &format!("  latest ACK: {}\n", crate::ago(ts, now_ns));
    }
    if let Some(rtt) = state.rtt_us {
        out += &format!("  round trip: {:.1} ms\n", rtt as f64 / 1000.0);
    }
    out += &format!("  heartbeats: {}, ACKs: {}, challenges: {}\n", state.heartbeats, state.acks, state.challenges);
    if let Some(offset) = state.clock_offset_ns {
        out += &format!(
            "  clock: this host's {} the broker's; heartbeats use the broker's time (its TIME said so)\n",
            crate::describe_offset(-i128::from(offset))
        );
    }
    if let Some(mtu) = state.mtu {
        let how = if state.mtu_discovered { "the largest the path carries, discovered" } else { "set by --mtu" };
        let broker = match state.broker_mtu {
            Some(0) => "the broker refused it (its log says why)".to_owned(),
            Some(m) if m == mtu => "the broker's end has it too".to_owned(),
            Some(m) => format!("the broker's end has {m}"),
            None => "the broker has not confirmed it".to_owned(),
        };
        out += &format!("  tunnel MTU: {mtu} ({how}; {broker})\n");
    }
    out
}

pub fn write_state(dir: &std::path::Path, state: &ClientState) {
    let bytes = serde_json::to_vec_pretty(state).unwrap_or_default();
    if let Err(e) = crate::os::files::write_atomically(&dir.join(STATE_FILE), &bytes) {
        warn!("{e:#}");
    }
}

pub fn read_state(dir: &std::path::Path) -> Result<ClientState> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read(&path).with_context(|| format!("no client state at {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("cannot parse {}", path.display()))
}
