//! Living under a service manager: readiness for systemd (`Type=notify`),
//! SIGHUP held back until the reload handler exists, and telling a live
//! broker from a stale pid.

use std::path::Path;

/// Blocks SIGHUP in this thread (and the threads it starts later). Called first
/// thing: a `systemctl reload` that arrives before the handler is installed
/// would otherwise kill the broker with a signal systemd counts as a clean
/// exit, which `Restart=on-failure` does not restart.
pub fn hold_hangups() {
    super::sys::block_hangups(true);
}

/// Unblocks SIGHUP once its handler is installed: one that arrived meanwhile
/// is delivered to the handler now, so that reload is not lost.
pub fn release_hangups() {
    super::sys::block_hangups(false);
}

/// Tells systemd (`Type=notify`) that the service is up, with a status line
/// for `systemctl status`. Without $NOTIFY_SOCKET (not started by systemd,
/// or `Type=exec`) it does nothing.
pub fn notify_ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}\nMAINPID={}", std::process::id()));
}

fn notify(message: &str) {
    use std::os::{linux::net::SocketAddrExt, unix::net::SocketAddr, unix::net::UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd at {path}: {e}");
    }
}

/// Why `pid` is not a running footunnel broker, if it is not: the pid in a
/// preserved state file may be long gone, or reused by another program.
pub fn check_broker_process(pid: u32) -> Result<(), String> {
    let path = Path::new("/proc").join(pid.to_string()).join("cmdline");
    match std::fs::read(&path) {
        Ok(cmdline) => check_broker_cmdline(pid, &cmdline),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("no process has pid {pid}")),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// `cmdline`: NUL-separated arguments, as /proc/PID/cmdline has them.
fn check_broker_cmdline(pid: u32, cmdline: &[u8]) -> Result<(), String> {
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or_default();
    if program.starts_with("footunnel") && args.get(1).is_some_and(|a| a == "broker") {
        Ok(())
    } else {
        Err(format!("pid {pid} is not a footunnel broker (it runs {:?})", args.join(" ").trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn only_a_footunnel_broker_is_signalled() {
        let broker = cmdline(&["/usr/bin/footunnel", "broker", "--config", "/etc/footunnel/broker.toml"]);
        assert_eq!(check_broker_cmdline(7, &broker), Ok(()));
        let client = cmdline(&["/usr/bin/footunnel", "client", "198.51.100.1"]);
        assert!(check_broker_cmdline(7, &client).unwrap_err().contains("not a footunnel broker"));
        let other = cmdline(&["/usr/sbin/sshd", "-D"]);
        assert!(check_broker_cmdline(7, &other).unwrap_err().contains("/usr/sbin/sshd -D"));
        // Above the kernel's pid_max: never a process.
        assert_eq!(check_broker_process(u32::MAX), Err(format!("no process has pid {}", u32::MAX)));
    }

    #[test]
    fn this_test_process_is_no_broker() {
        assert!(check_broker_process(std::process::id()).is_err());
    }
}
