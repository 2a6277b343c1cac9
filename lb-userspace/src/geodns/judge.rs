//! A site's state for a VIP, as DNS should see it: UP when at least one node of the site
//! announces the VIP over BGP (its stage is announcing, the VIP is not withdrawn, no fleet
//! drain) and its healthy reals carry at least the `[geodns] capacity_floor` of the site's
//! configured weight; DOWN otherwise, with the reason.

use std::{collections::BTreeSet, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    fleet::{report::NodeReport, RawFleet, RawFleetVip},
    status::SiteStage,
};

/// One site's answer for one VIP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteAnswer {
    pub vip: String,
    pub site: String,
    pub up: bool,
    /// Why it is up (the node that announces it) or down.
    pub why: String,
    /// The largest share of the site's configured weight that one announcing node's healthy
    /// reals carry (0 ..= 1).
    pub capacity: f64,
    /// The site's unicast addresses for this VIP.
    pub addresses: Vec<IpAddr>,
}

/// Every (VIP, site) that has unicast addresses, in the document's order; `drained`: the sites
/// under `lb fleet drain`.
pub fn judge<'a>(doc: &RawFleet, reports: impl Iterator<Item = &'a NodeReport> + Clone, drained: &BTreeSet<String>) -> Vec<SiteAnswer> {
    let floor = doc.geodns.as_ref().map_or(0.0, |g| g.capacity_floor());
    let mut answers = Vec::new();
    for vip in &doc.vips {
        for (site, addrs) in &vip.unicast {
            let addresses = addrs.iter().filter_map(|a| a.parse().ok()).collect();
            let (up, why, capacity) = site_state(vip, site, reports.clone(), drained, floor);
            answers.push(SiteAnswer { vip: vip.vip.name.clone(), site: site.clone(), up, why, capacity, addresses });
        }
    }
    answers
}

fn site_state<'a>(
    vip: &RawFleetVip,
    site: &str,
    reports: impl Iterator<Item = &'a NodeReport>,
    drained: &BTreeSet<String>,
    floor: f64,
) -> (bool, String, f64) {
    if drained.contains(site) {
        return (false, "drained (lb fleet drain)".into(), 0.0);
    }
    let nodes: Vec<&NodeReport> = reports.filter(|r| r.site == site).collect();
    if nodes.is_empty() {
        return (false, "no node of the site reports to the store".into(), 0.0);
    }
    let mut reasons = Vec::new();
    let mut best: Option<(f64, &str)> = None;
    for node in nodes {
        let capacity = capacity(vip, site, node);
        let refusal = match &node.stage {
            _ if node.fleet_drained => Some("drained (lb fleet drain)".to_owned()),
            SiteStage::Announcing if node.withdrawn.contains(&vip.vip.name) => Some("withdrawn (below min_healthy)".to_owned()),
            SiteStage::Announcing if capacity <= 0.0 || capacity < floor => {
                Some(format!("capacity {:.0}% under the floor {:.0}%", capacity * 100.0, floor * 100.0))
            }
            SiteStage::Announcing => None,
            SiteStage::GracefulShutdown { .. } => Some("draining (graceful shutdown)".to_owned()),
            SiteStage::Withdrawn => Some("withdrawn (lb site drain or exiting)".to_owned()),
            SiteStage::NoBgp => Some("announces nothing (no [bgp])".to_owned()),
        };
        match refusal {
            Some(why) => reasons.push(format!("{}: {why}", node.node)),
            None if best.is_none_or(|(c, _)| capacity > c) => best = Some((capacity, &node.node)),
            None => {}
        }
    }
    match best {
        Some((capacity, node)) => (true, format!("announced by {node}, capacity {:.0}%", capacity * 100.0), capacity),
        None => (false, reasons.join("; "), 0.0),
    }
}

/// The share of the site's configured weight for `vip` that `node`'s healthy reals carry now.
fn capacity(vip: &RawFleetVip, site: &str, node: &NodeReport) -> f64 {
    let reals = vip.reals.get(site).map(Vec::as_slice).unwrap_or_default();
    let (mut configured, mut serving) = (0u64, 0u64);
    for real in reals {
        let weight = u64::from(real.weight.unwrap_or(1));
        configured += weight;
        // The report lists only the reals not up at their configured weight.
        let exception = node.reals.iter().find(|r| r.vip == vip.vip.name && real.address.parse() == Ok(r.address));
        serving += match exception {
            Some(r) if r.state == "up" => u64::from(r.weight),
            Some(_) => 0,
            None => weight,
        };
    }
    if configured == 0 {
        0.0
    } else {
        serving as f64 / configured as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::RealReport;

    const DOC: &str = r#"
[[site]]
name = "fra"
[[site]]
name = "tyo"
[[vip]]
name = "web"
address = "192.0.2.10"
port = 443
protocol = "tcp"
[vip.reals]
fra = [{ address = "10.1.0.1" }, { address = "10.1.0.2" }, { address = "10.1.0.3", weight = 2 }]
tyo = [{ address = "10.2.0.1" }]
[vip.unicast]
fra = ["198.51.100.1"]
tyo = ["198.51.100.2"]
[geodns]
capacity_floor = 0.5
"#;

    fn node(site: &str, name: &str, stage: SiteStage) -> NodeReport {
        NodeReport { stage, ..NodeReport::starting(site, name) }
    }

    fn down(address: &str) -> RealReport {
        RealReport { vip: "web".into(), address: address.parse().unwrap(), state: "down".into(), weight: 0 }
    }

    fn states(reports: &[NodeReport], drained: &[String]) -> Vec<(String, bool, String)> {
        let doc = crate::fleet::parse(DOC).unwrap();
        judge(&doc, reports.iter(), &drained.iter().cloned().collect()).into_iter().map(|a| (a.site, a.up, a.why)).collect()
    }

    #[test]
    fn a_site_is_up_when_one_node_announces_the_vip_with_capacity() {
        let fra2 = NodeReport { reals: vec![down("10.1.0.3")], ..node("fra", "fra-2", SiteStage::Announcing) };
        let got = states(&[node("fra", "fra-1", SiteStage::Withdrawn), fra2, node("tyo", "tyo-1", SiteStage::Announcing)], &[]);
        assert_eq!(got[0], ("fra".into(), true, "announced by fra-2, capacity 50%".into()));
        assert_eq!(got[1], ("tyo".into(), true, "announced by tyo-1, capacity 100%".into()));
    }

    #[test]
    fn a_site_is_down_when_drained_withdrawn_silent_or_under_its_floor() {
        let announcing = || node("fra", "fra-1", SiteStage::Announcing);
        let cases: Vec<(Vec<NodeReport>, Vec<String>, &str)> = vec![
            (vec![node("fra", "fra-1", SiteStage::Withdrawn)], vec![], "fra-1: withdrawn (lb site drain or exiting)"),
            (
                vec![node("fra", "fra-1", SiteStage::GracefulShutdown { withdraw_in_ms: 5000 })],
                vec![],
                "fra-1: draining (graceful shutdown)",
            ),
            (vec![announcing()], vec!["fra".into()], "drained (lb fleet drain)"),
            (vec![], vec![], "no node of the site reports to the store"),
            (vec![NodeReport { withdrawn: vec!["web".into()], ..announcing() }], vec![], "fra-1: withdrawn (below min_healthy)"),
            (
                vec![NodeReport { reals: vec![down("10.1.0.3"), down("10.1.0.1")], ..announcing() }],
                vec![],
                "fra-1: capacity 25% under the floor 50%",
            ),
        ];
        for (reports, drained, why) in cases {
            let got = states(&reports, &drained);
            assert_eq!(got[0], ("fra".into(), false, why.into()));
        }
    }
}
