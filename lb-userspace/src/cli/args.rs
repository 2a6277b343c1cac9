//! The `lb` command line as clap reads it: subcommands, their options, and which running `lb`
//! the admin commands talk to.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use clap::{Parser, Subcommand};

/// The instance the CLI talks to when none is named.
pub const DEFAULT_INSTANCE: &str = "default";

#[derive(Parser)]
#[command(name = "lb", about = "anycast-lb: XDP Maglev load balancer")]
pub struct Opt {
    #[command(subcommand)]
    pub command: Cmd,
    #[command(flatten)]
    pub target: Target,
}

/// Which `lb run` the admin commands talk to, and how.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// The instance (its admin socket is /run/anycast-lb/<instance>.sock; default "default").
    /// `stop` needs it named.
    #[arg(long, global = true)]
    pub instance: Option<String>,
    /// The admin socket, when the config names another one.
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Talk to the API over TCP at this address instead (the config's `[api] listen`).
    #[arg(long, global = true)]
    pub api: Option<SocketAddr>,
    /// File holding the bearer token for `--api` (needed for changes).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

impl Target {
    /// The instance named with `--instance`, else `DEFAULT_INSTANCE`.
    pub fn instance_name(&self) -> &str {
        self.instance.as_deref().unwrap_or(DEFAULT_INSTANCE)
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Load and attach the data plane, program it from the config, run health checks.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file (the balancer's, or a backend's with `[backend]`) without touching
    /// the kernel.
    CheckConfig { file: PathBuf },
    /// The real host's side: decapsulate the balancer's tunnels, hold the VIPs, report health.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
        /// The backend's config file.
        #[arg(long, global = true, default_value = "/etc/anycast-lb/backend.toml")]
        config: PathBuf,
    },
    /// Detach the programs and remove the pinned maps of an instance (`--instance`).
    Stop,
    /// VIPs, reals, health, weights and traffic shares; handoff peers.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Change a real at run time (kept across reloads and restarts).
    Real {
        #[command(subcommand)]
        action: RealAction,
    },
    /// Add or remove a VIP at run time (kept across reloads and restarts).
    Vip {
        #[command(subcommand)]
        action: VipAction,
    },
    /// Withdraw every VIP of this site over BGP while forwarding continues (maintenance), or
    /// announce again.
    Site {
        #[command(subcommand)]
        action: SiteAction,
    },
    /// Re-read the config file of the running `lb` (like SIGHUP).
    Reload,
    /// The fleet store (etcd): every node's state, and the document every node follows.
    Fleet {
        #[command(subcommand)]
        action: FleetAction,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// GeoDNS through gdnsd: each site's state per VIP for DNS, from the fleet store
    /// (docs/geodns.md).
    Geodns {
        #[command(subcommand)]
        action: GeodnsAction,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Where a flow goes now and why: the connection table's entry or the ring slot, what a
    /// mid-flow packet the table does not know would do, and whether the VIP is announced.
    Flow {
        /// The client: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6).
        src: String,
        /// The VIP: ADDR:PORT ([ADDR]:PORT for IPv6).
        vip: String,
        #[arg(default_value = "tcp")]
        proto: crate::config::Proto,
        /// QUIC: a short-header packet's destination connection ID (hex), to see which real
        /// a QUIC-LB VIP sends it to.
        #[arg(long)]
        cid: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List connection-table entries (or purge a real's).
    ///
    /// The walk reads the table until `--limit` entries match: on a full table of millions with a filter that matches few, that
    /// is the whole table (2.3 s for a million entries, measured).
    Flows {
        #[command(subcommand)]
        action: Option<FlowsAction>,
        /// Only this VIP's entries.
        #[arg(long)]
        vip: Option<String>,
        /// Only entries of the real at this address.
        #[arg(long)]
        real: Option<IpAddr>,
        /// Stop after this many entries.
        #[arg(long, default_value_t = crate::operator::flow::DEFAULT_LIMIT)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Write packets the balancer dropped (with the reason), handed off, saw as unknown
    /// mid-flow TCP, or ICMP to a VIP, to a pcapng file (tcpdump -r, Wireshark; the reason is
    /// each packet's comment). Needs the rights `lb run` has (it opens the pinned maps).
    Capture {
        /// The pcapng file to write.
        #[arg(short = 'w')]
        file: PathBuf,
        /// What to capture: drop, handoff, miss, icmp or all (comma-separated).
        #[arg(long, default_value = "drop", value_delimiter = ',')]
        what: Vec<String>,
        /// Only packets to this VIP (its address; and its port and protocol when the packet
        /// shows them).
        #[arg(long)]
        vip: Option<String>,
        /// Stop after this many packets.
        #[arg(short = 'c')]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Packets a second each CPU copies at most (the rest are counted, not copied).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
    },
    /// Findings about this node, each with its evidence and the action to take: reals down or
    /// flapping, traffic off its ring share, a healthy VIP not announced, BIRD errors, handoff
    /// peers down, capacity under the prepend threshold, health checks slowing, MTU drops, a
    /// full connection table, a config file changed but not reloaded. Exit code 0 fine, 1
    /// warnings, 2 critical (or lb unreachable).
    Doctor {
        #[arg(long)]
        json: bool,
        /// Milliseconds to sample the counters over (traffic shares, drops, MTU answers), at
        /// most 30000.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=crate::operator::doctor::MAX_WINDOW_MS))]
        window_ms: u64,
    },
    /// Print a shell completion script: `lb completions bash > /etc/bash_completion.d/lb`.
    Completions { shell: Shell },
    /// Write the man pages (lb.1, and lb-SUBCOMMAND.1 for each subcommand) into DIR (`cargo
    /// xtask dist` does).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// Shells `lb completions` writes for.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
pub enum FlowsAction {
    /// Delete every entry of a real: its clients' next packets take the ring (or a peer) again.
    Purge {
        #[arg(long)]
        real: IpAddr,
        /// Only this VIP's entries of that real.
        #[arg(long)]
        vip: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum BackendAction {
    /// Attach the decapsulator, hold the VIPs, set the sysctls DSR needs, serve /healthz,
    /// /load and /metrics. Idempotent; the data plane stays after exit.
    Run,
    /// Detach it, remove the VIPs `run` added, put the sysctls back.
    Stop,
    /// /healthz answers 503 (the balancer takes this backend out) until `undrain`.
    Drain,
    Undrain,
    /// Counters, VIPs and drain state.
    Status,
}

#[derive(Subcommand)]
pub enum SiteAction {
    Drain,
    Undrain,
}

#[derive(Subcommand)]
pub enum VipAction {
    /// Add the `[[vip]]` entries of a TOML file written like the config file's.
    Add {
        file: PathBuf,
    },
    Remove {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum RealAction {
    /// Weight 0: no new flows, established flows kept.
    Drain {
        vip: String,
        real: IpAddr,
    },
    /// Back to the config's weight.
    Enable {
        vip: String,
        real: IpAddr,
    },
    SetWeight {
        vip: String,
        real: IpAddr,
        weight: u32,
    },
}

/// Where the fleet store is: a node file's `[fleet]`, or given here.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// A node file whose `[fleet]` says where the store is and how to log in.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// etcd client URLs, comma-separated (instead of --config).
    #[arg(long, global = true, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// The fleet's key prefix (with --endpoints; default /anycast-lb).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// etcd user (with --endpoints), and a file (mode 0600) holding its password.
    #[arg(long, global = true)]
    pub user: Option<String>,
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// TLS (with https:// endpoints): the CA that signed the members' certificates, and a
    /// client certificate with its key (mode 0600) when etcd asks for one.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    #[arg(long, global = true)]
    pub cert_file: Option<PathBuf>,
    #[arg(long, global = true)]
    pub key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum GeodnsAction {
    /// Follow the fleet store and keep gdnsd's state file (and --json-file) up to date: a
    /// site's unicast addresses are UP while the site announces the VIP with capacity.
    Run {
        #[arg(long)]
        state_file: PathBuf,
        /// The same state as JSON, for other DNS servers.
        #[arg(long)]
        json_file: Option<PathBuf>,
    },
    /// Write gdnsd's config snippets for the fleet's sites and VIPs into --out
    /// (anycast-lb.service_types, anycast-lb.plugins, anycast-lb.records) and print how to
    /// include them.
    Render {
        #[arg(long)]
        out: PathBuf,
        /// The state file `lb geodns run` writes, as gdnsd should read it.
        #[arg(long)]
        state_file: PathBuf,
        /// Place clients by the sites' coordinates, with this GeoIP2 City database.
        #[arg(long, required_unless_present = "nets", conflicts_with = "nets")]
        geoip2_db: Option<PathBuf>,
        /// Place clients by a gdnsd nets file of yours instead (`NETWORK => [ site, .. ]`).
        #[arg(long)]
        nets: Option<PathBuf>,
    },
    /// Each site's state per VIP now, as `lb geodns run` would write it.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum FleetAction {
    /// Sites and nodes: the revision each runs (or refused), VIPs announced, reals down, and
    /// where nodes of one site disagree about a real.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate FILE, then write it as the fleet document if the store's revision is still the
    /// one you saw (--revision; default: the one read just before writing).
    ///
    /// With --canary, a staged rollout: those nodes run it first; once each has run it for
    /// --hold-s with no VIP lost and no real down that was up before, it becomes the document
    /// and every node follows; otherwise it halts and the canaries go back.
    Apply {
        file: PathBuf,
        #[arg(long)]
        revision: Option<i64>,
        /// Canary node names (as in their `[fleet] node`).
        #[arg(long, num_args = 1..)]
        canary: Vec<String>,
        /// Seconds each canary runs the candidate before it may be promoted.
        #[arg(long, default_value_t = 60)]
        hold_s: u64,
    },
    /// What applying FILE would change, and the revision it would replace.
    Diff { file: PathBuf },
    /// Print the fleet document as stored, with its revision.
    Show,
    /// Withdraw every VIP of SITE over BGP on all its nodes (forwarding continues).
    Drain { site: String },
    /// Announce SITE's VIPs again.
    Undrain { site: String },
}
