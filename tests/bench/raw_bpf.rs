//! The empty XDP program every cost is compared with, and BPF_PROG_TEST_RUN
//! through the raw syscall, so both programs are measured the same way.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_PROG_TYPE_XDP: u32 = 6;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> i64 {
    // SAFETY: attr is a valid, large-enough bpf_attr.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) }
}

fn put32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}
fn put64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// `r0 = XDP_PASS; exit`: the least any XDP program can cost.
pub fn empty_xdp() -> OwnedFd {
    let insns: [u64; 2] = [
        // mov64 r0, 2 (opcode 0xb7, dst r0, imm 2)
        0xb7 | (2u64 << 32),
        // exit
        0x95,
    ];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put32(&mut attr, 4, insns.len() as u32);
    put64(&mut attr, 8, insns.as_ptr() as u64);
    put64(&mut attr, 16, license.as_ptr() as u64);
    let fd = bpf(BPF_PROG_LOAD, &mut attr);
    assert!(fd >= 0, "loading the empty XDP program: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor from the kernel.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// Runs `prog` on `frame` `repeat` times: (return value, mean ns per run).
pub fn test_run(prog: RawFd, frame: &[u8], repeat: u32) -> (u32, u32) {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = [0u8; 128];
    put32(&mut attr, 0, prog as u32);
    put32(&mut attr, 8, frame.len() as u32);
    put32(&mut attr, 12, out.len() as u32);
    put64(&mut attr, 16, frame.as_ptr() as u64);
    put64(&mut attr, 24, out.as_mut_ptr() as u64);
    put32(&mut attr, 32, repeat);
    let rc = bpf(BPF_PROG_TEST_RUN, &mut attr);
    assert_eq!(rc, 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    let retval = u32::from_ne_bytes(attr[4..8].try_into().unwrap());
    let duration = u32::from_ne_bytes(attr[36..40].try_into().unwrap());
    (retval, duration)
}
