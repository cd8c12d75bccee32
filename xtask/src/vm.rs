//! `cargo xtask vm -- CMD…`: CMD in a VM booted from Debian's kernel over the
//! host's root filesystem, in the current directory, with its output and exit
//! status. TCG only: KVM hangs on these machines.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

#[derive(clap::Args)]
pub struct Options {
    /// The guest kernel: a version prefix such as `6.1` or `6.12`, or a path
    /// to a vmlinuz (default: the newest kernel under /boot with fou).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Guest memory (qemu -m).
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Host directories the guest may write (the root is read-only there).
    #[arg(long = "rwdir")]
    pub rwdirs: Vec<std::path::PathBuf>,
    /// Boot the cached Debian 12 image with systemd as PID 1 instead (built by
    /// `cargo xtask setup`): CMD runs in a unit once the system is up; exit
    /// status 200 reboots and runs it again.
    #[arg(long)]
    pub systemd: bool,
    /// The command to run in the guest, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    /// Each line of the VM's output begins with this (two VMs at once).
    #[arg(skip)]
    pub prefix: Option<String>,
}

/// Modules the FoU tests need; loaded before CMD so a missing one is named.
const MODULES: &[&str] = &["fou", "fou6", "ipip", "sit", "ip6_tunnel", "veth", "nf_conntrack"];

/// Exit status of the guest command (or of a failed boot).
pub fn run(opts: &Options) -> Result<i32> {
    let kernel = match &opts.kernel {
        Some(wanted) => pick_kernel(wanted)?,
        None => fou_kernels()?.pop().map(|k| k.path).context("no kernel")?,
    };
    let cwd = std::env::current_dir()?;
    let quoted: Vec<String> = opts.command.iter().map(|a| shell_quote(a)).collect();
    let script = format!(
        "modprobe -a {mods} || {{ echo 'xtask vm: could not load {mods} in the guest' >&2; exit 97; }}; \
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf; \
         export FOOTUNNEL_IN_VM=1; {cmd}",
        mods = MODULES.join(" "),
        cmd = quoted.join(" ")
    );
    // qemu opens its stdout by path (/proc/self/fd/1) with O_TRUNC: were that
    // a log file, everything written before the VM would be erased. Through
    // pipes, the guest's output is appended to ours instead.
    let mut child = Command::new("timeout")
        .arg(opts.timeout.to_string())
        // The guest kernel's warnings and worse (an oops, the OOM killer, a
        // panic that ends the VM) go to our output with the tests'.
        .args(["vng", "--disable-kvm", "--verbose", "--append", "loglevel=4", "--run"])
        .arg(&kernel)
        .arg("--cwd")
        .arg(&cwd)
        .args(["--cpus", &opts.cpus.to_string(), "--memory", &opts.memory])
        .args(opts.rwdirs.iter().map(|d| format!("--rwdir={}", d.display())))
        .arg("--")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start vng: run `cargo xtask setup` (installs virtme-ng and qemu-system-x86)")?;
    let prefix = opts.prefix.clone().unwrap_or_default();
    let out = forward(child.stdout.take().expect("piped"), std::io::stdout(), prefix.clone());
    let err = forward(child.stderr.take().expect("piped"), std::io::stderr(), prefix);
    let status = child.wait()?;
    let _ = (out.join(), err.join());
    match status.code() {
        Some(124) => bail!("the VM did not finish within {} s", opts.timeout),
        Some(code) => Ok(code),
        None => bail!("vng was killed: {status}"),
    }
}

/// A kernel under /boot that has the fou module.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `6.1.0-28-amd64`
    pub version: String,
    pub path: PathBuf,
}

impl Kernel {
    /// `6.1`, `6.12`: what `--kernel` takes and the test summary shows.
    pub fn series(&self) -> String {
        self.version.split('.').take(2).collect::<Vec<_>>().join(".")
    }
}

/// Every kernel under /boot whose modules include fou, oldest first.
pub fn fou_kernels() -> Result<Vec<Kernel>> {
    let mut found: Vec<Kernel> = std::fs::read_dir("/boot")
        .context("cannot list /boot")?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            has_module(&Path::new("/lib/modules").join(&version).join("kernel/net"), "fou.ko")
                .then(|| Kernel { path: Path::new("/boot").join(&name), version })
        })
        .collect();
    found.sort_by_key(|k| version_key(&k.version));
    if found.is_empty() {
        bail!(
            "no kernel under /boot has the fou module: run `cargo xtask setup` \
             (installs Debian's linux-image-amd64 and linux-image-6.12-amd64)"
        );
    }
    Ok(found)
}

/// `6.12.48+deb12-amd64` → [6, 12, 48]: numeric, so 6.12 sorts after 6.1.
fn version_key(version: &str) -> Vec<u64> {
    version.split(|c: char| !c.is_ascii_digit()).take(3).map(|n| n.parse().unwrap_or(0)).collect()
}

/// The kernel `wanted` names: a path, or a version prefix (`6.1` picks
/// 6.1.x, never 6.12.x).
pub fn pick_kernel(wanted: &str) -> Result<PathBuf> {
    let path = Path::new(wanted);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let kernels = fou_kernels()?;
    kernels
        .iter()
        .rev()
        .find(|k| k.version == wanted || k.series() == wanted || k.version.starts_with(&format!("{wanted}.")))
        .map(|k| k.path.clone())
        .with_context(|| {
            let have: Vec<&str> = kernels.iter().map(|k| k.version.as_str()).collect();
            format!(
                "no kernel with fou matches {wanted:?}; installed: {have:?} (`cargo xtask setup` installs 6.1 and 6.12)"
            )
        })
}

fn has_module(dir: &Path, stem: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.filter_map(|e| e.ok()).any(|e| {
        let path = e.path();
        if path.is_dir() {
            has_module(&path, stem)
        } else {
            e.file_name().to_str().is_some_and(|n| n.starts_with(stem))
        }
    })
}

/// Copies `from` to `to`, each line after `prefix` (none: as it comes).
fn forward(
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    prefix: String,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if prefix.is_empty() {
            let _ = std::io::copy(&mut from, &mut to);
            return;
        }
        let mut lines = std::io::BufReader::new(from);
        let mut line = Vec::new();
        while matches!(std::io::BufRead::read_until(&mut lines, b'\n', &mut line), Ok(n) if n > 0) {
            let mut whole = prefix.as_bytes().to_vec();
            whole.extend_from_slice(&line);
            if !whole.ends_with(b"\n") {
                whole.push(b'\n');
            }
            // One write per line, so two VMs' lines do not interleave mid-line.
            let _ = to.write_all(&whole);
            line.clear();
        }
    })
}

pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@".contains(&b)) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Debian 12's two kernels with fou: its own (6.1) and Debian 13's (6.12).
pub const REQUIRED_KERNELS: &[&str] = &["6.1", "6.12"];
