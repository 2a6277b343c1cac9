//! The fleet document: the sites, and every VIP with its reals per site. `lb fleet apply`
//! writes it to the store as written (TOML); every node follows it and serves the VIPs its site
//! has reals for, with those reals.
//!
//! A VIP here is a node file's `[[vip]]` without `[[vip.real]]`: its reals are listed per site
//! in `[vip.reals]`, `site = [{ address = "..", weight = .. }, ..]`. A VIP no site lists is
//! served nowhere.
//!
//! For GeoDNS (`lb geodns`, docs/geodns.md): a site's coordinates, a VIP's unicast addresses
//! per site in `[vip.unicast]` (what DNS answers a client sent to that site), and `[geodns]`.

use std::collections::{BTreeMap, HashSet};

use serde::{de::Error as _, Deserialize, Deserializer, Serialize};

use crate::config::{ConfigError, InterfaceCheck, Problem, RawConfig, RawReal, RawVip};

/// The fleet document as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    #[serde(default, rename = "site")]
    pub sites: Vec<RawSite>,
    #[serde(default, rename = "vip")]
    pub vips: Vec<RawFleetVip>,
    pub geodns: Option<RawGeoDns>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// Lower-case letters, digits and '-', at most 63; a node's `[fleet] site` names it.
    pub name: String,
    /// Where the site is, in decimal degrees: GeoDNS sends a client to the nearest site.
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// `[geodns]`: how `lb geodns` answers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeoDns {
    /// The answers' TTL in seconds (default 30).
    pub ttl_s: Option<u32>,
    /// A site is down for a VIP when its healthy reals carry less than this share of the
    /// site's configured weight (0 ..= 1, default 0: down only when none is up).
    pub capacity_floor: Option<f64>,
    /// The answer when every site is down for a VIP (default: none, the last site's).
    #[serde(default)]
    pub fallback: Vec<String>,
}

pub const DEFAULT_GEODNS_TTL_S: u32 = 30;

impl RawGeoDns {
    pub fn ttl_s(&self) -> u32 {
        self.ttl_s.unwrap_or(DEFAULT_GEODNS_TTL_S)
    }

    pub fn capacity_floor(&self) -> f64 {
        self.capacity_floor.unwrap_or(0.0)
    }
}

/// A fleet VIP: a node file's `[[vip]]` (no `real`s), its reals per site, and per site the
/// unicast addresses GeoDNS answers for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RawFleetVip {
    #[serde(flatten)]
    pub vip: RawVip,
    pub reals: BTreeMap<String, Vec<RawReal>>,
    pub unicast: BTreeMap<String, Vec<String>>,
}

impl<'de> Deserialize<'de> for RawFleetVip {
    /// `reals` is taken out first, and the rest must be a node file's VIP (unknown fields are
    /// refused there; serde's `flatten` would let them through).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(d)?;
        let reals = match table.remove("reals") {
            Some(v) => BTreeMap::<String, Vec<RawReal>>::deserialize(v).map_err(D::Error::custom)?,
            None => BTreeMap::new(),
        };
        let unicast = match table.remove("unicast") {
            Some(v) => BTreeMap::<String, Vec<String>>::deserialize(v).map_err(D::Error::custom)?,
            None => BTreeMap::new(),
        };
        if table.contains_key("real") {
            return Err(D::Error::custom(
                "a fleet VIP lists its reals per site, in [vip.reals] (site = [{ address = \"..\" }]), not in [[vip.real]]",
            ));
        }
        let vip = RawVip::deserialize(toml::Value::Table(table)).map_err(D::Error::custom)?;
        Ok(Self { vip, reals, unicast })
    }
}

/// A fleet document has `[[site]]`s; a node file never does.
pub fn is_fleet_document(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("site"))
}

/// Parses a fleet document (syntax and field names only; `validate` checks the rest).
pub fn parse(text: &str) -> Result<RawFleet, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax { path: "fleet document".into(), message: e.to_string() })
}

/// Parses and validates a revision as a node or the GeoDNS agent takes it: the reason it is
/// refused, on one line.
pub fn parse_valid(text: &str) -> Result<RawFleet, String> {
    let doc = parse(text).map_err(|e| e.to_string())?;
    doc.validate().map_err(|e| e.to_string().replace('\n', "; "))?;
    Ok(doc)
}

impl RawFleet {
    /// The VIPs site `site` serves, as a node file's `[[vip]]`s with that site's reals.
    pub fn vips_for(&self, site: &str) -> Vec<RawVip> {
        self.vips.iter().filter_map(|v| v.reals.get(site).map(|reals| RawVip { reals: reals.clone(), ..v.vip.clone() })).collect()
    }

    pub fn has_site(&self, site: &str) -> bool {
        self.sites.iter().any(|s| s.name == site)
    }

    /// Every problem: the sites' names, reals of undeclared sites, and each site's VIPs checked
    /// as a node file's would be (their fields named `site NAME: vip[..]`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut add = |field: String, reason: String| problems.push(Problem { field, reason });
        let mut names = HashSet::new();
        for (i, site) in self.sites.iter().enumerate() {
            if !is_site_name(&site.name) {
                add(format!("site[{i}].name"), format!("{:?} is not 1-63 lower-case letters, digits and '-'", site.name));
            } else if !names.insert(site.name.as_str()) {
                add(format!("site[{i}].name"), format!("{:?} is used by an earlier site", site.name));
            }
        }
        for (i, vip) in self.vips.iter().enumerate() {
            for site in vip.reals.keys() {
                if !names.contains(site.as_str()) {
                    add(format!("vip[{i}] {:?}.reals.{site}", vip.vip.name), "no [[site]] of that name".into());
                }
            }
        }
        let mut vip_names = HashSet::new();
        for (i, vip) in self.vips.iter().enumerate() {
            if !vip_names.insert(vip.vip.name.as_str()) {
                add(format!("vip[{i}].name"), format!("{:?} is used by an earlier VIP", vip.vip.name));
            }
        }
        for (i, site) in self.sites.iter().enumerate() {
            match (site.latitude, site.longitude) {
                (Some(lat), Some(lon)) if !((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon)) => {
                    add(format!("site[{i}]"), format!("latitude {lat}, longitude {lon}: outside -90 ..= 90, -180 ..= 180"))
                }
                (Some(_), None) | (None, Some(_)) => add(format!("site[{i}]"), "latitude and longitude come together".into()),
                _ => {}
            }
        }
        let mut unicast = HashSet::new();
        for (i, vip) in self.vips.iter().enumerate() {
            for (site, addrs) in &vip.unicast {
                let field = format!("vip[{i}] {:?}.unicast.{site}", vip.vip.name);
                if !names.contains(site.as_str()) {
                    add(field.clone(), "no [[site]] of that name".into());
                } else if !vip.reals.contains_key(site) {
                    add(field.clone(), "the site has no reals for this VIP".into());
                }
                for a in addrs {
                    match a.parse::<std::net::IpAddr>() {
                        Err(_) => add(field.clone(), format!("{a:?} is not an IP address")),
                        // gdnsd's state file names each address once.
                        Ok(ip) if !unicast.insert(ip) => {
                            add(field.clone(), format!("{a} is given earlier: an address is one site's, for one VIP"))
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
        // QUIC-LB: a client's packets may reach any site, so a server ID names one real
        // across all of them, and a real has one server ID.
        for (i, vip) in self.vips.iter().enumerate().filter(|(_, v)| v.vip.quic_lb.is_some()) {
            let mut owners: BTreeMap<String, (&str, &str)> = BTreeMap::new();
            for (site, reals) in &vip.reals {
                for real in reals {
                    let Some(sid) = real.server_id.as_deref().and_then(crate::quic_lb::parse_hex).map(|s| crate::quic_lb::hex(&s)) else {
                        continue;
                    };
                    let field = format!("vip[{i}] {:?}.reals.{site}", vip.vip.name);
                    match owners.insert(sid.clone(), (site, &real.address)) {
                        Some((other_site, addr)) if addr != real.address => add(
                            field,
                            format!("server ID {sid} of {} is {addr}'s at site {other_site}: one real's across all sites", real.address),
                        ),
                        _ => {}
                    }
                    let mut others = owners.iter().filter(|(s, (_, a))| **s != sid && *a == real.address);
                    if let Some((other, _)) = others.next_back() {
                        add(
                            format!("vip[{i}] {:?}.reals.{site}", vip.vip.name),
                            format!("{} has server IDs {other} and {sid}", real.address),
                        );
                    }
                }
            }
        }
        if let Some(g) = &self.geodns {
            if !(1..=86_400).contains(&g.ttl_s()) {
                add("geodns.ttl_s".into(), format!("{} is outside 1 ..= 86400", g.ttl_s()));
            }
            if !(0.0..=1.0).contains(&g.capacity_floor()) {
                add("geodns.capacity_floor".into(), format!("{} is outside 0 ..= 1", g.capacity_floor()));
            }
            for a in g.fallback.iter().filter(|a| a.parse::<std::net::IpAddr>().is_err()) {
                add("geodns.fallback".into(), format!("{a:?} is not an IP address"));
            }
        }
        for site in &self.sites {
            let node = RawConfig::for_checking(self.vips_for(&site.name));
            if let Err(e) = node.validate(InterfaceCheck::Skip) {
                for p in e.problems() {
                    add(format!("site {}: {}", site.name, p.field), p.reason.clone());
                }
                if e.problems().is_empty() {
                    add(format!("site {}", site.name), e.to_string());
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

impl RawConfig {
    /// A node file that has only `vips` (and what validation needs besides): a fleet site's
    /// VIPs are checked in it.
    pub fn for_checking(vips: Vec<RawVip>) -> RawConfig {
        let mut raw: RawConfig = toml::from_str("[forwarding]\nnext_hop_mac = \"02:00:00:00:00:01\"\n").expect("a fixed, valid node file");
        raw.vips = vips;
        raw
    }
}

pub fn is_site_name(name: &str) -> bool {
    (1..=63).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// What applying `new` over `old` changes, a line each: VIPs added, removed or changed, and per
/// site the reals added, removed or reweighted. Empty: nothing.
pub fn diff(old: &RawFleet, new: &RawFleet) -> Vec<String> {
    let mut lines = Vec::new();
    let names = |f: &RawFleet| f.sites.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let (old_sites, new_sites) = (names(old), names(new));
    for s in new_sites.iter().filter(|s| !old_sites.contains(s)) {
        lines.push(format!("+ site {s}"));
    }
    for s in old_sites.iter().filter(|s| !new_sites.contains(s)) {
        lines.push(format!("- site {s}"));
    }
    for site in &new.sites {
        if let Some(was) = old.sites.iter().find(|o| o.name == site.name && *o != site) {
            let place = |s: &RawSite| format!("{:?}, {:?}", s.latitude, s.longitude);
            lines.push(format!("~ site {}: coordinates {} -> {}", site.name, place(was), place(site)));
        }
    }
    if old.geodns != new.geodns {
        lines.push("~ geodns: its settings change".into());
    }
    let by_name = |f: &RawFleet| f.vips.iter().map(|v| (v.vip.name.clone(), v.clone())).collect::<BTreeMap<_, _>>();
    let (old_vips, new_vips) = (by_name(old), by_name(new));
    for (name, vip) in &new_vips {
        let Some(was) = old_vips.get(name) else {
            let sites: Vec<&String> = vip.reals.keys().collect();
            lines.push(format!("+ vip {name} {}:{}/{} at {sites:?}", vip.vip.address, vip.vip.port, vip.vip.protocol));
            continue;
        };
        let (bare_new, bare_old) = (RawVip { reals: vec![], ..vip.vip.clone() }, RawVip { reals: vec![], ..was.vip.clone() });
        if bare_new != bare_old {
            lines.push(format!("~ vip {name}: its settings change"));
        }
        if vip.unicast != was.unicast {
            lines.push(format!("~ vip {name}: unicast addresses {:?} -> {:?}", was.unicast, vip.unicast));
        }
        let sites: std::collections::BTreeSet<&String> = vip.reals.keys().chain(was.reals.keys()).collect();
        for site in sites {
            let (before, after) = (was.reals.get(site), vip.reals.get(site));
            match (before, after) {
                (None, Some(_)) => lines.push(format!("+ vip {name} at {site}")),
                (Some(_), None) => lines.push(format!("- vip {name} at {site}")),
                (Some(b), Some(a)) => lines.extend(real_changes(name, site, b, a)),
                (None, None) => {}
            }
        }
    }
    for name in old_vips.keys().filter(|n| !new_vips.contains_key(*n)) {
        lines.push(format!("- vip {name}"));
    }
    lines
}

fn real_changes(vip: &str, site: &str, before: &[RawReal], after: &[RawReal]) -> Vec<String> {
    let mut lines = Vec::new();
    let find = |list: &[RawReal], addr: &str| list.iter().find(|r| r.address == addr).cloned();
    for r in after {
        match find(before, &r.address) {
            None => lines.push(format!("+ vip {vip} at {site}: real {} weight {}", r.address, r.weight.unwrap_or(1))),
            Some(b) if b.weight.unwrap_or(1) != r.weight.unwrap_or(1) => lines.push(format!(
                "~ vip {vip} at {site}: real {} weight {} -> {}",
                r.address,
                b.weight.unwrap_or(1),
                r.weight.unwrap_or(1)
            )),
            Some(b) if b.server_id != r.server_id => lines.push(format!(
                "~ vip {vip} at {site}: real {} server ID {} -> {}",
                r.address,
                b.server_id.as_deref().unwrap_or("none"),
                r.server_id.as_deref().unwrap_or("none")
            )),
            Some(b) if b != *r => lines.push(format!("~ vip {vip} at {site}: real {} health check changes", r.address)),
            Some(_) => {}
        }
    }
    for r in before.iter().filter(|r| find(after, &r.address).is_none()) {
        lines.push(format!("- vip {vip} at {site}: real {}", r.address));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"
[[site]]
name = "fra"
[[site]]
name = "nyc"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 443
protocol = "tcp"
[vip.reals]
fra = [{ address = "10.1.0.1" }, { address = "10.1.0.2", weight = 2 }]
nyc = [{ address = "10.2.0.1" }]

[[vip]]
name = "dns"
address = "192.0.2.53"
port = 53
protocol = "udp"
[vip.reals]
nyc = [{ address = "10.2.0.5" }]
"#;

    #[test]
    fn a_site_serves_the_vips_it_has_reals_for_with_its_own_reals() {
        let fleet = parse(FLEET).expect("parses");
        fleet.validate().expect("valid");
        let fra = fleet.vips_for("fra");
        assert_eq!(fra.len(), 1);
        assert_eq!(fra[0].name, "web");
        assert_eq!(fra[0].reals.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(), ["10.1.0.1", "10.1.0.2"]);
        let nyc = fleet.vips_for("nyc");
        assert_eq!(nyc.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["web", "dns"]);
        assert!(fleet.vips_for("tyo").is_empty());
    }

    #[test]
    fn unknown_fields_and_node_style_reals_are_refused() {
        let typo = FLEET.replace("protocol = \"udp\"", "protocol = \"udp\"\nwieght = 3");
        assert!(parse(&typo).unwrap_err().to_string().contains("wieght"), "a misspelt field is named");
        let node_style = FLEET.replace("[vip.reals]\nnyc = [{ address = \"10.2.0.5\" }]", "[[vip.real]]\naddress = \"10.2.0.5\"");
        assert!(parse(&node_style).unwrap_err().to_string().contains("per site"));
    }

    #[test]
    fn each_sites_vips_are_validated_as_a_node_would_and_named_by_site() {
        let bad = FLEET
            .replace("{ address = \"10.2.0.1\" }", "{ address = \"10.2.0.1\", weight = 5000 }")
            .replace("nyc = [{ address = \"10.2.0.5\" }]", "tyo = [{ address = \"10.2.0.5\" }]");
        let problems: Vec<String> = parse(&bad).expect("parses").validate().unwrap_err().problems().iter().map(|p| p.to_string()).collect();
        assert!(problems.iter().any(|p| p.starts_with("site nyc: vip[0] \"web\".real[0].weight")), "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("reals.tyo: no [[site]]")), "{problems:?}");
        let bad_site = FLEET.replace("name = \"nyc\"", "name = \"New York\"");
        assert!(parse(&bad_site).unwrap().validate().unwrap_err().to_string().contains("site[1].name"));
    }

    #[test]
    fn the_example_fleet_document_in_the_repository_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet.example.toml");
        let text = std::fs::read_to_string(&path).expect("fleet.example.toml");
        assert!(is_fleet_document(&text));
        parse(&text).expect("parses").validate().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn geodns_fields_are_checked() {
        let geo = FLEET.replace("name = \"fra\"", "name = \"fra\"\nlatitude = 50.11\nlongitude = 8.68").replace(
            "nyc = [{ address = \"10.2.0.1\" }]",
            "nyc = [{ address = \"10.2.0.1\" }]\n[vip.unicast]\nfra = [\"198.51.100.1\", \"2001:db8::1\"]",
        ) + "[geodns]\nttl_s = 20\ncapacity_floor = 0.5\nfallback = [\"198.51.100.99\"]\n";
        let fleet = parse(&geo).expect("parses");
        fleet.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fleet.vips[0].unicast["fra"], ["198.51.100.1", "2001:db8::1"]);
        assert_eq!((fleet.sites[0].latitude, fleet.geodns.as_ref().unwrap().ttl_s()), (Some(50.11), 20));
        let problems = |text: &str| -> Vec<String> {
            parse(text).expect("parses").validate().err().map(|e| e.problems().iter().map(|p| p.to_string()).collect()).unwrap_or_default()
        };
        let p = problems(&geo.replace("longitude = 8.68", "longitude = 181.0"));
        assert!(p.iter().any(|p| p.contains("site[0]: latitude 50.11, longitude 181")), "{p:?}");
        let p = problems(&geo.replace("longitude = 8.68", ""));
        assert!(p.iter().any(|p| p.contains("latitude and longitude come together")), "{p:?}");
        let p = problems(&geo.replace("fra = [\"198.51.100.1\"", "tyo = [\"198.51.100.1\""));
        assert!(p.iter().any(|p| p.contains("unicast.tyo: no [[site]]")), "{p:?}");
        let p = problems(&geo.replace("\"2001:db8::1\"", "\"198.51.100.1\""));
        assert!(p.iter().any(|p| p.contains("198.51.100.1 is given earlier")), "{p:?}");
        let p = problems(&geo.replace("capacity_floor = 0.5", "capacity_floor = 1.5").replace("\"198.51.100.99\"", "\"x\""));
        assert!(p.iter().any(|p| p.contains("geodns.capacity_floor")) && p.iter().any(|p| p.contains("geodns.fallback")), "{p:?}");
        let lines = diff(&parse(FLEET).unwrap(), &fleet);
        assert!(lines.iter().any(|l| l.starts_with("~ site fra: coordinates")), "{lines:?}");
        assert!(
            lines.iter().any(|l| l.starts_with("~ vip web: unicast addresses")) && lines.contains(&"~ geodns: its settings change".into()),
            "{lines:?}"
        );
    }

    #[test]
    fn diff_names_each_change() {
        let old = parse(FLEET).unwrap();
        let new = parse(
            &FLEET
                .replace("{ address = \"10.1.0.2\", weight = 2 }", "{ address = \"10.1.0.2\", weight = 3 }, { address = \"10.1.0.3\" }")
                .replace("[[vip]]\nname = \"dns\"", "[[vip]]\nname = \"dns2\""),
        )
        .unwrap();
        let lines = diff(&old, &new);
        assert!(lines.contains(&"~ vip web at fra: real 10.1.0.2 weight 2 -> 3".to_owned()), "{lines:?}");
        assert!(lines.contains(&"+ vip web at fra: real 10.1.0.3 weight 1".to_owned()), "{lines:?}");
        assert!(lines.contains(&"- vip dns".to_owned()), "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("+ vip dns2")), "{lines:?}");
        assert!(diff(&old, &old).is_empty());
    }

    const QUIC_FLEET: &str = r#"
[[site]]
name = "fra"
[[site]]
name = "nyc"

[[vip]]
name = "h3"
address = "192.0.2.10"
port = 443
protocol = "udp"
[vip.quic_lb]
config_id = 1
server_id_len = 2
nonce_len = 6
[vip.reals]
fra = [{ address = "10.1.0.1", server_id = "0a01" }, { address = "10.1.0.2", server_id = "0a02" }]
nyc = [{ address = "10.2.0.1", server_id = "0b01" }]
"#;

    #[test]
    fn quic_lb_server_ids_name_one_real_across_sites_and_reach_each_node() {
        let fleet = parse(QUIC_FLEET).unwrap();
        fleet.validate().unwrap_or_else(|e| panic!("{e}"));
        // A node of nyc runs the VIP with QUIC-LB and its real's server ID.
        let node = RawConfig::for_checking(fleet.vips_for("nyc")).validate(InterfaceCheck::Skip).unwrap();
        let vip = &node.vips[0];
        assert_eq!((vip.quic_lb.as_ref().map(|q| q.cid_len), vip.reals[0].server_id.clone()), (Some(9), Some(vec![0x0b, 1])));

        let problems = |text: &str| -> Vec<String> {
            parse(text).unwrap().validate().err().map(|e| e.problems().iter().map(|p| p.to_string()).collect()).unwrap_or_default()
        };
        let p = problems(&QUIC_FLEET.replace("server_id = \"0b01\"", "server_id = \"0a01\""));
        assert!(p.iter().any(|p| p.contains("server ID 0a01 of 10.2.0.1 is 10.1.0.1's at site fra")), "{p:?}");
        let twice =
            QUIC_FLEET.replace("{ address = \"10.2.0.1\", server_id = \"0b01\" }", "{ address = \"10.1.0.1\", server_id = \"0b01\" }");
        let p = problems(&twice);
        assert!(p.iter().any(|p| p.contains("10.1.0.1 has server IDs 0a01 and 0b01")), "{p:?}");
        let p = problems(&QUIC_FLEET.replace(", server_id = \"0b01\"", ""));
        assert!(p.iter().any(|p| p.contains("site nyc: vip[0] \"h3\".real[0].server_id: is missing")), "{p:?}");

        let moved = parse(&QUIC_FLEET.replace("0b01", "0b02")).unwrap();
        let lines = diff(&fleet, &moved);
        assert_eq!(lines, ["~ vip h3 at nyc: real 10.2.0.1 server ID 0b01 -> 0b02"]);
    }
}
