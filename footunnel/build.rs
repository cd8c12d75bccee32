//! Finds the eBPF object that `cargo xtask build-ebpf` produced, so the
//! userspace can embed it; if it is missing the build stops with one line
//! saying how to make it.
use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ebpf_object_missing)");
    println!("cargo::rerun-if-env-changed=FOOTUNNEL_EBPF_OBJECT");
    // The client alone (no `broker` feature) embeds no object.
    if std::env::var_os("CARGO_FEATURE_BROKER").is_none() {
        return;
    }
    let object = std::env::var_os("FOOTUNNEL_EBPF_OBJECT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bpf/bpfel-unknown-none/release/footunnel")
    });
    println!("cargo::rerun-if-changed={}", object.display());
    if object.is_file() {
        println!("cargo::rustc-env=FOOTUNNEL_EBPF_OBJECT_PATH={}", object.display());
    } else {
        println!("cargo::rustc-cfg=ebpf_object_missing");
    }
}
