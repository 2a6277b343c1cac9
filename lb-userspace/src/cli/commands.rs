//! What each `lb` subcommand does (but `run`, which main starts on a runtime): admin commands
//! ask the running `lb` through its API; `check-config`, `backend`, `stop`, `capture`,
//! `completions` and `man` work locally.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};

use super::{
    args::{BackendAction, Cmd, FlowsAction, Opt, RealAction, Shell, SiteAction, Target, VipAction},
    client::AdminClient,
    print::{print_handoff, print_site, print_status},
};
use crate::{
    admin::{RealRequest, VipName},
    backend,
    config::{self, InterfaceCheck, RawVip},
    daemon,
    dataplane::pins,
    operator::{capture, doctor, flow},
    status::VipStatus,
};

/// Runs the admin commands (everything but `run` and `doctor`, which main runs: they have their
/// own runtime and exit codes).
pub fn admin(cmd: Cmd, target: &Target) -> Result<()> {
    let api = || AdminClient::new(target);
    match cmd {
        Cmd::Run { .. } | Cmd::Doctor { .. } => unreachable!("main runs these (they have their own exit codes)"),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Fleet { action, store } => super::fleet::run(action, &store),
        Cmd::Geodns { action, store } => super::geodns::run(action, &store),
        Cmd::Backend { action, config } => run_backend(action, &config),
        Cmd::Stop => {
            daemon::stop(target.instance.as_deref().context("`lb stop` detaches an instance's data plane: name it with --instance NAME")?)
        }
        Cmd::Status { json } => status(&api()?, json),
        Cmd::Real { action } => {
            let (path, req) = match action {
                RealAction::Drain { vip, real } => ("/real/drain", RealRequest { vip, real, weight: None }),
                RealAction::Enable { vip, real } => ("/real/enable", RealRequest { vip, real, weight: None }),
                RealAction::SetWeight { vip, real, weight } => ("/real/set-weight", RealRequest { vip, real, weight: Some(weight) }),
            };
            print!("{}", api()?.post(path, Some(serde_json::to_string(&req)?))?);
            Ok(())
        }
        Cmd::Vip { action: VipAction::Add { file } } => add_vips(&api()?, &file),
        Cmd::Vip { action: VipAction::Remove { name } } => {
            print!("{}", api()?.post("/vip/remove", Some(serde_json::to_string(&VipName { name })?))?);
            Ok(())
        }
        Cmd::Site { action } => {
            let path = match action {
                SiteAction::Drain => "/site/drain",
                SiteAction::Undrain => "/site/undrain",
            };
            print!("{}", api()?.post(path, None)?);
            Ok(())
        }
        Cmd::Reload => {
            print!("{}", api()?.post("/reload", None)?);
            Ok(())
        }
        Cmd::Capture { file, what, vip, count, seconds, rate } => {
            let mut bits = 0;
            for w in &what {
                bits |= capture::what_of(w).with_context(|| format!("--what {w}: one of drop, handoff, miss, icmp, all"))?;
            }
            let vip = match vip {
                None => None,
                Some(name) => {
                    let status: Vec<VipStatus> = serde_json::from_str(&api()?.get("/status")?)?;
                    Some(status.iter().find(|v| v.name == name).with_context(|| format!("no VIP {name:?}"))?.vip)
                }
            };
            let opts = capture::Options { what: bits, vip, count, duration: seconds.map(Duration::from_secs), rate };
            let pins = pins::balancer(target.instance_name());
            eprintln!("capturing {} into {} (Ctrl-C stops)", what.join(","), file.display());
            let s = capture::run(&pins, &file, &opts)?;
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
        Cmd::Flow { src, vip, proto, cid, json } => {
            let (src, src_port) = endpoint(&src, false).context("the client: ADDR or ADDR:PORT")?;
            let (dst, dst_port) = endpoint(&vip, true).context("the VIP: ADDR:PORT")?;
            let query = flow::FlowQuery { src, src_port, dst, dst_port, proto, cid };
            let body = api()?.get(&format!("/flow?{}", serde_urlencoded::to_string(query)?))?;
            if json {
                println!("{body}");
            } else {
                print!("{}", serde_json::from_str::<flow::FlowReport>(&body).context("parsing the flow report")?);
            }
            Ok(())
        }
        Cmd::Flows { action: Some(FlowsAction::Purge { real, vip }), .. } => {
            let filter = flow::FlowFilter { vip, real: Some(real), limit: None };
            let body = api()?.post("/flows/purge", Some(serde_json::to_string(&filter)?))?;
            let purged: flow::Purged = serde_json::from_str(&body).context("parsing the purge's answer")?;
            println!("removed {} entries of {real} ({} entries read)", purged.removed, purged.scanned);
            Ok(())
        }
        Cmd::Flows { action: None, vip, real, limit, json } => {
            let filter = flow::FlowFilter { vip, real, limit: Some(limit) };
            let body = api()?.get(&format!("/flows?{}", serde_urlencoded::to_string(&filter)?))?;
            if json {
                println!("{body}");
                return Ok(());
            }
            let list: flow::FlowList = serde_json::from_str(&body).context("parsing the flow list")?;
            for e in &list.entries {
                println!("{e}");
            }
            let more = if list.truncated { " (stopped at --limit: more match)" } else { "" };
            println!("{} entries listed, {} read{more}", list.entries.len(), list.scanned);
            Ok(())
        }
    }
}

/// `lb check-config FILE`: the balancer's config, or a backend's (it has `[backend]`).
fn check_config(file: &Path) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if backend::is_backend_config(&text) {
        let config = backend::load(file, InterfaceCheck::OnThisHost)?;
        println!(
            "{}: ok (backend {:?}: {} addresses, {} VIPs)",
            file.display(),
            config.instance,
            config.addresses.len(),
            config.vips.len()
        );
        return Ok(());
    }
    if crate::fleet::is_fleet_document(&text) {
        let doc = crate::fleet::parse(&text)?;
        doc.validate()?;
        println!("{}: ok (fleet document: {} sites, {} VIPs)", file.display(), doc.sites.len(), doc.vips.len());
        return Ok(());
    }
    let raw = config::parse_raw(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    daemon::fleet::check_node_file(&raw).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let config = raw.validate(InterfaceCheck::OnThisHost)?;
    config::check_files(&config)?;
    if let Some(fleet) = &config.fleet {
        println!(
            "{}: ok (fleet node {:?} of site {:?}, VIPs from {:?} under {}; instance {:?})",
            file.display(),
            fleet.node,
            fleet.site,
            fleet.endpoints,
            fleet.prefix,
            config.instance
        );
        return Ok(());
    }
    let reals: usize = config.vips.iter().map(|v| v.reals.len()).sum();
    println!("{}: ok ({} VIPs, {reals} reals, instance {:?})", file.display(), config.vips.len(), config.instance);
    Ok(())
}

fn run_backend(action: BackendAction, config: &Path) -> Result<()> {
    let runtime = || tokio::runtime::Runtime::new().context("starting the runtime");
    match action {
        BackendAction::Run => runtime()?.block_on(backend::run(config)),
        BackendAction::Stop => runtime()?.block_on(backend::stop(config)),
        BackendAction::Drain => backend::drain(config, true),
        BackendAction::Undrain => backend::drain(config, false),
        BackendAction::Status => backend::status(config),
    }
}

/// `lb status`: the VIPs and reals, the site's stage and handoff (or the first as JSON).
fn status(api: &AdminClient, json: bool) -> Result<()> {
    let body = api.get("/status")?;
    if json {
        println!("{body}");
        return Ok(());
    }
    print_status(&serde_json::from_str::<Vec<VipStatus>>(&body).context("parsing status")?);
    print_site(&serde_json::from_str(&api.get("/site")?).context("parsing the site's stage")?);
    print_handoff(&serde_json::from_str(&api.get("/handoff")?).context("parsing handoff status")?);
    Ok(())
}

/// `lb vip add FILE`: each `[[vip]]` of the file, in order.
fn add_vips(api: &AdminClient, file: &Path) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct VipFile {
        vip: Vec<RawVip>,
    }
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let vips: VipFile = toml::from_str(&text).with_context(|| format!("{}: expected [[vip]] entries", file.display()))?;
    for vip in vips.vip {
        let name = vip.name.clone();
        api.post("/vip/add", Some(serde_json::to_string(&vip)?)).with_context(|| format!("adding VIP {name:?}"))?;
        println!("added VIP {name}");
    }
    Ok(())
}

/// `lb doctor`: prints the findings; returns the exit code (2 when lb cannot be asked).
pub fn doctor(target: &Target, json: bool, window_ms: u64) -> u8 {
    let report = AdminClient::new(target)
        .and_then(|api| {
            // The answer comes after the window: wait for it, and for lb's own time to answer.
            let limit = std::time::Duration::from_millis(window_ms) + std::time::Duration::from_secs(10);
            api.get_within(&format!("/doctor?window_ms={window_ms}"), limit)
        })
        .and_then(|body| {
            let report: doctor::Report = serde_json::from_str(&body).context("parsing the doctor's report")?;
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
fn endpoint(text: &str, port_required: bool) -> Result<(std::net::IpAddr, u16)> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok((sa.ip(), sa.port()));
    }
    if port_required {
        bail!("{text:?} is not ADDR:PORT");
    }
    let addr = text.trim_start_matches('[').trim_end_matches(']');
    Ok((addr.parse().with_context(|| format!("{text:?} is not an address"))?, 0))
}
