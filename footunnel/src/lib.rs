//! footunnel's userspace: loading the data plane, and (in later modules) the
//! broker's controller and the client.

pub mod addr;
pub mod broker;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod decide;
pub mod files;
pub mod fou;
pub mod link;
pub mod manage;
pub mod metrics;
pub mod rawudp;
pub mod secret;
pub mod service;
pub mod show;
pub mod tunnels;

/// CLOCK_REALTIME in ns since the Unix epoch: the clock of protocol timestamps.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// CLOCK_BOOTTIME in ns: never stepped, counts suspend. What timers run on.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// Clock `clock` in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
