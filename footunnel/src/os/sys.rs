//! The system calls footunnel makes outside netlink and raw sockets, each
//! behind a safe function: clocks, interface names, randomness, signals,
//! the bpffs mount, the kernel's release.

use std::{ffi::CString, io, path::Path};

/// CLOCK_REALTIME in ns since the Unix epoch: the clock of protocol timestamps.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// CLOCK_BOOTTIME in ns: never stepped, counts suspend. What timers run on.
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// CLOCK_REALTIME − CLOCK_BOOTTIME now: what lets the data plane, which has
/// only the boot clock, read wall time.
pub fn realtime_offset_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME) - mono_ns()
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The interface's index now; 0 if there is none of that name.
pub fn ifindex(name: &str) -> u32 {
    let Ok(c) = CString::new(name) else { return 0 };
    // SAFETY: a valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Fills `buf` from the kernel's random pool; panics if it cannot (it
/// always can once the pool is initialised, which getrandom waits for).
pub fn getrandom(buf: &mut [u8]) {
    // SAFETY: valid buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(n, buf.len() as isize, "getrandom failed");
}

/// Sends SIGHUP to `pid`.
pub fn send_hangup(pid: u32) -> io::Result<()> {
    // SAFETY: kill(2) with a pid and a signal number.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Blocks (`true`) or unblocks SIGHUP in this thread and those it starts.
pub fn block_hangups(block: bool) {
    let how = if block { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
    // SAFETY: a zeroed sigset_t is valid input to sigemptyset; the calls only
    // touch the set we own and this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `dir` is on a filesystem other than bpffs (`None`: cannot tell).
pub fn is_other_than_bpffs(dir: &Path) -> Option<bool> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs is plain data; all zeros is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and an out pointer to a live struct.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64 != BPF_FS_MAGIC)
}

/// Mounts a bpffs at `dir`.
pub fn mount_bpffs(dir: &Path) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())?;
    let fstype = c"bpf";
    // SAFETY: valid NUL-terminated strings, no data.
    if unsafe { libc::mount(fstype.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This machine's kernel release; empty if uname fails.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; all zeros is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname fills the struct it is given.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates the release.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy().into_owned()
}

/// The errno rtnetlink reports when a route to delete is not there.
pub const NO_SUCH_PROCESS: i32 = libc::ESRCH;
