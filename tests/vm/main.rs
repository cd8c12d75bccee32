//! Tests that need a kernel with fou and ipip; `cargo xtask test` runs them
//! inside a VM booted from Debian's kernel.

mod anycast;
mod broker;
mod broker_config;
mod brokers;
mod client;
mod clock;
mod e2e;
mod ipv6;
mod manage;
mod metrics;
mod mtu;
mod package;
mod peers;
mod reload;
mod robust;
mod rotation;
mod router;
mod shared;
mod silence;
mod sit;
mod tunnel_link;
mod vrrp;
