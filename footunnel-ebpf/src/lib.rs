//! footunnel's data plane, shared by the eBPF programs (`src/main.rs`, built
//! for `bpfel-unknown-none`) and userspace: one definition of every wire and
//! map structure, and the packet path itself, which also compiles and is
//! unit-tested on the host.
#![cfg_attr(not(test), no_std)]
// Functions of at most 60 lines (clippy.toml), the packet path excepted.
#![warn(clippy::too_many_lines)]

pub mod egress;
pub mod from_broker;
pub mod ingress;
pub mod maps;
pub mod packet;
pub mod path;
pub mod siphash;
pub mod wire;
