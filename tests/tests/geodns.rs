//! GeoDNS that follows the balancers: three sites in the fleet (a at Frankfurt, b at Tokyo, c
//! at Ashburn, Virginia), one node each with BIRD and real backends, `lb geodns run` keeping a
//! real gdnsd's state file, and `dig` asking with EDNS client subnets of real networks in
//! Germany, Japan and the US. First with the GeoIP2 City database (the nearest site by
//! coordinates), then with configured networks (no database).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{
    anycast::{fleet_document, Anycast, FleetOptions, Options, FLEET_PREFIX},
    bird::wait_for,
    gdnsd::{Gdnsd, GeoAgent, GEOLITE2_CITY},
    lbd::LbDaemon,
    require_root,
};

/// Client subnets: Deutsche Telekom (DE), NTT (JP), Comcast (US), as GeoLite2 2018 places them.
const GERMANY: &str = "80.133.0.1/24";
const JAPAN: &str = "153.150.0.1/24";
const US: &str = "73.0.0.1/24";
/// Each site's unicast address for the VIP `web`, and the fallback.
const FRA: &str = "10.70.0.1";
const FRA6: &str = "fd00:70::1";
const TYO: &str = "10.70.0.2";
const IAD: &str = "10.70.0.3";
const FALLBACK: &str = "10.70.9.9";

/// The harness's fleet document with the sites' coordinates, `web`'s unicast addresses and
/// `[geodns]`.
fn geo_document() -> String {
    let places = [("a", 50.11, 8.68), ("b", 35.68, 139.69), ("c", 39.04, -77.49)];
    let mut doc = fleet_document(&[1, 1, 1], &[1]);
    for (site, lat, lon) in places {
        doc = doc.replace(&format!("name = \"{site}\"\n"), &format!("name = \"{site}\"\nlatitude = {lat}\nlongitude = {lon}\n"));
    }
    let unicast = format!("[vip.unicast]\na = [\"{FRA}\", \"{FRA6}\"]\nb = [\"{TYO}\"]\nc = [\"{IAD}\"]\n");
    doc = doc.replace("[[vip]]\nname = \"web6\"", &format!("{unicast}[[vip]]\nname = \"web6\""));
    doc + &format!("[geodns]\nttl_s = 30\nfallback = [\"{FALLBACK}\"]\n")
}

fn lb_ok(lb: &LbDaemon, args: &[&str]) -> String {
    let out = lb.cli(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lb {args:?}: {text}");
    text
}

/// `lb fleet ARGS` / `lb geodns ARGS` through node `lb`'s `[fleet]`.
fn through_store(lb: &LbDaemon, args: &[&str]) -> String {
    let config = lb.config.display().to_string();
    lb_ok(lb, &[args, &["--config", &config]].concat())
}

/// Waits until gdnsd answers `want` to `subnet`; returns how long that took.
fn wait_answer(dns: &Gdnsd, subnet: &str, want: &[&str], what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = dns.ask("web", "A", subnet);
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: {subnet} still gets {got:?}, want {want:?}\n{}", dns.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn answers(dns: &Gdnsd) -> Vec<Vec<String>> {
    [GERMANY, JAPAN, US].iter().map(|s| dns.ask("web", "A", s)).collect()
}

#[test]
fn geodns_answers_follow_each_sites_announcement_by_coordinates_and_by_networks() {
    require_root!();
    let _serial = lb_tests::serial();
    assert!(Path::new(GEOLITE2_CITY).exists(), "{GEOLITE2_CITY} is missing: cargo xtask setup fetches it");
    let opts = Options { fleet: Some(FleetOptions { user: None, report_ttl_s: 3, tls: false }), ..Default::default() };
    let mut net = Anycast::with(&[1, 1, 1], &[1, 1, 1], &opts);
    let _servers: Vec<_> = net.sites.iter().map(|s| s.servers()).collect();
    for s in 0..3 {
        net.wait_serving(s);
    }
    let lb = |s: usize| &net.sites[s].nodes[0].lb;
    let file = lb(0).dir.join("geo-fleet.toml");
    std::fs::write(&file, geo_document()).unwrap();
    lb_ok(lb(0), &["check-config", &file.display().to_string()]);
    through_store(lb(0), &["fleet", "apply", &file.display().to_string()]);
    wait_for(Duration::from_secs(20), "every site UP for DNS", || {
        let status = through_store(lb(0), &["geodns", "status"]);
        status.lines().filter(|l| l.starts_with("web ") && l.contains(" UP ")).count() == 3
    });

    // The agent beside gdnsd (in the router's namespace, which reaches etcd), and gdnsd on the
    // snippets `lb geodns render` wrote.
    let dir = lb(0).dir.join("geodns");
    let (state, json, rendered) = (dir.join("state"), dir.join("state.json"), dir.join("rendered"));
    let endpoints = net.etcd.as_ref().unwrap().endpoints().join(",");
    let agent_args = |_: ()| -> Vec<String> {
        [
            "--endpoints",
            &endpoints,
            "--prefix",
            FLEET_PREFIX,
            "--state-file",
            &state.display().to_string(),
            "--json-file",
            &json.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut agent = Some(GeoAgent::start(&net.router, &agent_args(()), dir.join("agent.log")));
    wait_for(Duration::from_secs(20), "the agent's state file", || state.exists());
    let render = |placement: &[&str]| {
        let (out, st) = (rendered.display().to_string(), state.display().to_string());
        let printed = through_store(lb(0), &[&["geodns", "render", "--out", &out, "--state-file", &st], placement].concat());
        println!("{printed}");
        std::fs::read_to_string(rendered.join("anycast-lb.records")).unwrap()
    };
    let records = render(&["--geoip2-db", GEOLITE2_CITY]);
    let dns = Gdnsd::start(&net.router, &dir.join("gdnsd-geoip"), &rendered, &records, 5353);

    // Each client gets its nearest site.
    let before = answers(&dns);
    println!("by coordinates, before: Germany {:?}, Japan {:?}, US {:?}", before[0], before[1], before[2]);
    assert_eq!(before, [vec![FRA.to_owned()], vec![TYO.to_owned()], vec![IAD.to_owned()]]);
    assert_eq!(dns.ask("web", "AAAA", GERMANY), [FRA6], "the site's IPv6 address for AAAA");

    // `lb site drain` at Frankfurt: the German client gets the next nearest site, Virginia.
    lb_ok(lb(0), &["site", "drain"]);
    let written = wait_for(Duration::from_secs(20), "the state file saying Frankfurt is down", || {
        std::fs::read_to_string(&state).unwrap_or_default().contains(&format!("{FRA} => DOWN/30"))
    });
    let moved = wait_answer(&dns, GERMANY, &[IAD], "Frankfurt drained") + written;
    let during = answers(&dns);
    println!(
        "`lb site drain` at a (Frankfurt): the state file said DOWN {written:?} and the German client's answer changed {moved:?} after the command; during: Germany {:?}, Japan {:?}, US {:?}",
        during[0],
        during[1],
        during[2]
    );
    assert_eq!(during[1..], [vec![TYO.to_owned()], vec![IAD.to_owned()]]);
    lb_ok(lb(0), &["site", "undrain"]);
    let back = wait_answer(&dns, GERMANY, &[FRA], "Frankfurt undrained");
    println!("`lb site undrain`: back to Frankfurt {back:?} after the command; after: {:?}", answers(&dns));

    // Without the agent, DNS does not learn of a drain: the answers stay until it runs again.
    drop(agent.take());
    lb_ok(lb(0), &["site", "drain"]);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(dns.ask("web", "A", GERMANY), [FRA], "without the agent the drained site is still answered");
    agent = Some(GeoAgent::start(&net.router, &agent_args(()), dir.join("agent2.log")));
    let caught_up = wait_answer(&dns, GERMANY, &[IAD], "the agent started again");
    println!("agent stopped: a drain left the German answer on Frankfurt for 4 s; started again, it moved {caught_up:?} later");
    lb_ok(lb(0), &["site", "undrain"]);
    wait_answer(&dns, GERMANY, &[FRA], "Frankfurt undrained");

    // Every site down (`lb fleet drain` each): the configured fallback.
    for site in ["a", "b", "c"] {
        through_store(lb(0), &["fleet", "drain", site]);
    }
    let fell_back = wait_answer(&dns, GERMANY, &[FALLBACK], "every site drained");
    let all_down = answers(&dns);
    println!("every site drained: {all_down:?} ({fell_back:?})");
    assert!(all_down.iter().all(|a| a == &[FALLBACK]), "{all_down:?}");
    for site in ["a", "b", "c"] {
        through_store(lb(0), &["fleet", "undrain", site]);
    }
    wait_answer(&dns, JAPAN, &[TYO], "every site undrained");
    drop(dns);

    // Configured networks instead of the database.
    let nets = dir.join("nets");
    std::fs::write(&nets, "80.133.0.0/16 => [ a, c, b ]\n153.150.0.0/16 => [ b, c, a ]\n73.0.0.0/8 => [ c, a, b ]\n").unwrap();
    let records = render(&["--nets", &nets.display().to_string()]);
    let dns = Gdnsd::start(&net.router, &dir.join("gdnsd-nets"), &rendered, &records, 5354);
    let by_nets = answers(&dns);
    println!("by configured networks: {by_nets:?}");
    assert_eq!(by_nets, [vec![FRA.to_owned()], vec![TYO.to_owned()], vec![IAD.to_owned()]]);
    lb_ok(lb(0), &["site", "drain"]);
    let moved = wait_answer(&dns, GERMANY, &[IAD], "Frankfurt drained (networks)");
    println!("by configured networks, Frankfurt drained: the German client moved to c {moved:?} after the command");
    lb_ok(lb(0), &["site", "undrain"]);
    wait_answer(&dns, GERMANY, &[FRA], "Frankfurt undrained (networks)");

    // The store gone: the agent says so, and the state file keeps the last state.
    let agent = agent.unwrap();
    let kept = std::fs::read_to_string(&state).unwrap();
    for i in 0..3 {
        net.etcd.as_mut().unwrap().kill_member(i);
    }
    wait_for(Duration::from_secs(20), "the agent noticing", || {
        agent.log().contains("fleet store unreachable; the state file keeps the last state")
    });
    wait_for(Duration::from_secs(5), "the JSON saying so", || {
        std::fs::read_to_string(&json).unwrap_or_default().contains("\"store_reachable\": false")
    });
    assert_eq!(std::fs::read_to_string(&state).unwrap(), kept);
    assert_eq!(dns.ask("web", "A", GERMANY), [FRA]);
}
