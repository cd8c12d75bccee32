//! footunnel's userspace: the broker (its controller and the eBPF data plane
//! it loads; feature `broker`, on by default) and the client.
// Functions of at most 60 lines (clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod addr;
#[cfg(feature = "broker")]
pub mod broker;
pub mod client;
pub mod config;
pub mod metrics;
pub mod mtu;
pub mod os;
pub mod secret;
pub mod state;

pub use os::sys::{mono_ns, now_ns};

/// Timestamps we send are strictly increasing per tunnel, even if the
/// clock steps back.
pub fn next_timestamp(now_ns: u64, last_sent_ns: u64) -> u64 {
    now_ns.max(last_sent_ns + 1)
}

/// "3 seconds ago", "2 minutes, 5 seconds ago", as `wg show` says it.
pub fn ago(then_ns: u64, now_ns: u64) -> String {
    let secs = now_ns.saturating_sub(then_ns) / 1_000_000_000;
    if secs == 0 { "just now".into() } else { format!("{} ago", span(secs)) }
}

/// "1 day, 1 hour", "2 minutes, 5 seconds": the largest units, as `ago`.
pub fn span(mut secs: u64) -> String {
    let mut parts = Vec::new();
    for (unit, len) in [("day", 86_400), ("hour", 3_600), ("minute", 60), ("second", 1)] {
        if secs >= len {
            let n = secs / len;
            secs %= len;
            parts.push(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }));
        }
    }
    if parts.is_empty() { "less than a second".into() } else { parts.join(", ") }
}

/// How a clock compares with ours, `offset_ns` = theirs − ours: "is 2 days,
/// 1 hour behind", "is 3 seconds ahead of".
pub fn describe_offset(offset_ns: i128) -> String {
    // Rounded: a correction carries half a round trip, never whole seconds.
    let span = span(((offset_ns.unsigned_abs() + 500_000_000) / 1_000_000_000) as u64);
    if offset_ns < 0 { format!("is {span} behind") } else { format!("is {span} ahead of") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_wg_show() {
        let s = 1_000_000_000;
        assert_eq!(ago(10 * s, 10 * s), "just now");
        assert_eq!(ago(0, s), "1 second ago");
        assert_eq!(ago(0, 125 * s), "2 minutes, 5 seconds ago");
        assert_eq!(ago(0, 90_000 * s), "1 day, 1 hour ago");
    }

    #[test]
    fn sent_timestamps_never_repeat() {
        assert_eq!(next_timestamp(100, 50), 100);
        assert_eq!(next_timestamp(100, 100), 101);
        assert_eq!(next_timestamp(90, 100), 101, "clock stepped back");
    }

    #[test]
    fn offsets_say_which_way() {
        let s: i128 = 1_000_000_000;
        assert_eq!(describe_offset(-2 * 86_400 * s - 5), "is 2 days behind");
        assert_eq!(describe_offset(3 * s), "is 3 seconds ahead of");
        assert_eq!(describe_offset(-2 * 86_400 * s + 3_000_000), "is 2 days behind");
        assert_eq!(describe_offset(s / 4), "is less than a second ahead of");
    }
}
