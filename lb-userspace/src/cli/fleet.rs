//! `lb fleet`: reads and writes the fleet store directly (etcd, with its own authentication),
//! not through a running `lb`.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use super::args::{FleetAction, StoreArgs};
use crate::{
    config::{self, FleetNode, FleetTls, InterfaceCheck, DEFAULT_FLEET_PREFIX},
    fleet::{
        self,
        report::NodeReport,
        store::{self, StoreAccess, StoreTls},
    },
};

pub fn run(action: FleetAction, args: &StoreArgs) -> Result<()> {
    let access = access(args)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let mut client = access.connect().await?;
        match action {
            FleetAction::Status { json } => status(&mut client, &access, json).await,
            FleetAction::Show => {
                let doc = store::read_document(&mut client, &access).await?;
                let (revision, text) = doc.text.context("no fleet document yet (`lb fleet apply FILE` writes one)")?;
                println!("# fleet document, revision {revision}");
                print!("{text}");
                Ok(())
            }
            FleetAction::Diff { file } => {
                let (new, _) = read_valid(&file)?;
                let doc = store::read_document(&mut client, &access).await?;
                let (revision, lines) = changes(doc.text, &new)?;
                println!("against revision {revision}:");
                print_lines(&lines);
                Ok(())
            }
            FleetAction::Apply { file, revision, canary, hold_s } => {
                let (new, text) = read_valid(&file)?;
                let doc = store::read_document(&mut client, &access).await?;
                let (current, lines) = changes(doc.text, &new)?;
                let expected = revision.unwrap_or(current);
                print_lines(&lines);
                if !canary.is_empty() {
                    let rollout = store::Canary { base: expected, text, canaries: canary, hold_s, halted: None };
                    store::start_canary(&mut client, &access, &rollout).await?;
                    println!(
                        "rollout started: {:?} run it first for {hold_s} s; then it replaces revision {expected} on every node, or halts (`lb fleet status`)",
                        rollout.canaries
                    );
                    return Ok(());
                }
                let written = store::write_document(&mut client, &access, &text, expected).await?;
                println!("applied: revision {written} (replacing {current}); `lb fleet status` shows each node taking it");
                Ok(())
            }
            FleetAction::Drain { ref site } | FleetAction::Undrain { ref site } if !fleet::is_site_name(site) => {
                bail!("{site:?} is not a site name")
            }
            FleetAction::Drain { site } => {
                store::set_drain(&mut client, &access, &site, true).await?;
                println!("site {site}: drained (its nodes withdraw their VIPs)");
                Ok(())
            }
            FleetAction::Undrain { site } => {
                store::set_drain(&mut client, &access, &site, false).await?;
                println!("site {site}: undrained (its nodes announce their servable VIPs)");
                Ok(())
            }
        }
    })
}

/// The store that `--config NODE_FILE` or `--endpoints ..` names, with its login.
pub(super) fn access(args: &StoreArgs) -> Result<StoreAccess> {
    match (&args.config, args.endpoints.is_empty()) {
        (Some(path), true) => {
            let config = config::load(path, InterfaceCheck::Skip)?;
            let node: FleetNode = config.fleet.with_context(|| format!("{} has no [fleet] section", path.display()))?;
            StoreAccess::of_node(&node)
        }
        (None, false) => {
            let login = store::login(args.user.as_deref(), args.password_file.as_deref(), "--password-file")?;
            let prefix = args.prefix.clone().unwrap_or_else(|| DEFAULT_FLEET_PREFIX.into());
            let client = match (&args.cert_file, &args.key_file) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                _ => bail!("--cert-file and --key-file come together"),
            };
            let tls = match (&args.ca_file, client) {
                (Some(ca), client) => {
                    Some(StoreTls::read(&FleetTls { ca_file: ca.clone(), client }, ["--ca-file", "--cert-file", "--key-file"])?)
                }
                (None, None) => None,
                (None, Some(_)) => bail!("--cert-file needs --ca-file (and https:// endpoints)"),
            };
            Ok(StoreAccess { endpoints: args.endpoints.clone(), prefix, login, tls })
        }
        (Some(_), false) => bail!("give --config or --endpoints, not both"),
        (None, true) => bail!("where is the store? give --config NODE_FILE (its [fleet]) or --endpoints URL[,URL..]"),
    }
}

/// The document in `file`, parsed and valid, and its text.
fn read_valid(file: &std::path::Path) -> Result<(fleet::RawFleet, String)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let doc = fleet::parse(&text).with_context(|| file.display().to_string())?;
    doc.validate().with_context(|| format!("{} is not a valid fleet document", file.display()))?;
    Ok((doc, text))
}

/// The stored revision (0: none) and what `new` changes against it.
fn changes(stored: Option<(i64, String)>, new: &fleet::RawFleet) -> Result<(i64, Vec<String>)> {
    match stored {
        None => Ok((0, vec!["(no document yet: everything in the file is new)".into()])),
        Some((revision, text)) => {
            let old = fleet::parse(&text).with_context(|| format!("the stored revision {revision} does not parse"))?;
            Ok((revision, fleet::diff(&old, new)))
        }
    }
}

fn print_lines(lines: &[String]) {
    if lines.is_empty() {
        println!("(no change)");
    }
    for l in lines {
        println!("{l}");
    }
}

#[derive(Serialize)]
struct FleetStatus {
    document_revision: i64,
    /// The staged rollout, under way or halted.
    rollout: Option<RolloutStatus>,
    drained_sites: Vec<String>,
    nodes: Vec<NodeReport>,
    disagreements: Vec<String>,
}

#[derive(Serialize)]
struct RolloutStatus {
    base: i64,
    canaries: Vec<String>,
    hold_s: u64,
    /// "canary" or "halted".
    stage: &'static str,
    halted: Option<String>,
}

async fn status(client: &mut etcd_client::Client, access: &StoreAccess, json: bool) -> Result<()> {
    let doc = store::read_document(client, access).await?;
    let drained_sites = store::drained_sites(client, access).await?;
    let mut nodes = Vec::new();
    for (key, text) in store::node_reports(client, access).await? {
        match serde_json::from_str::<NodeReport>(&text) {
            Ok(r) => nodes.push(r),
            Err(e) => eprintln!("warning: the report at {key} does not parse: {e}"),
        }
    }
    nodes.sort_by(|a, b| (&a.site, &a.node).cmp(&(&b.site, &b.node)));
    let rollout = store::read_canary(client, access).await?.map(|(_, c)| RolloutStatus {
        base: c.base,
        canaries: c.canaries,
        hold_s: c.hold_s,
        stage: if c.halted.is_some() { "halted" } else { "canary" },
        halted: c.halted,
    });
    let status = FleetStatus {
        document_revision: doc.text.as_ref().map_or(0, |(r, _)| *r),
        rollout,
        disagreements: disagreements(&nodes),
        drained_sites,
        nodes,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("fleet document: revision {}", status.document_revision);
    if let Some(r) = &status.rollout {
        match &r.halted {
            None => println!("rollout: canary stage, {:?} run a candidate for revision {} (hold {} s)", r.canaries, r.base, r.hold_s),
            Some(why) => println!("rollout: HALTED ({why}); the canaries {:?} went back to revision {}", r.canaries, r.base),
        }
    }
    if !status.drained_sites.is_empty() {
        println!("drained sites: {}", status.drained_sites.join(", "));
    }
    println!(
        "{:<12} {:<16} {:<9} {:<7} {:<18} {:<10} {:<28} DOCTOR",
        "SITE", "NODE", "REVISION", "STORE", "STAGE", "ANNOUNCED", "REALS DOWN"
    );
    for n in &status.nodes {
        let stage = serde_json::to_value(&n.stage).ok().and_then(|v| v["stage"].as_str().map(str::to_owned)).unwrap_or_default();
        let announced = format!("{}/{}", n.announced, n.vips);
        let down: Vec<String> = n.reals.iter().filter(|r| r.state == "down").map(|r| format!("{} {}", r.vip, r.address)).collect();
        println!(
            "{:<12} {:<16} {:<9} {:<7} {:<18} {:<10} {:<28} {}",
            n.site,
            n.node,
            n.revision,
            if n.store_reachable { "ok" } else { "LOST" },
            stage,
            announced,
            if down.is_empty() { "-".to_owned() } else { down.join(", ") },
            n.doctor.as_deref().unwrap_or("-")
        );
        if let Some(r) = &n.refused {
            println!("    refused revision {}: {}", r.revision, r.reason);
        }
        if let Some(c) = &n.canary {
            println!(
                "    canary of rollout {}: {}{}",
                c.revision,
                c.state,
                c.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            );
        }
    }
    if status.nodes.is_empty() {
        println!("(no node reports: no node is running, or none reaches the store)");
    }
    for d in &status.disagreements {
        println!("DISAGREE: {d}");
    }
    Ok(())
}

/// Reals that nodes of one site see differently (down on one, up on another). A report lists
/// only reals that are not up at their configured weight, so a real a node does not list is up
/// there, if the node serves its VIP.
pub fn disagreements(nodes: &[NodeReport]) -> Vec<String> {
    // (site, vip, real) -> [(node, state)] of the nodes that list it.
    let mut listed: BTreeMap<(String, String, String), Vec<(String, String)>> = BTreeMap::new();
    for n in nodes {
        for r in &n.reals {
            listed.entry((n.site.clone(), r.vip.clone(), r.address.to_string())).or_default().push((n.node.clone(), r.state.clone()));
        }
    }
    let mut out = Vec::new();
    for ((site, vip, real), states) in listed {
        let mut each: Vec<String> = states.iter().map(|(node, state)| format!("{state} on {node}")).collect();
        for n in nodes.iter().filter(|n| n.site == site && !states.iter().any(|(node, _)| *node == n.node)) {
            each.push(format!("up on {}", n.node));
        }
        let distinct: std::collections::BTreeSet<&str> = each.iter().map(|e| e.split(" on ").next().unwrap_or("")).collect();
        if distinct.len() > 1 {
            out.push(format!("site {site}, VIP {vip}, real {real}: {}", each.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::RealReport;

    fn node(site: &str, name: &str, reals: &[(&str, &str)]) -> NodeReport {
        let mut r = NodeReport::starting(site, name);
        r.reals = reals
            .iter()
            .map(|(addr, state)| RealReport { vip: "web".into(), address: addr.parse().unwrap(), state: (*state).into(), weight: 1 })
            .collect();
        r
    }

    #[test]
    fn nodes_of_a_site_that_see_a_real_differently_are_named() {
        let nodes = [
            node("a", "n1", &[("10.0.0.1", "down")]),
            node("a", "n2", &[]),
            node("b", "n3", &[("10.0.0.2", "down")]),
            node("b", "n4", &[("10.0.0.2", "down")]),
        ];
        // n1 sees 10.0.0.1 down, n2 (which lists nothing) sees it up; site b's nodes agree.
        assert_eq!(disagreements(&nodes), ["site a, VIP web, real 10.0.0.1: down on n1, up on n2"]);
    }
}
