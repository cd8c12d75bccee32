//! A booted Debian 12 with systemd as PID 1: what a user's broker runs on.
//!
//! `cargo xtask setup` builds the root filesystem once from Debian's packages
//! (mmdebstrap, minbase) and caches it as an ext4 image made without root
//! mounts (`mkfs.ext4 -d`); its file name carries a hash of the recipe, so a
//! changed recipe builds a new one. `cargo xtask vm --systemd -- CMD` boots
//! Debian's 6.1 kernel over a copy-on-write overlay of it under QEMU TCG,
//! with the workspace shared read-only at its own path (9p). A unit in the
//! image runs CMD once the system is up, with its output on the serial
//! console; CMD's exit status 200 asks for a reboot (CMD runs again on the
//! next boot, `FOOTUNNEL_SYSTEMD_BOOT` counting boots), any other ends the VM
//! with that status. Nothing in the image loads a kernel module for footunnel:
//! that is the package's job, and the point of booting it.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Debian 12's own kernel series: the one its users boot.
pub const KERNEL_SERIES: &str = "6.1";

/// What the image holds besides minbase, and why.
const PACKAGES: &[(&str, &str)] = &[
    ("systemd-sysv", "systemd as PID 1"),
    ("udev", "device and module events, as on any Debian host"),
    ("dbus", "systemctl and networkctl talk to systemd over it"),
    ("iproute2", "namespaces, veth and checks of links in the tests"),
    ("kmod", "modprobe for systemd-modules-load and lsmod in the tests"),
    ("nftables", "the client's NAT"),
    ("conntrack", "dropping NAT mappings to change the client's port"),
    ("iputils-ping", "traffic through the tunnels"),
    ("procps", "ps and pgrep in failure reports"),
    ("bpftool", "checking that a purge leaves no program attached"),
];

/// The guest's part: a unit that runs the command at each boot.
const RUNNER_UNIT: &str = "[Unit]
Description=xtask: run the test command on the serial console
After=multi-user.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/xtask-run
StandardInput=null
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TTYVHangup=no
TTYReset=no

[Install]
WantedBy=multi-user.target
";

const RUNNER_SCRIPT: &str = r#"#!/bin/sh
# xtask's runner: the workspace (shared by the host), then its command.
mkdir -p /var/lib/xtask
boot=$(( $(cat /var/lib/xtask/boots 2>/dev/null || echo 0) + 1 ))
echo "$boot" > /var/lib/xtask/boots
ws=$(tr ' ' '\n' < /proc/cmdline | sed -n 's/^xtask.workspace=//p')
mkdir -p "$ws"
mountpoint -q "$ws" || mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 workspace "$ws" \
    || { echo "xtask-vm-exit: 98 (cannot mount the workspace)"; systemctl poweroff; exit 0; }
cd "$ws"
echo "xtask-vm: boot $boot, system up after $(cut -d' ' -f1 /proc/uptime) s"
FOOTUNNEL_SYSTEMD_BOOT=$boot FOOTUNNEL_IN_SYSTEMD_VM=1 sh "$ws/target/systemd-vm/command"
rc=$?
if [ "$rc" = 200 ]; then
    echo "xtask-vm: the command asked for a reboot"
    systemctl reboot
    exit 0
fi
echo "xtask-vm-exit: $rc"
systemctl poweroff
"#;

/// Bumped when the customisation below changes in a way the hash of its
/// texts would not see.
const RECIPE_REVISION: u32 = 1;

/// The cached image for this recipe and kernel.
pub fn image_path() -> Result<PathBuf> {
    let kernel = kernel()?;
    let mut recipe = format!("{RECIPE_REVISION}\n{}\n{RUNNER_UNIT}{RUNNER_SCRIPT}", kernel.version);
    for (name, _) in PACKAGES {
        recipe += name;
    }
    Ok(cache_dir()?.join(format!("debian12-systemd-{:016x}.ext4", fnv1a(recipe.as_bytes()))))
}

fn cache_dir() -> Result<PathBuf> {
    Ok(std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?.join(".cache/footunnel"))
}

/// Stable across toolchains, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

struct Kernel {
    version: String,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

fn kernel() -> Result<Kernel> {
    let vmlinuz = crate::vm::pick_kernel(KERNEL_SERIES)?;
    let version = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("a kernel not named vmlinuz-VERSION")?
        .to_owned();
    let initrd = PathBuf::from(format!("/boot/initrd.img-{version}"));
    if !initrd.is_file() {
        bail!("{} has no initrd at {}: reinstall linux-image-amd64", vmlinuz.display(), initrd.display());
    }
    Ok(Kernel { version, vmlinuz, initrd })
}

/// `cargo xtask setup`'s step: builds the image unless this recipe's exists.
pub fn ensure_image() -> Result<PathBuf> {
    let image = image_path()?;
    if image.is_file() {
        println!("setup: booted-systemd image: present ({})", image.display());
        return Ok(image);
    }
    let started = Instant::now();
    let kernel = kernel()?;
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache)?;
    // Images of older recipes are dead weight (hundreds of MB each).
    for old in std::fs::read_dir(&cache)?.flatten() {
        let name = old.file_name().to_string_lossy().into_owned();
        if name.starts_with("debian12-systemd-") && name.ends_with(".ext4") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let dir = cache.join("debian12-systemd.root");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let include: Vec<&str> = PACKAGES.iter().map(|(n, _)| *n).collect();
    println!(
        "setup: building the booted-systemd image: mmdebstrap bookworm with {} (about a minute)",
        include.join(",")
    );
    cmd::run(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase", &format!("--include={}", include.join(","))])
            .arg("bookworm")
            .arg(&dir),
    )
    .context("mmdebstrap could not build the Debian 12 root filesystem (Debian's mirror must be reachable)")?;
    customise(&dir, &kernel)?;
    let partial = image.with_extension("partial");
    cmd::run(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "root", "-d"]).arg(&dir).arg(&partial).arg("3G"))
        .context("mkfs.ext4 -d failed (e2fsprogs)")?;
    std::fs::rename(&partial, &image)?;
    std::fs::remove_dir_all(&dir)?;
    println!("setup: booted-systemd image built in {:.0} s: {}", started.elapsed().as_secs_f64(), image.display());
    Ok(image)
}

fn customise(dir: &Path, kernel: &Kernel) -> Result<()> {
    let write = |path: &str, text: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().expect("a file in a directory"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let link = |target: &str, at: &str| -> Result<()> {
        let at = dir.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().expect("a link in a directory"))?;
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(target, &at).with_context(|| format!("cannot link {}", at.display()))
    };
    // The kernel's modules, as its package would have installed them.
    let modules = Path::new("/lib/modules").join(&kernel.version);
    // /lib is /usr/lib on Debian 12 (merged /usr): name the real directory.
    let into = dir.join("usr/lib/modules");
    std::fs::create_dir_all(&into)?;
    cmd::run(Command::new("cp").arg("-a").arg(&modules).arg(into.join(&kernel.version)))
        .with_context(|| format!("cannot copy {}", modules.display()))?;
    cmd::run(Command::new("depmod").arg("-b").arg(dir).arg(&kernel.version))?;
    write("/etc/hostname", "broker\n", 0o644)?;
    write("/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 broker\n", 0o644)?;
    write("/etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n", 0o644)?;
    write("/etc/systemd/system/xtask-run.service", RUNNER_UNIT, 0o644)?;
    write("/usr/local/sbin/xtask-run", RUNNER_SCRIPT, 0o755)?;
    link("/etc/systemd/system/xtask-run.service", "/etc/systemd/system/multi-user.target.wants/xtask-run.service")?;
    // The serial console is the runner's; no login prompt on it.
    for unit in ["serial-getty@ttyS0.service", "getty@tty1.service", "systemd-timesyncd.service"] {
        link("/dev/null", &format!("/etc/systemd/system/{unit}"))?;
    }
    // mmdebstrap leaves a policy that refuses service starts on install;
    // a real host has none.
    let _ = std::fs::remove_file(dir.join("usr/sbin/policy-rc.d"));
    Ok(())
}

#[derive(Clone)]
pub struct Boot {
    pub memory: String,
    pub cpus: u32,
    pub timeout: Duration,
}

/// Boots the image (a fresh overlay of it) and runs `command` there; the
/// command's exit status.
pub fn run(boot: &Boot, command: &[String]) -> Result<i32> {
    let image = image_path()?;
    if !image.is_file() {
        bail!("no booted-systemd image at {}: run `cargo xtask setup`", image.display());
    }
    let kernel = kernel()?;
    let root = cmd::workspace_root();
    let work = root.join("target/systemd-vm");
    std::fs::create_dir_all(&work)?;
    let overlay = work.join("disk.qcow2");
    let _ = std::fs::remove_file(&overlay);
    cmd::run(
        Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]).arg(&image).arg(&overlay),
    )
    .context("qemu-img (qemu-utils) could not make the overlay")?;
    let quoted: Vec<String> = command.iter().map(|a| crate::vm::shell_quote(a)).collect();
    std::fs::write(
        work.join("command"),
        format!(
            "cd {} && {}\n",
            crate::vm::shell_quote(&std::env::current_dir()?.display().to_string()),
            quoted.join(" ")
        ),
    )?;
    let append = format!(
        "root=/dev/vda rw console=ttyS0 loglevel=4 systemd.show_status=false xtask.workspace={}",
        root.display()
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio"])
        .args(["-m", &boot.memory, "-smp", &boot.cpus.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&kernel.initrd)
        .args(["-append", &append])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-virtfs")
        .arg(format!("local,path={},mount_tag=workspace,security_model=none,readonly=on", root.display()))
        .args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64: run `cargo xtask setup`")?;
    let pid = child.id();
    let deadline = boot.timeout;
    // The watchdog: a hung guest is killed, and named as hung.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(deadline).is_err() {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut status = None;
    let mut out = std::io::stdout();
    for line in BufReader::new(child.stdout.take().expect("piped")).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).replace('\r', "");
        let _ = writeln!(out, "{line}");
        if let Some(rest) = line.trim().strip_prefix("xtask-vm-exit: ") {
            status = rest.split_whitespace().next().and_then(|s| s.parse::<i32>().ok());
        }
    }
    let _ = child.wait();
    let _ = done_tx.send(());
    if watchdog.join().unwrap_or(false) {
        bail!("the booted-systemd VM did not finish within {} s", deadline.as_secs());
    }
    status.context("the booted-systemd VM ended without the runner's exit line (see its console above)")
}
