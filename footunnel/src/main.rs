//! `footunnel`: the operator's command.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use footunnel::{
    addr::Prefix,
    broker,
    client::{self, ClientConfig},
    config::{self, Attach, BrokerConfig},
    secret, show,
};
use tracing::warn;

#[derive(Parser)]
#[command(
    name = "footunnel",
    version,
    about = "Foo-over-UDP tunnels that follow clients behind NATs",
    long_about = "footunnel keeps Foo-over-UDP (FoU) tunnels up to clients whose public address and \
NAT-assigned UDP port may change. An eBPF program on the broker's uplink verifies authenticated \
heartbeats and records where each tunnel's client is; the broker re-points the tunnel's ipip link to it."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker: keep each tunnel's link pointed at its client.
    #[command(long_about = BROKER_HELP)]
    Broker(BrokerArgs),
    /// Keep the broker informed of where this end of the tunnel is.
    #[command(long_about = CLIENT_HELP)]
    Client(ClientArgs),
    /// Show tunnels, endpoints and counters (broker: from its pinned maps; client: its last ACK).
    #[command(long_about = SHOW_HELP)]
    Show {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Exit status 1, with the reasons, unless the broker's controller runs and every
        /// tunnel's link points at its endpoint (for monitoring and health checks).
        #[arg(long)]
        check: bool,
        /// Where the broker keeps its state file.
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Print a fresh random tunnel secret (192 bits) to share between broker and client.
    Keygen {
        /// Write it to this new file, created with mode 600 (never readable by
        /// others, unlike `keygen > FILE` until a chmod).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make the running broker re-read its configuration (as SIGHUP does) and report the outcome.
    #[command(long_about = RELOAD_HELP)]
    Reload {
        /// Where the broker keeps its state file.
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Write the manual pages (section 8) into DIR; packaging uses this.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Write shell completions for bash, zsh and fish into DIR; packaging uses this.
    #[command(hide = true)]
    Completions { dir: PathBuf },
    /// Detach the broker's eBPF program and remove its pinned maps.
    Unload {
        #[arg(long, default_value = config::DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

const SHOW_HELP: &str = "Show tunnels, endpoints and counters: on a broker from its pinned maps and
state file, on a client from its last ACK (also each footunnel-client@NAME's,
under STATE_DIR/client-NAME).

On a broker the endpoint is what the data plane recorded from the client's
latest heartbeat; the controller applies it to the link. `link points at`
appears when the kernel's link sends elsewhere (the controller is not
running, stalled or could not re-point it), and `controller: NOT RUNNING`
when the state file's process is gone.

--check prints nothing but problems and exits 1 if there is one: the
controller not running, the shared device down, a link that cannot be read
or points elsewhere than its endpoint. Use it from monitoring, keepalived's
track_script or a BIRD health check.";

const RELOAD_HELP: &str = "Make the running broker re-read its configuration, as SIGHUP does, and
report the outcome (exit status 1 if the new configuration was refused).

New tunnels start, removed ones stop (links footunnel created for them are
removed; links made by hand stay), changed ones change. A tunnel whose name and
link stay keeps its link, endpoint and counters, and its traffic flows on, also
when its secret is rotated (next_secret, see `footunnel broker --help`).
A configuration that fails any check changes nothing: the running one stays, and
the error says what to fix. pin_dir, state_dir, attach, interfaces, fou_ports,
legacy_port, metrics, mode and [shared] place the data plane or its listener and
need a restart.";

const BROKER_HELP: &str = "Run the broker: keep each tunnel's link pointed at its client.

Either one existing link, as the proof of concept did:

    footunnel broker [-v] fou0 SECRET

or every tunnel from a configuration file:

    footunnel broker --config /etc/footunnel/broker.toml

Each link must exist already, as an ipip (or sit, or ip6tnl) link with FoU encapsulation whose
encap-sport is the FoU port, and the port needs a FoU listener:

    ip fou add port 42424 ipproto 4
    ip link add fou0 type ipip remote 192.0.2.1 local <BROKER-IP> ttl 64 \\
        encap fou encap-sport 42424 encap-dport 42424
    ip link set fou0 up && ip addr add 10.0.0.1/30 dev fou0

For a client at an IPv6 address, an ip6tnl link over an IPv6 listener (after
`modprobe fou6`); the broker answers it with ACK6:

    ip fou add port 42424 ipproto 4 -6
    ip link add fou6 type ip6tnl mode ipip6 remote 2001:db8::1 local <BROKER-IPv6> \\
        encap fou encap-sport 42424 encap-dport 42424

The eBPF program attaches to the interface holding the link's local address (or
--interface), verifies heartbeats there and records each client's address and port.
On every accepted heartbeat the broker points the link's remote and encap-dport at
that source, keeping every other parameter, and answers with an ACK — only once the
link really points there: a refused change is logged and never ACKed. Links edited
or re-created by hand are put back at once. FoU data from any other source draws a
rate-limited CHALLENGE, never a change.

Many clients behind one NAT address (carrier-grade NAT) need shared-device mode
(Linux >= 5.12), set in the configuration file: one external-mode device for all
tunnels, each packet sent to its tunnel's endpoint by the data plane itself.

    mode = \"shared\"
    [shared]
    local = \"<BROKER-IP>\"      # and optionally address = \"10.0.0.1/32\"
    [[tunnel]]                  # no link; peer_prefixes required
    name = \"alice\"
    secret_file = \"alice.secret\"
    peer_prefixes = [\"10.1.0.2/32\"]

State is pinned under /sys/fs/bpf/footunnel/: stopping the broker (SIGINT/SIGTERM)
leaves the data plane recording, and a restart continues from there. `footunnel show`
reports; `footunnel unload` removes everything.";

const CLIENT_HELP: &str = "Keep the broker informed of where this end of the tunnel is.

    footunnel client [-v] BROKER SECRET

The tunnel's link must exist: an ipip (or sit) link with remote BROKER and FoU
encapsulation, and a FoU listener on its encap-sport:

    ip fou add port 42424 ipproto 4
    ip link add fou0 type ipip remote <BROKER> ttl 64 \\
        encap fou encap-sport 42424 encap-dport 42424
    ip link set fou0 up && ip addr add 10.0.0.2/30 dev fou0

Heartbeats leave from the link's own UDP port (encap-sport) through a raw socket,
so the NAT maps them exactly like the tunnel's data: no SNAT rule is needed.
They go out every --interval, at once when this host's addresses, routes or links
change, and at once when the broker challenges (it saw our data arrive from a new
source); unanswered ones are retried with backoff until the broker's ACK arrives.
Leave the link's local address unset (`local any`) so it survives address changes.

Over IPv6 (a broker at an IPv6 address), the link is an ip6tnl one and the FoU
listener an IPv6 one (after `modprobe fou6`); the broker answers with ACK6,
which carries the IPv6 address and port it saw. The client sets the ip6tnl
link's local address (the kernel sends only from one) and moves it when this
host's address changes:

    ip fou add port 42424 ipproto 4 -6
    ip link add fou0 type ip6tnl mode ipip6 remote <BROKER> \
        encap fou encap-sport 42424 encap-dport 42424

BROKER may be a name (broker.example.net). It is resolved at start, retried until
it resolves, and resolved again every --interval: when the broker's address
changes, the client points its link's remote at the new address and heartbeats.
A name with both kinds of address is used over IPv4 unless -6 is given; -4 and -6
force a family for literal addresses too.";

#[derive(Args)]
struct ClientArgs {
    /// The broker's public IPv4 or IPv6 address, or its name (re-resolved every interval, so a broker that moves is followed).
    #[arg(value_parser = parse_broker)]
    broker: client::resolve::BrokerAddress,
    /// The tunnel's shared secret. Prefer --secret-file: arguments are visible in `ps`.
    secret: Option<String>,
    /// Read the secret from this file (mode 600) instead.
    #[arg(long, conflicts_with = "secret")]
    secret_file: Option<PathBuf>,
    /// The tunnel's link (default: the ipip/sit/ip6tnl link whose remote is BROKER).
    #[arg(long)]
    link: Option<String>,
    /// Reach the broker over IPv4 only (a name's A records).
    #[arg(short = '4', conflicts_with = "ipv6")]
    ipv4: bool,
    /// Reach the broker over IPv6 only (a name's AAAA records; an ip6tnl link).
    #[arg(short = '6')]
    ipv6: bool,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Freshness window for the broker's messages, in seconds (0 disables).
    #[arg(long, default_value_t = 120.0)]
    freshness_window: f64,
    #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Create the FoU listener and the link (`local any`) at start, remove them at exit, like wg-quick up/down.
    #[arg(long, requires = "address")]
    manage: bool,
    /// Serve Prometheus metrics at ADDR:PORT, e.g. 127.0.0.1:9587 (off by default).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_metrics)]
    metrics: Option<std::net::SocketAddr>,
    /// With --manage: this end's inner address, e.g. 10.0.0.2/30.
    #[arg(long)]
    address: Option<String>,
    /// With --manage: this end's FoU port.
    #[arg(long, default_value_t = config::DEFAULT_FOU_PORT)]
    port: u16,
    /// With --manage: the broker's FoU port.
    #[arg(long, default_value_t = config::DEFAULT_FOU_PORT)]
    broker_port: u16,
    /// More detail in the log.
    #[arg(long, short)]
    verbose: bool,
}

impl ClientArgs {
    fn config(&self) -> Result<ClientConfig> {
        let secret = match (&self.secret, &self.secret_file) {
            (Some(s), None) => s.clone(),
            (None, Some(f)) => config::read_secret_file(f)?,
            _ => bail!("give the tunnel's secret: `footunnel client {} SECRET` or --secret-file FILE", self.broker),
        };
        if secret.is_empty() {
            bail!("the secret is empty");
        }
        if !(0.1..=3600.0).contains(&self.interval) {
            bail!("--interval must be between 0.1 and 3600 seconds");
        }
        if !(0.0..=86_400.0).contains(&self.freshness_window) {
            bail!("--freshness-window must be between 0 and 86400 seconds");
        }
        Ok(ClientConfig {
            broker: self.broker.clone(),
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(client::resolve::Family::V4),
                (_, true) => Some(client::resolve::Family::V6),
                _ => None,
            },
            secret,
            link: self.link.clone(),
            interval: std::time::Duration::from_secs_f64(self.interval),
            freshness_window_ns: (self.freshness_window * 1e9) as u64,
            state_dir: self.state_dir.clone(),
            metrics: self.metrics,
            manage: match (&self.address, self.manage) {
                (Some(a), true) => Some(client::ManagedClient {
                    address: footunnel::addr::parse_interface_address(a).context("--address")?,
                    port: self.port,
                    broker_port: self.broker_port,
                }),
                (Some(_), false) => bail!("--address only applies with --manage"),
                _ => None,
            },
        })
    }
}

#[derive(Args)]
struct BrokerArgs {
    /// The tunnel's link (seed shape; needs SECRET).
    link: Option<String>,
    /// The tunnel's shared secret (seed shape). Prefer --secret-file: arguments are visible in `ps`.
    secret: Option<String>,
    /// Read the secret from this file (mode 600) instead.
    #[arg(long, conflicts_with_all = ["secret", "config"])]
    secret_file: Option<PathBuf>,
    /// A TOML configuration with one [[tunnel]] per tunnel.
    #[arg(long, short, conflicts_with = "link")]
    config: Option<PathBuf>,
    /// Uplink interface(s) to attach to (default: the one holding each link's local address).
    #[arg(long = "interface", short = 'i')]
    interfaces: Vec<String>,
    /// Where to hook into the uplink.
    #[arg(long, value_enum)]
    attach: Option<Attach>,
    /// Inner source prefix(es) of the client (default: the link's own subnets).
    #[arg(long = "peer", value_parser = parse_prefix)]
    peers: Vec<Prefix>,
    /// Also accept the proof of concept's plaintext heartbeats (insecure).
    #[arg(long)]
    legacy: bool,
    /// Freshness window for heartbeat timestamps, in seconds (0 disables).
    #[arg(long)]
    freshness_window: Option<f64>,
    /// Report a tunnel silent after this many seconds without an accepted heartbeat (0: never; the default).
    #[arg(long)]
    silence_timeout: Option<f64>,
    /// What a silent tunnel's link gets: `report` leaves it, `down` sets it down until the next heartbeat.
    #[arg(long, value_enum)]
    on_silence: Option<config::OnSilence>,
    /// Serve Prometheus metrics at ADDR:PORT, e.g. 127.0.0.1:9586 (off by default).
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_metrics)]
    metrics: Option<std::net::SocketAddr>,
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// More detail in the log.
    #[arg(long, short)]
    verbose: bool,
}

fn parse_metrics(s: &str) -> Result<std::net::SocketAddr, String> {
    config::parse_metrics_address(s).map_err(|e| e.to_string())
}

fn parse_broker(s: &str) -> Result<client::resolve::BrokerAddress, String> {
    s.parse()
}

fn parse_prefix(s: &str) -> Result<Prefix, String> {
    s.parse()
}

impl BrokerArgs {
    fn config(&self) -> Result<BrokerConfig> {
        let mut config = match (&self.config, &self.link) {
            (Some(path), None) => BrokerConfig::load(path)?,
            (None, Some(link)) => {
                let secret = match (&self.secret, &self.secret_file) {
                    (Some(s), None) => s.clone(),
                    (None, Some(f)) => config::read_secret_file(f)?,
                    _ => bail!("give the tunnel's secret: `footunnel broker {link} SECRET` or --secret-file FILE"),
                };
                let mut c = BrokerConfig::single(link, &secret)?;
                c.tunnels[0].peer_prefixes = self.peers.clone();
                c.tunnels[0].legacy = self.legacy;
                c
            }
            _ => {
                bail!("say which tunnels to serve: `footunnel broker LINK SECRET` or `footunnel broker --config FILE`")
            }
        };
        if !self.interfaces.is_empty() {
            config.interfaces = self.interfaces.clone();
        }
        if let Some(a) = self.attach {
            config.attach = a;
        }
        if let Some(w) = self.freshness_window {
            if !(0.0..=86_400.0).contains(&w) {
                bail!("--freshness-window must be between 0 and 86400 seconds");
            }
            config.freshness_window_ns = (w * 1e9) as u64;
        }
        if self.silence_timeout.is_some() || self.on_silence.is_some() {
            for t in &mut config.tunnels {
                let timeout = self.silence_timeout.unwrap_or(t.silence.map_or(0.0, |s| s.timeout_ns as f64 / 1e9));
                let action = self.on_silence.unwrap_or(t.silence.map_or(config::OnSilence::Report, |s| s.action));
                t.silence = config::silence(&t.name, timeout, action)
                    .map_err(|e| anyhow::anyhow!("{e:#}").context("--silence-timeout/--on-silence"))?;
            }
        }
        if let Some(m) = self.metrics {
            config.metrics = Some(m);
        }
        if let Some(p) = &self.pin_dir {
            config.pin_dir = p.clone();
        }
        if let Some(s) = &self.state_dir {
            config.state_dir = s.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

/// footunnel(8) and footunnel-SUBCOMMAND(8), from the same text as --help.
fn write_manpages(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let top = Cli::command().name("footunnel");
    let write = |name: &str, cmd: clap::Command| -> Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).title(name).section("8").render(&mut page)?;
        let path = dir.join(format!("{name}.8"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
    };
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        // A short-lived command: leaking the few names is simpler than clap's `string` feature.
        let name: &'static str = Box::leak(format!("footunnel-{}", sub.get_name()).into_boxed_str());
        write(name, sub.clone().name(name))?;
    }
    write("footunnel", top)
}

/// The client state in `dir`, and in each `dir/client-NAME` (where the unit
/// `footunnel-client@NAME` keeps it), so `footunnel show` needs no flag.
fn client_states(dir: &std::path::Path) -> Vec<client::ClientState> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut units: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("client-"))
            .map(|e| e.path())
            .collect();
        units.sort();
        dirs.extend(units);
    }
    dirs.iter().filter_map(|d| client::read_state(d).ok()).collect()
}

/// footunnel.bash, _footunnel (zsh) and footunnel.fish, from the same
/// definition as --help.
fn write_completions(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut Cli::command(), "footunnel", dir)
            .with_context(|| format!("cannot write {shell} completions into {}", dir.display()))?;
        eprintln!("footunnel: {}", path.display());
    }
    Ok(())
}

fn init_logging(verbose: bool) {
    let filter = if verbose { "footunnel=debug,info" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FOOTUNNEL_LOG").unwrap_or_else(|_| filter.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("footunnel: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Broker(args) => {
            footunnel::service::hold_hangups();
            init_logging(args.verbose);
            let config = args.config()?;
            for t in &config.tunnels {
                if let Some(w) = secret::weakness(&t.secret) {
                    warn!("tunnel {:?}: {w}", t.name);
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let reread: broker::Reread = Box::new(move || args.config());
            rt.block_on(broker::run(config, reread, shutdown_signal()))?;
        }
        Command::Client(args) => {
            init_logging(args.verbose);
            let config = args.config()?;
            if let Some(w) = secret::weakness(&config.secret) {
                warn!("{w}");
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(client::run(config, shutdown_signal()))?;
        }
        Command::Show { json, check, state_dir } => {
            let mut broker = show::collect(&state_dir);
            if let Ok(report) = &mut broker {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(show::read_links(report))?;
            }
            if check {
                let report = broker?;
                let problems = show::problems(&report);
                if problems.is_empty() {
                    println!("ok: the controller runs and every link points at its endpoint");
                    return Ok(());
                }
                for p in &problems {
                    println!("{p}");
                }
                bail!("{} problem(s) (above)", problems.len());
            }
            let clients = client_states(&state_dir);
            if let (Err(e), true) = (&broker, clients.is_empty()) {
                bail!(
                    "{e:#}; no client state there either (nor in {}/client-*): is footunnel running with \
                     --state-dir {}?",
                    state_dir.display(),
                    state_dir.display()
                );
            }
            let broker = broker.ok();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos() as u64;
            if json {
                // One client (the common case) as an object, as before; several as a list.
                let client = match clients.as_slice() {
                    [] => serde_json::Value::Null,
                    [one] => serde_json::to_value(one)?,
                    many => serde_json::to_value(many)?,
                };
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "broker": broker, "client": client }))?
                );
            } else {
                if let Some(report) = &broker {
                    print!("{}", show::render(report, now));
                }
                for state in &clients {
                    print!("{}", show::render_client(state, now));
                }
            }
        }
        Command::Keygen { out: None } => println!("{}", secret::generate()?),
        Command::Keygen { out: Some(path) } => {
            footunnel::files::create_private(&path, &format!("{}\n", secret::generate()?))?;
            eprintln!("footunnel: a new secret is in {} (mode 600)", path.display());
        }
        Command::Manpages { dir } => write_manpages(&dir)?,
        Command::Completions { dir } => write_completions(&dir)?,
        Command::Reload { state_dir } => {
            let outcome = broker::request_reload(&state_dir, std::time::Duration::from_secs(30))?;
            if !outcome.ok {
                bail!("reload refused, the running configuration stays: {}", outcome.message);
            }
            println!("reloaded: {}", outcome.message);
        }
        Command::Unload { pin_dir, state_dir } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(broker::unload(&state_dir, &pin_dir)).context("unload failed")?;
            println!("footunnel's data plane is detached and its pinned state removed");
        }
    }
    Ok(())
}
