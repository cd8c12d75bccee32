//! `cargo xtask setup`: everything a fresh Debian machine lacks, each step
//! checked first so a machine that has it all is done in seconds.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd::{self, succeeds};

/// Debian packages and why footunnel's build, tests or demo need them.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "inspect the pinned maps in tests"),
    ("iproute2", "namespaces, veth and tunnels in tests"),
    ("nftables", "the NAT in end-to-end tests"),
    ("iptables", "the proof of concept's SNAT rule in legacy tests"),
    ("conntrack", "flushing NAT mappings in end-to-end tests"),
    ("qemu-system-x86", "the VM whose kernel has fou/ipip"),
    ("linux-image-amd64", "Debian 12's kernel (6.1) with fou and ipip modules, booted in the VM"),
    ("linux-image-6.12-amd64", "Debian 13's kernel (6.12: TCX, fou kfuncs, fou6), booted in the VM too"),
    ("busybox-static", "virtme-ng's guest init (it fails at once without a static busybox)"),
    ("kmod", "modprobe inside the VM"),
    ("iputils-ping", "checking traffic through tunnels in tests"),
    ("prometheus", "promtool and a Prometheus server that scrape footunnel's metrics in VM tests"),
    ("systemd", "systemd-analyze verify on footunnel's unit files"),
    ("mmdebstrap", "the Debian 12 root filesystem the booted-systemd tests boot"),
    ("e2fsprogs", "mkfs.ext4 -d: that root filesystem as an image, without mounting it"),
    ("qemu-utils", "qemu-img: a copy-on-write overlay of the image for each boot"),
    ("lintian", "Debian's package checker, run on footunnel's .deb"),
    ("llvm", "llvm-objcopy: the router binaries lose sections they never read (cargo xtask dist)"),
    ("qemu-user-static", "running the aarch64 and mipsel router clients in VM tests"),
    ("faketime", "a client whose clock is days off, in the VM's clock tests"),
    ("ethtool", "offloads off in the path-MTU tests, so a small MTU is not hidden behind GSO"),
    ("bird2", "BGP and BFD between a router and two anycast brokers in the VM's many-brokers test"),
    ("keepalived", "VRRP between two brokers on one segment in the VM's many-brokers test"),
];

pub fn run() -> Result<()> {
    debian_packages()?;
    lint_tools()?;
    nightly_rust_src()?;
    bpf_linker()?;
    virtme_ng()?;
    zig()?;
    vm_boots()?;
    crate::systemd_vm::ensure_image()?;
    println!("setup: everything footunnel needs is installed");
    Ok(())
}

fn step(what: &str) {
    println!("setup: {what}");
}

fn debian_packages() -> Result<()> {
    let missing = missing_debian_packages();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    for (name, why) in DEBIAN_PACKAGES.iter().filter(|(n, _)| missing.contains(n)) {
        step(&format!("Debian package {name} is missing (needed to {why}); installing"));
    }
    if !cmd::is_root() {
        bail!(
            "installing Debian packages needs root: run `sudo apt-get install {}`, then this again",
            missing.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update failed")?;
    apt_install(&missing)?;
    // An install can remove a package that was there: a newer qemu-utils
    // from backports goes when Debian's qemu-system-x86 comes in. Once more
    // for what went, then every package must be there.
    let removed = missing_debian_packages();
    if !removed.is_empty() {
        step(&format!("{} removed by that install; installing Debian's", removed.join(" ")));
        apt_install(&removed)?;
    }
    let still = missing_debian_packages();
    if !still.is_empty() {
        bail!("after apt-get install, still missing: {} (see apt's output above)", still.join(" "));
    }
    Ok(())
}

fn missing_debian_packages() -> Vec<&'static str> {
    DEBIAN_PACKAGES
        .iter()
        .filter(|(name, _)| {
            let status = Command::new("dpkg-query").args(["-W", "-f=${db:Status-Abbrev}", name]).output();
            !status.is_ok_and(|out| out.stdout.starts_with(b"ii"))
        })
        .map(|(name, _)| *name)
        .collect()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    cmd::run(
        Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-qq"]).args(packages),
    )
    .with_context(|| format!("could not install {}", packages.join(" ")))
}

/// rustfmt and clippy on the default toolchain, for the lint stage.
fn lint_tools() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> =
        ["rustfmt", "clippy"].into_iter().filter(|c| !installed.lines().any(|l| l.starts_with(c))).collect();
    if missing.is_empty() {
        step("rustfmt and clippy: present");
        return Ok(());
    }
    step(&format!("adding {} to the default toolchain (the lint stage)", missing.join(" and ")));
    cmd::run(Command::new("rustup").args(["component", "add"]).args(&missing))
}

fn nightly_rust_src() -> Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        step("installing the nightly toolchain (the eBPF crate needs -Z build-std)");
        cmd::run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
            .context("no nightly toolchain and rustup could not install one")?;
    }
    let installed =
        cmd::output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", "nightly"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain (for -Z build-std=core)");
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker, built against the nightly's own libLLVM so both agree on the
/// bitcode format.
fn bpf_linker() -> Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        step("bpf-linker: present");
        return Ok(());
    }
    let sysroot = cmd::output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("the nightly toolchain has no libLLVM.so.* in {}", lib.display()))?;
    // libLLVM.so.22.1-rust-1.97.0-nightly → 22
    let major = llvm.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or_default().to_owned();
    let prefix = home()?.join(".local/share/footunnel/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_owned(), llvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    step(&format!("building bpf-linker 0.13 against the nightly's LLVM {major} (about a minute)"));
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", "0.13.0", "--locked", "--no-default-features"])
            .args(["--features", &format!("llvm-{major}")]),
    )
    .context("could not build bpf-linker against the nightly's LLVM (the recipe is this function: LLVM_PREFIX and the llvm-N feature)")
}

/// The virtme-ng release the VM tests were run with; others may boot
/// differently (its command line and init have changed between releases).
const VIRTME_NG_VERSION: &str = "1.42";

fn virtme_ng() -> Result<()> {
    let installed =
        cmd::output(Command::new("vng").arg("--version").stderr(std::process::Stdio::null())).unwrap_or_default();
    if installed.split_whitespace().any(|w| w == VIRTME_NG_VERSION) {
        step(&format!("virtme-ng {VIRTME_NG_VERSION}: present"));
        return Ok(());
    }
    let package = format!("virtme-ng=={VIRTME_NG_VERSION}");
    step(&format!("installing {package} from PyPI (boots the VM for FoU tests)"));
    let pip = |extra: &[&str]| {
        Command::new("python3").args(["-m", "pip", "install", "--quiet"]).args(extra).arg(&package).status()
    };
    // Debian's own Python refuses system-wide pip installs without this flag.
    if !pip(&[]).is_ok_and(|s| s.success()) && !pip(&["--break-system-packages"]).is_ok_and(|s| s.success()) {
        bail!("could not install virtme-ng: run `python3 -m pip install {package}` (needs python3-pip)");
    }
    if !succeeds(Command::new("vng").arg("--version")) {
        bail!("virtme-ng installed but `vng` is not on PATH: add pip's script directory (often ~/.local/bin) to PATH");
    }
    Ok(())
}

/// zig (its musl and linker for every router target) and cargo-zigbuild,
/// which drives it, both from PyPI at the versions `cargo xtask dist` was
/// measured with.
const ZIG: &[(&str, &str)] = &[("ziglang", "0.17.1"), ("cargo-zigbuild", "0.24.1")];

fn zig() -> Result<()> {
    let have = |name: &str, version: &str| {
        cmd::output(Command::new("python3").args(["-m", "pip", "show", name]).stderr(std::process::Stdio::null()))
            .is_ok_and(|out| out.lines().any(|l| l == format!("Version: {version}")))
    };
    let missing: Vec<String> = ZIG.iter().filter(|(n, v)| !have(n, v)).map(|(n, v)| format!("{n}=={v}")).collect();
    if missing.is_empty() {
        step("zig and cargo-zigbuild: present");
    } else {
        step(&format!("installing {} from PyPI (cross-linking the router client)", missing.join(" ")));
        let pip = |extra: &[&str]| {
            Command::new("python3").args(["-m", "pip", "install", "--quiet"]).args(extra).args(&missing).status()
        };
        if !pip(&[]).is_ok_and(|s| s.success()) && !pip(&["--break-system-packages"]).is_ok_and(|s| s.success()) {
            bail!("could not install {}: run `python3 -m pip install {}`", missing.join(" "), missing.join(" "));
        }
    }
    if !succeeds(Command::new("cargo-zigbuild").arg("--version")) {
        bail!("cargo-zigbuild installed but not on PATH: add pip's script directory (often ~/.local/bin) to PATH");
    }
    Ok(())
}

fn home() -> Result<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")
}

/// Boots each required kernel once, so that a piece the VM lacks is named
/// here rather than by the demo or the tests. A stamp per kernel and
/// virtme-ng release keeps a machine that has booted them fast.
fn vm_boots() -> Result<()> {
    let stamps = home()?.join(".cache/footunnel");
    std::fs::create_dir_all(&stamps)?;
    for series in crate::vm::REQUIRED_KERNELS {
        let kernel = crate::vm::pick_kernel(series)?;
        let stamp = stamps.join(format!(
            "vm-boots-{}-vng-{VIRTME_NG_VERSION}",
            kernel.file_name().unwrap_or_default().to_string_lossy()
        ));
        if stamp.exists() {
            step(&format!("VM with {}: boots (checked before)", kernel.display()));
            continue;
        }
        step(&format!("booting {} once in the VM (about 20 s)", kernel.display()));
        let opts = crate::vm::Options {
            systemd: false,
            kernel: Some(kernel.display().to_string()),
            memory: "1G".into(),
            cpus: 1,
            timeout: 300,
            rwdirs: Vec::new(),
            command: vec!["true".into()],
            prefix: None,
        };
        match crate::vm::run(&opts).with_context(|| format!("the VM with {} does not boot", kernel.display()))? {
            0 => std::fs::write(&stamp, b"")?,
            code => bail!(
                "the VM with {} booted but could not load fou/ipip or run a command (exit status {code})",
                kernel.display()
            ),
        }
    }
    Ok(())
}
