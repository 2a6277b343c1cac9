//! Command line of `lb`: the daemon, config checking, and admin commands over the API.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

use crate::{
    admin::{RealRequest, VipName},
    status::{HandoffStatus, VipStatus},
};

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
    /// Where a flow goes now and why: the connection table's entry or the ring slot, what a
    /// mid-flow packet the table does not know would do, and whether the VIP is announced.
    Flow {
        /// The client: ADDR or ADDR:PORT ([ADDR]:PORT for IPv6).
        src: String,
        /// The VIP: ADDR:PORT ([ADDR]:PORT for IPv6).
        vip: String,
        #[arg(default_value = "tcp")]
        proto: crate::config::Proto,
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
        /// Milliseconds to sample the counters over (traffic shares, drops, MTU answers).
        #[arg(long, default_value_t = 2000)]
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

/// A small HTTP/1.0 client for the admin API: over the admin socket, or over TCP with a token.
fn http(target: &Target, method: &str, path: &str, body: Option<String>) -> Result<(u16, String)> {
    let body = body.unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    let reply = match target.api {
        Some(api) => {
            if let Some(file) = &target.token_file {
                let token = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
                head += &format!("Authorization: Bearer {}\r\n", token.trim());
            }
            let conn =
                TcpStream::connect_timeout(&api, Duration::from_secs(3)).with_context(|| format!("connecting to lb's API at {api}"))?;
            conn.set_read_timeout(Some(Duration::from_secs(30)))?;
            exchange(conn, &head, &body)?
        }
        None => {
            let instance = target.instance.as_deref().unwrap_or("default");
            let socket = target.socket.clone().unwrap_or_else(|| crate::config::default_api_socket(instance));
            let conn = UnixStream::connect(&socket).with_context(|| {
                format!(
                    "connecting to lb's admin socket {} (is `lb run` of instance {instance:?} running, and may this user use it?)",
                    socket.display()
                )
            })?;
            conn.set_read_timeout(Some(Duration::from_secs(30)))?;
            exchange(conn, &head, &body)?
        }
    };
    let status = reply.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status in the reply")?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

fn exchange(mut conn: impl std::io::Read + std::io::Write, head: &str, body: &str) -> Result<String> {
    write!(conn, "{head}\r\n{body}")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply)
}

fn expect_ok((status, body): (u16, String)) -> Result<String> {
    if status != 200 {
        bail!("lb answered {status}: {}", body.trim());
    }
    Ok(body)
}

pub fn print_status(vips: &[VipStatus]) {
    for v in vips {
        let bgp = if v.announced { "  announced" } else { "" };
        println!("VIP {} {}  ring {}  healthy {}/{} (min {}){bgp}", v.name, v.vip, v.ring_size, v.healthy(), v.reals.len(), v.min_healthy);
        println!("  {:<40} {:>4}  {:<5} {:>6} {:>7}", "REAL", "ID", "STATE", "WEIGHT", "SHARE");
        for r in &v.reals {
            let weight = if r.weight == r.config_weight { r.weight.to_string() } else { format!("{}*", r.weight) };
            let share = 100.0 * r.slots as f64 / v.ring_size as f64;
            let state = match (r.up, r.draining) {
                (false, _) => "down",
                (true, true) => "drain",
                (true, false) => "up",
            };
            println!("  {:<40} {:>4}  {:<5} {:>6} {:>6.1}%", r.address, r.id, state, weight, share);
        }
    }
    if vips.iter().any(|v| v.reals.iter().any(|r| r.weight != r.config_weight)) {
        println!("(* weight set at run time, or 0 while the backend drains)");
    }
}

pub fn print_site(stage: &crate::status::SiteStage) {
    use crate::status::SiteStage;
    match stage {
        SiteStage::NoBgp => {}
        SiteStage::Announcing => println!("SITE announcing"),
        SiteStage::GracefulShutdown { withdraw_in_ms } => {
            println!(
                "SITE graceful shutdown: announced with GRACEFUL_SHUTDOWN (65535:0), withdrawing in {:.1} s",
                *withdraw_in_ms as f64 / 1e3
            )
        }
        SiteStage::Withdrawn => println!("SITE withdrawn (drained or exiting; forwarding continues)"),
    }
}

pub fn print_handoff(h: &HandoffStatus) {
    let Some(node) = h.node else { return };
    let adopt = if h.adopt { "  adopting (site withdrawn: handed-off flows it does not know are taken here)" } else { "" };
    println!("HANDOFF node {node}{adopt}");
    for (peer, up) in &h.peers {
        println!("  peer {peer:<38} {}", if *up { "up" } else { "down" });
    }
}

/// Runs the admin commands (everything but `run`, which main starts on a runtime).
pub fn admin(cmd: Cmd, target: &Target) -> Result<()> {
    let api = target;
    match cmd {
        Cmd::Run { .. } | Cmd::Doctor { .. } => unreachable!("main runs these (they have their own exit codes)"),
        Cmd::CheckConfig { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            if crate::backend::is_backend_config(&text) {
                let config = crate::backend::load(&file, crate::config::InterfaceCheck::OnThisHost)?;
                println!(
                    "{}: ok (backend {:?}: {} addresses, {} VIPs)",
                    file.display(),
                    config.instance,
                    config.addresses.len(),
                    config.vips.len()
                );
                return Ok(());
            }
            let config = crate::config::load(&file, crate::config::InterfaceCheck::OnThisHost)?;
            let reals: usize = config.vips.iter().map(|v| v.reals.len()).sum();
            println!("{}: ok ({} VIPs, {reals} reals, instance {:?})", file.display(), config.vips.len(), config.instance);
            Ok(())
        }
        Cmd::Backend { action, config } => {
            let runtime = || tokio::runtime::Runtime::new().context("starting the runtime");
            match action {
                BackendAction::Run => runtime()?.block_on(crate::backend::run(&config)),
                BackendAction::Stop => runtime()?.block_on(crate::backend::stop(&config)),
                BackendAction::Drain => crate::backend::drain(&config, true),
                BackendAction::Undrain => crate::backend::drain(&config, false),
                BackendAction::Status => crate::backend::status(&config),
            }
        }
        Cmd::Stop => crate::daemon::stop(
            target.instance.as_deref().context("`lb stop` detaches an instance's data plane: name it with --instance NAME")?,
        ),
        Cmd::Status { json } => {
            let body = expect_ok(http(api, "GET", "/status", None)?)?;
            if json {
                println!("{body}");
            } else {
                print_status(&serde_json::from_str::<Vec<VipStatus>>(&body).context("parsing status")?);
                let body = expect_ok(http(api, "GET", "/site", None)?)?;
                print_site(&serde_json::from_str(&body).context("parsing the site's stage")?);
                let body = expect_ok(http(api, "GET", "/handoff", None)?)?;
                print_handoff(&serde_json::from_str(&body).context("parsing handoff status")?);
            }
            Ok(())
        }
        Cmd::Real { action } => {
            let (path, req) = match action {
                RealAction::Drain { vip, real } => ("/real/drain", RealRequest { vip, real, weight: None }),
                RealAction::Enable { vip, real } => ("/real/enable", RealRequest { vip, real, weight: None }),
                RealAction::SetWeight { vip, real, weight } => ("/real/set-weight", RealRequest { vip, real, weight: Some(weight) }),
            };
            print!("{}", expect_ok(http(api, "POST", path, Some(serde_json::to_string(&req)?))?)?);
            Ok(())
        }
        Cmd::Vip { action: VipAction::Add { file } } => {
            #[derive(serde::Deserialize)]
            struct VipFile {
                vip: Vec<crate::config::RawVip>,
            }
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let vips: VipFile = toml::from_str(&text).with_context(|| format!("{}: expected [[vip]] entries", file.display()))?;
            for vip in vips.vip {
                let name = vip.name.clone();
                expect_ok(http(api, "POST", "/vip/add", Some(serde_json::to_string(&vip)?))?)
                    .with_context(|| format!("adding VIP {name:?}"))?;
                println!("added VIP {name}");
            }
            Ok(())
        }
        Cmd::Vip { action: VipAction::Remove { name } } => {
            let body = serde_json::to_string(&VipName { name })?;
            print!("{}", expect_ok(http(api, "POST", "/vip/remove", Some(body))?)?);
            Ok(())
        }
        Cmd::Site { action } => {
            let path = match action {
                SiteAction::Drain => "/site/drain",
                SiteAction::Undrain => "/site/undrain",
            };
            print!("{}", expect_ok(http(api, "POST", path, None)?)?);
            Ok(())
        }
        Cmd::Reload => {
            print!("{}", expect_ok(http(api, "POST", "/reload", None)?)?);
            Ok(())
        }
        Cmd::Capture { file, what, vip, count, seconds, rate } => {
            let mut bits = 0;
            for w in &what {
                bits |=
                    crate::operator::capture::what_of(w).with_context(|| format!("--what {w}: one of drop, handoff, miss, icmp, all"))?;
            }
            let vip = match vip {
                None => None,
                Some(name) => {
                    let status: Vec<VipStatus> = serde_json::from_str(&expect_ok(http(api, "GET", "/status", None)?)?)?;
                    Some(status.iter().find(|v| v.name == name).with_context(|| format!("no VIP {name:?}"))?.vip)
                }
            };
            let opts = crate::operator::capture::Options { what: bits, vip, count, duration: seconds.map(Duration::from_secs), rate };
            let pins = crate::dataplane::pins::balancer(target.instance.as_deref().unwrap_or("default"));
            eprintln!("capturing {} into {} (Ctrl-C stops)", what.join(","), file.display());
            let s = crate::operator::capture::run(&pins, &file, &opts)?;
            eprintln!(
                "{} packets written; the data plane copied {}, {} over the rate limit; {} lost (perf buffer full); {} not to the VIP",
                s.written, s.copied, s.suppressed, s.lost, s.filtered
            );
            Ok(())
        }
        Cmd::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut <Opt as clap::CommandFactory>::command(), "lb", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(<Opt as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))
        }
        Cmd::Flow { src, vip, proto, json } => {
            let (src, src_port) = endpoint(&src, false).context("the client: ADDR or ADDR:PORT")?;
            let (dst, dst_port) = endpoint(&vip, true).context("the VIP: ADDR:PORT")?;
            let query = crate::operator::flow::FlowQuery { src, src_port, dst, dst_port, proto };
            let body = expect_ok(http(api, "GET", &format!("/flow?{}", serde_urlencoded::to_string(query)?), None)?)?;
            if json {
                println!("{body}");
            } else {
                print!("{}", serde_json::from_str::<crate::operator::flow::FlowReport>(&body).context("parsing the flow report")?);
            }
            Ok(())
        }
        Cmd::Flows { action: Some(FlowsAction::Purge { real, vip }), .. } => {
            let filter = crate::operator::flow::FlowFilter { vip, real: Some(real), limit: None };
            let body = expect_ok(http(api, "POST", "/flows/purge", Some(serde_json::to_string(&filter)?))?)?;
            let purged: crate::operator::flow::Purged = serde_json::from_str(&body).context("parsing the purge's answer")?;
            println!("removed {} entries of {real} ({} entries read)", purged.removed, purged.scanned);
            Ok(())
        }
        Cmd::Flows { action: None, vip, real, limit, json } => {
            let filter = crate::operator::flow::FlowFilter { vip, real, limit: Some(limit) };
            let body = expect_ok(http(api, "GET", &format!("/flows?{}", serde_urlencoded::to_string(&filter)?), None)?)?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let list: crate::operator::flow::FlowList = serde_json::from_str(&body).context("parsing the flow list")?;
            for e in &list.entries {
                println!("{e}");
            }
            let more = if list.truncated { " (stopped at --limit: more match)" } else { "" };
            println!("{} entries listed, {} read{more}", list.entries.len(), list.scanned);
            Ok(())
        }
    }
}

/// `lb doctor`: prints the findings; returns the exit code (2 when lb cannot be asked).
pub fn doctor(target: &Target, json: bool, window_ms: u64) -> u8 {
    let report = http(target, "GET", &format!("/doctor?window_ms={window_ms}"), None).and_then(expect_ok).and_then(|body| {
        let report: crate::operator::doctor::Report = serde_json::from_str(&body).context("parsing the doctor's report")?;
        Ok((body, report))
    });
    match report {
        Ok((body, report)) => {
            if json {
                println!("{body}");
            } else {
                print!("{report}");
            }
            report.exit_code()
        }
        Err(e) => {
            eprintln!("lb doctor: CRITICAL: cannot ask lb: {e:#}");
            2
        }
    }
}

/// "ADDR", "ADDR:PORT" or "[ADDR]:PORT"; the port is required when `port_required`.
fn endpoint(text: &str, port_required: bool) -> Result<(IpAddr, u16)> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    if port_required {
        bail!("{text:?} is not ADDR:PORT");
    }
    let addr = text.trim_start_matches('[').trim_end_matches(']');
    Ok((addr.parse().with_context(|| format!("{text:?} is not an address"))?, 0))
}
