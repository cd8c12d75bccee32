//! Privileged tests on the host kernel: footunnel's real, verifier-approved
//! eBPF program, on crafted packets (`BPF_PROG_TEST_RUN`) and on real
//! packets over veth between namespaces.

mod bpftool;
mod concurrency;
mod fuzz;
mod openwrt;
mod pins;
mod rawsocket;
mod table;
mod trace;
mod veth;
