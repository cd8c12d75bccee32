//! footunnel's eBPF programs: an XDP and a TC-ingress entry point over the
//! shared packet path in the library. Built by `cargo xtask build-ebpf`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// The BPF target has no `AtomicU64::compare_exchange`; the intrinsics compile
// to the BPF_CMPXCHG / BPF_XCHG instructions (kernel ≥ 5.12).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics, adt_const_params))]
#![cfg_attr(target_arch = "bpf", allow(internal_features, incomplete_features))]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("footunnel's eBPF programs only run in the kernel: build them with `cargo xtask build-ebpf`");
    std::process::exit(2);
}
