//! What gdnsd reads. `lb geodns render` writes two snippets that the operator's gdnsd config
//! includes, and prints the zone records; the agent keeps the state file (gdnsd's `extfile`
//! plugin, direct mode) and the same state as JSON.
//!
//! In gdnsd, each site is a datacenter of one `geoip` map shared by every VIP: placed by its
//! coordinates (city auto mode, with a GeoIP2 City database) or by the operator's networks
//! file. Each VIP is a `geoip` resource over its sites' unicast addresses, monitored through
//! the state file, wrapped in a `metafo` resource that falls back to `[geodns] fallback` when
//! every site is down.

use std::{fmt::Write as _, path::Path};

use anyhow::{bail, Result};
use serde::Serialize;

use super::judge::SiteAnswer;
use crate::fleet::{doc::DEFAULT_GEODNS_TTL_S, RawFleet};

/// The service type the snippets define and the state file feeds.
pub const SERVICE_TYPE: &str = "anycast_lb";
/// The geoip map every VIP's resource uses.
const MAP: &str = "anycast_lb";

/// How gdnsd places a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement<'a> {
    /// A GeoIP2 City database: the nearest site by the sites' coordinates.
    Coordinates { geoip2_db: &'a Path },
    /// A gdnsd nets file of the operator's (`network => [site, site, ..]`), no database.
    Networks { nets_file: &'a Path },
}

/// The files `lb geodns render` writes, by name, and the zone records to paste.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Included in gdnsd's `service_types => { $include{..} }`.
    pub service_types: String,
    /// Included in gdnsd's `plugins => { $include{..} }`.
    pub plugins: String,
    /// A zone's `DYNA` record per VIP.
    pub records: String,
}

fn ttl(doc: &RawFleet) -> u32 {
    doc.geodns.as_ref().map_or(DEFAULT_GEODNS_TTL_S, |g| g.ttl_s())
}

/// The snippets for `doc`'s sites and VIPs, with the state file at `state_file`.
pub fn render(doc: &RawFleet, state_file: &Path, placement: &Placement) -> Result<Rendered> {
    let vips: Vec<_> = doc.vips.iter().filter(|v| !v.unicast.is_empty()).collect();
    if vips.is_empty() {
        bail!("no VIP has [vip.unicast] addresses: there is nothing for DNS to answer");
    }
    let sites: Vec<&str> = doc.sites.iter().map(|s| s.name.as_str()).collect();
    let ttl = ttl(doc);
    let service_types = format!(
        "# Written by `lb geodns render`: the state `lb geodns run` keeps in the file below.\n\
         {SERVICE_TYPE} => {{ plugin => extfile, file => {:?}, direct => true, def_down => true, def_ttl => {ttl} }}\n",
        state_file.display().to_string()
    );
    let mut plugins = String::from("# Written by `lb geodns render` from the fleet document: do not edit, render again.\n");
    plugins += "geoip => {\n  maps => {\n";
    let _ = writeln!(plugins, "    {MAP} => {{\n      datacenters => [ {} ]", quoted(&sites));
    match placement {
        Placement::Coordinates { geoip2_db } => {
            let placed: Vec<String> =
                doc.sites.iter().filter_map(|s| Some(format!("{:?} => [ {}, {} ]", s.name, s.latitude?, s.longitude?))).collect();
            let unplaced: Vec<&str> = doc.sites.iter().filter(|s| s.latitude.is_none()).map(|s| s.name.as_str()).collect();
            if !unplaced.is_empty() {
                bail!("sites {unplaced:?} have no latitude and longitude: placing clients by coordinates needs every site's");
            }
            let _ = writeln!(plugins, "      geoip2_db => {:?}", geoip2_db.display().to_string());
            let _ = writeln!(plugins, "      auto_dc_coords => {{ {} }}", placed.join(", "));
            // Every site in every client's list: a client fails over through all of them.
            let _ = writeln!(plugins, "      auto_dc_limit => {}", sites.len());
        }
        Placement::Networks { nets_file } => {
            let _ = writeln!(plugins, "      nets => {:?}", nets_file.display().to_string());
        }
    }
    plugins += "    }\n  }\n  # A VIP that some sites do not serve leaves them out of its answers.\n  undefined_datacenters_ok => true\n  resources => {\n";
    for vip in &vips {
        let dcmap: Vec<String> = vip.unicast.iter().map(|(site, addrs)| format!("{site:?} => {{ {} }}", by_family(addrs))).collect();
        let _ = writeln!(
            plugins,
            "    {:?} => {{ map => {MAP}, service_types => {SERVICE_TYPE}, dcmap => {{ {} }} }}",
            format!("{}_sites", vip.vip.name),
            dcmap.join(", ")
        );
    }
    plugins += "  }\n}\nmetafo => {\n  resources => {\n";
    let fallback = doc.geodns.as_ref().map(|g| g.fallback.clone()).unwrap_or_default();
    for vip in &vips {
        let sites = format!("sites => %geoip!{}_sites", vip.vip.name);
        let (datacenters, dcmap) = if fallback.is_empty() {
            ("[ sites ]".to_owned(), sites)
        } else {
            ("[ sites, fallback ]".to_owned(), format!("{sites}, fallback => {{ service_types => up, {} }}", by_family(&fallback)))
        };
        let _ = writeln!(plugins, "    {:?} => {{ datacenters => {datacenters}, dcmap => {{ {dcmap} }} }}", vip.vip.name);
    }
    plugins += "  }\n}\n";
    let records = vips.iter().map(|v| format!("{} {ttl} DYNA metafo!{}\n", v.vip.name, v.vip.name)).collect();
    Ok(Rendered { service_types, plugins, records })
}

/// A multifo stanza of `addrs`: gdnsd takes one family per list, so IPv4 and IPv6 apart.
fn by_family(addrs: &[String]) -> String {
    let (v6, v4): (Vec<&String>, Vec<&String>) = addrs.iter().partition(|a| a.contains(':'));
    let mut parts = Vec::new();
    for (key, list) in [("addrs_v4", v4), ("addrs_v6", v6)] {
        if !list.is_empty() {
            parts.push(format!("{key} => [ {} ]", quoted(&list)));
        }
    }
    parts.join(", ")
}

fn quoted<S: AsRef<str>>(items: &[S]) -> String {
    items.iter().map(|s| format!("{:?}", s.as_ref())).collect::<Vec<_>>().join(", ")
}

/// gdnsd's state file: `ADDRESS => UP/TTL` or `DOWN/TTL` for every unicast address.
pub fn extfile(doc: &RawFleet, answers: &[SiteAnswer]) -> String {
    let ttl = ttl(doc);
    let mut out = String::from("# Written by `lb geodns run`: each site's unicast addresses, UP while the site announces the VIP.\n");
    for a in answers {
        for addr in &a.addresses {
            let _ = writeln!(out, "{addr} => {}/{ttl} # {} at {}: {}", if a.up { "UP" } else { "DOWN" }, a.vip, a.site, a.why);
        }
    }
    out
}

/// The same state as JSON, for DNS servers other than gdnsd (docs/geodns.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JsonState<'a> {
    /// The fleet document's revision the state is computed from.
    pub revision: i64,
    /// False: the store stopped answering; the state is the last one known.
    pub store_reachable: bool,
    pub ttl_s: u32,
    pub fallback: Vec<String>,
    pub sites: &'a [SiteAnswer],
}

impl<'a> JsonState<'a> {
    pub fn new(doc: &RawFleet, revision: i64, store_reachable: bool, sites: &'a [SiteAnswer]) -> Self {
        let fallback = doc.geodns.as_ref().map(|g| g.fallback.clone()).unwrap_or_default();
        Self { revision, store_reachable, ttl_s: ttl(doc), fallback, sites }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
[[site]]
name = "fra"
latitude = 50.11
longitude = 8.68
[[site]]
name = "iad"
latitude = 39.04
longitude = -77.49
[[vip]]
name = "web"
address = "192.0.2.10"
port = 443
protocol = "tcp"
[vip.reals]
fra = [{ address = "10.1.0.1" }]
iad = [{ address = "10.2.0.1" }]
[vip.unicast]
fra = ["198.51.100.1", "2001:db8::1"]
iad = ["198.51.100.2"]
[geodns]
ttl_s = 20
fallback = ["198.51.100.99"]
"#;

    #[test]
    fn render_places_sites_by_coordinates_and_falls_back() {
        let doc = crate::fleet::parse(DOC).unwrap();
        let r = render(&doc, Path::new("/var/lib/gdnsd/extfile/lb"), &Placement::Coordinates { geoip2_db: Path::new("/g.mmdb") }).unwrap();
        assert!(r.service_types.contains("anycast_lb => { plugin => extfile, file => \"/var/lib/gdnsd/extfile/lb\", direct => true, def_down => true, def_ttl => 20 }"), "{}", r.service_types);
        assert!(r.plugins.contains("auto_dc_coords => { \"fra\" => [ 50.11, 8.68 ], \"iad\" => [ 39.04, -77.49 ] }"), "{}", r.plugins);
        assert!(r.plugins.contains("\"web_sites\" => { map => anycast_lb, service_types => anycast_lb, dcmap => { \"fra\" => { addrs_v4 => [ \"198.51.100.1\" ], addrs_v6 => [ \"2001:db8::1\" ] }, \"iad\" => { addrs_v4 => [ \"198.51.100.2\" ] } } }"), "{}", r.plugins);
        assert!(r.plugins.contains("\"web\" => { datacenters => [ sites, fallback ], dcmap => { sites => %geoip!web_sites, fallback => { service_types => up, addrs_v4 => [ \"198.51.100.99\" ] } } }"), "{}", r.plugins);
        assert_eq!(r.records, "web 20 DYNA metafo!web\n");
        let nets = render(&doc, Path::new("/s"), &Placement::Networks { nets_file: Path::new("/nets") }).unwrap();
        assert!(nets.plugins.contains("nets => \"/nets\"") && !nets.plugins.contains("geoip2_db"), "{}", nets.plugins);
        let unplaced = crate::fleet::parse(&DOC.replace("latitude = 39.04\nlongitude = -77.49\n", "")).unwrap();
        let err = render(&unplaced, Path::new("/s"), &Placement::Coordinates { geoip2_db: Path::new("/g") }).unwrap_err();
        assert!(err.to_string().contains("[\"iad\"] have no latitude"), "{err}");
    }

    #[test]
    fn the_state_file_lists_every_address_with_its_state_and_ttl() {
        let doc = crate::fleet::parse(DOC).unwrap();
        let answer = |site: &str, up: bool, addrs: &[&str]| SiteAnswer {
            vip: "web".into(),
            site: site.into(),
            up,
            why: "why".into(),
            capacity: 1.0,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        let text = extfile(&doc, &[answer("fra", false, &["198.51.100.1", "2001:db8::1"]), answer("iad", true, &["198.51.100.2"])]);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "198.51.100.1 => DOWN/20 # web at fra: why",
                "2001:db8::1 => DOWN/20 # web at fra: why",
                "198.51.100.2 => UP/20 # web at iad: why"
            ]
        );
    }
}
