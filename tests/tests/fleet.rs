//! The fleet store: two sites of two nodes each follow one document in a real three-member etcd
//! cluster (`lb_tests::anycast` with `Options::fleet`), with BIRD and real TCP as in the anycast
//! tests.

use std::time::{Duration, Instant};

use lb_tests::{
    anycast::{fleet_document, Anycast, FleetOptions, Options, FLEET_PREFIX},
    bird::wait_for,
    etcd::client_url,
    require_root,
    topology::{http_get, Servers, Site},
};
use serde_json::Value;

/// The fleet harness with etcd's authentication by user and password, by TLS client
/// certificates, or none.
fn fleet_options(user: bool, tls: bool) -> Options {
    let user = user.then(|| ("lb-fleet".to_owned(), "a-password-for-the-fleet".to_owned()));
    Options { fleet: Some(FleetOptions { user, report_ttl_s: 3, tls }), ..Default::default() }
}

/// Two sites of `nodes` nodes and `backends` backends each, following the fleet store
/// (authenticated as `fleet_options` says), every VIP served: the net, and its backends'
/// servers (dropped before the net).
fn serving_fleet(nodes: &[usize], backends: &[usize], user: bool, tls: bool) -> (Anycast, Vec<Servers>) {
    let net = Anycast::with(nodes, backends, &fleet_options(user, tls));
    let servers = net.sites.iter().map(|s| s.servers()).collect();
    for s in 0..net.sites.len() {
        net.wait_serving(s);
    }
    (net, servers)
}

/// `lb fleet ARGS` with node `(s, n)`'s file (its `[fleet]`): (succeeded, stdout + stderr).
fn fleet(net: &Anycast, args: &[&str]) -> (bool, String) {
    let lb = &net.sites[0].nodes[0].lb;
    let mut all = vec!["fleet"];
    all.extend_from_slice(args);
    let config = lb.config.display().to_string();
    all.extend_from_slice(&["--config", &config]);
    let out = lb.cli(&all);
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn fleet_status(net: &Anycast) -> Value {
    let (ok, text) = fleet(net, &["status", "--json"]);
    assert!(ok, "lb fleet status: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Every node's reported revision, by node name.
fn revisions(status: &Value) -> Vec<(String, i64)> {
    status["nodes"].as_array().unwrap().iter().map(|n| (n["node"].as_str().unwrap().to_owned(), n["revision"].as_i64().unwrap())).collect()
}

/// Waits until all four nodes report the document's revision; returns it.
fn wait_converged(net: &Anycast, limit: Duration) -> i64 {
    let start = Instant::now();
    loop {
        let s = fleet_status(net);
        let revision = s["document_revision"].as_i64().unwrap();
        let nodes = revisions(&s);
        if nodes.len() == 4 && nodes.iter().all(|(_, r)| *r == revision) {
            return revision;
        }
        if start.elapsed() > limit {
            let logs: Vec<String> = net.sites.iter().flat_map(|s| &s.nodes).map(|n| n.lb.log()).collect();
            panic!(
                "not every node on revision {revision} after {limit:?}: {nodes:?}\n{}\n{}",
                fleet(net, &["status"]).1,
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `text` to a file and applies it with `--revision`.
fn apply(net: &Anycast, text: &str, revision: i64) -> (bool, String) {
    let file = net.sites[0].nodes[0].lb.dir.join("fleet.toml");
    std::fs::write(&file, text).expect("write fleet file");
    fleet(net, &["apply", &file.display().to_string(), "--revision", &revision.to_string()])
}

/// The configured weight node `lb` runs for the IPv4 VIP's real `i`.
fn weight(lb: &lb_tests::lbd::LbDaemon, i: usize) -> Option<u32> {
    lb.try_status()?.iter().find(|v| v.name == "web")?.reals.get(i).map(|r| r.config_weight)
}

/// Waits until no health check of `lb` failed for 10 s and `lb doctor` finds nothing critical.
fn wait_steady(lb: &lb_tests::lbd::LbDaemon) {
    let failed = || lb.metrics().lines().find(|l| l.starts_with("lb_health_checks_total{result=\"failed\"}")).map(str::to_owned);
    let started = Instant::now();
    let mut last = (failed(), Instant::now());
    loop {
        assert!(started.elapsed() < Duration::from_secs(60), "no 10 s without a failed health check: {:?}", last.0);
        let now = failed();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let doctor = lb.cli(&["doctor", "--window-ms", "200"]);
    assert!(doctor.status.code() != Some(2), "critical before the rollout: {}", String::from_utf8_lossy(&doctor.stdout));
}

#[test]
fn a_revision_reaches_every_node_and_an_invalid_one_is_refused_by_every_node() {
    require_root!();
    let _serial = lb_tests::serial();
    let (net, _servers) = serving_fleet(&[2, 2], &[3, 3], true, false);
    let first = wait_converged(&net, Duration::from_secs(20));

    // A weight changed in the document reaches all four nodes.
    let (ok, out) = apply(&net, &fleet_document(&[3, 3], &[1, 1, 3]), first);
    assert!(ok, "lb fleet apply: {out}");
    assert!(out.contains("weight 1 -> 3"), "apply prints the change: {out}");
    let applied = Instant::now();
    let nodes: Vec<&lb_tests::lbd::LbDaemon> = net.sites.iter().flat_map(|s| s.nodes.iter().map(|n| &n.lb)).collect();
    let mut running: Vec<Option<Duration>> = vec![None; nodes.len()];
    while running.iter().any(Option::is_none) {
        assert!(applied.elapsed() < Duration::from_secs(10), "the new weight did not reach every node: {running:?}");
        for (i, lb) in nodes.iter().enumerate() {
            if running[i].is_none() && weight(lb, 2) == Some(3) {
                running[i] = Some(applied.elapsed());
            }
        }
    }
    for (i, t) in running.iter().enumerate() {
        println!("node n{}: the new weight running {:?} after `lb fleet apply` returned", i + 1, t.unwrap());
    }
    let second = wait_converged(&net, Duration::from_secs(10));
    assert!(second > first);

    // An apply on a revision that is no longer the stored one is refused (compare-and-swap).
    let (ok, out) = apply(&net, &fleet_document(&[3, 3], &[2, 1, 3]), first);
    assert!(!ok && out.contains(&format!("it is at revision {second}")), "a stale apply: {out}");

    // A revision written past the CLI's checks (weight 5000) is refused by every node, which
    // keeps running the previous one.
    let bad = fleet_document(&[3, 3], &[1, 1, 5000]);
    let etcd = net.etcd.as_ref().unwrap();
    assert!(etcd.ctl(&["put", &format!("{FLEET_PREFIX}/document"), &bad]).is_some());
    wait_for(Duration::from_secs(10), "every node's refusal in its report", || {
        let s = fleet_status(&net);
        let nodes = s["nodes"].as_array().unwrap().clone();
        nodes.len() == 4 && nodes.iter().all(|n| n["refused"]["revision"].as_i64().is_some_and(|r| r > second) && n["revision"] == second)
    });
    for node in net.sites.iter().flat_map(|s| &s.nodes) {
        assert_eq!(weight(&node.lb, 2), Some(3), "the node kept the last good revision");
        assert!(node.lb.log().contains("fleet revision refused"), "the node logs the refusal");
        let metrics = node.lb.metrics();
        assert!(metrics.contains("lb_fleet_revisions_refused_total 1"), "{metrics}");
        assert!(metrics.contains(&format!("lb_fleet_revision {second}")), "{metrics}");
    }
    let doctor = String::from_utf8_lossy(&net.sites[1].nodes[0].lb.cli(&["doctor", "--window-ms", "100"]).stdout).into_owned();
    assert!(doctor.contains("fleet_revision_refused"), "lb doctor names the refusal: {doctor}");
    let (_, text) = fleet(&net, &["status"]);
    println!("{text}");
    assert!(text.contains("refused revision") && text.contains("weight"), "lb fleet status shows the refusal: {text}");

    // etcd's authentication holds: without the node file's user, the store refuses.
    let anonymous = net.sites[0].nodes[0].lb.cli(&["fleet", "status", "--endpoints", &client_url(&etcd.members[0].addr)]);
    assert!(!anonymous.status.success(), "the store answered without a user");
}

#[test]
fn nodes_keep_serving_without_the_store_restart_on_their_copy_and_converge_when_it_is_back() {
    require_root!();
    let _serial = lb_tests::serial();
    let (mut net, _servers) = serving_fleet(&[2, 2], &[2, 2], false, false);
    let first = wait_converged(&net, Duration::from_secs(20));

    // One member down: changes still apply.
    net.etcd.as_mut().unwrap().kill_member(0);
    let started = Instant::now();
    let (ok, out) = apply(&net, &fleet_document(&[2, 2], &[1, 4]), first);
    assert!(ok, "apply with one member down: {out}");
    wait_converged(&net, Duration::from_secs(15));
    println!("one member down: all 4 nodes on the new revision {:?} after the apply began", started.elapsed());

    // Every member down: requests keep being answered, and a node restarted meanwhile serves
    // the last good revision from its copy on disk.
    for i in [1, 2] {
        net.etcd.as_mut().unwrap().kill_member(i);
    }
    let answered = |n: usize| -> (usize, usize) {
        net.client.run(|| {
            let ok = (0..n).filter(|i| http_get(Site::vip_addr(), lb_tests::anycast::client_addr(*i), "/x").is_ok()).count();
            (ok, n - ok)
        })
    };
    let (ok, failed) = answered(200);
    println!("store down: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0);
    let node = &mut net.sites[0].nodes[0];
    node.lb.terminate();
    node.lb.spawn();
    wait_for(Duration::from_secs(10), "the restarted node serving its copy", || weight(&node.lb, 1) == Some(4));
    assert!(node.lb.log().contains("starting from the last good revision"), "{}", node.lb.log());
    net.wait_serving(0);
    let (ok, failed) = answered(200);
    println!("store down, node restarted: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0);

    // The store back: a change made then reaches every node, the restarted one too.
    for i in 0..3 {
        net.etcd.as_mut().unwrap().start_member(i);
    }
    net.etcd.as_ref().unwrap().wait_healthy(Duration::from_secs(30));
    let current = fleet_status(&net)["document_revision"].as_i64().unwrap();
    let (ok, out) = apply(&net, &fleet_document(&[2, 2], &[2, 4]), current);
    assert!(ok, "apply once the store is back: {out}");
    let took = Instant::now();
    wait_converged(&net, Duration::from_secs(30));
    println!("store back: all 4 nodes on the new revision {:?} after the apply", took.elapsed());
    for node in net.sites.iter().flat_map(|s| &s.nodes) {
        assert_eq!(weight(&node.lb, 0), Some(2));
    }

    // One node cut off from the store while the store lives on, and etcd compacts past the
    // revision the node last saw: on reconnecting, its watch cannot resume there, so it reads
    // the whole document again and runs the newest revision.
    let cut = &net.sites[1].nodes[1];
    let members: Vec<String> = net.etcd.as_ref().unwrap().members.iter().map(|m| format!("{}/32", m.addr)).collect();
    for m in &members {
        cut.ns.ip(&["route", "add", "prohibit", m]);
    }
    wait_for(Duration::from_secs(20), "n4 finding the store unreachable", || cut.lb.metrics().contains("lb_fleet_store_reachable 0"));
    let mut current = fleet_status(&net)["document_revision"].as_i64().unwrap();
    for w in [3, 5] {
        let (ok, out) = apply(&net, &fleet_document(&[2, 2], &[w, 4]), current);
        assert!(ok, "apply while n4 is cut off: {out}");
        current = fleet_status(&net)["document_revision"].as_i64().unwrap();
    }
    let etcd = net.etcd.as_ref().unwrap();
    assert!(etcd.ctl(&["compact", &current.to_string()]).is_some(), "etcdctl compact {current}");
    assert_eq!(weight(&cut.lb, 0), Some(2), "the cut-off node still runs what it had");
    for m in &members {
        cut.ns.ip(&["route", "del", "prohibit", m]);
    }
    let back = Instant::now();
    wait_for(Duration::from_secs(20), "n4 on the newest revision", || weight(&cut.lb, 0) == Some(5));
    println!("compacted past a cut-off node's revision: it ran the newest revision {:?} after it could reach the store", back.elapsed());
    assert!(cut.lb.log().contains("compacted past our revision"), "n4 re-read because of the compaction: {}", cut.lb.log());
    wait_converged(&net, Duration::from_secs(10));
}

#[test]
fn over_tls_a_fleet_drain_withdraws_a_site_and_a_dead_node_leaves_fleet_status_within_its_ttl() {
    require_root!();
    let _serial = lb_tests::serial();
    let (mut net, _servers) = serving_fleet(&[2, 1], &[2, 2], false, true);
    wait_for(Duration::from_secs(20), "three reports", || revisions(&fleet_status(&net)).len() == 3);

    // The store is reached over TLS, and etcd lets in only clients with a certificate of its
    // CA: the nodes (their reports above) and `lb fleet` with a node file have one; without one
    // the store refuses, and plain http finds nothing.
    let etcd = net.etcd.as_ref().unwrap();
    let tls = etcd.tls.clone().unwrap();
    let url = etcd.url(&etcd.members[0].addr);
    let cli = |args: &[&str]| net.sites[0].nodes[0].lb.cli(&[&["fleet", "status", "--endpoints"], args].concat());
    let ca = tls.ca.display().to_string();
    let (cert, key) = (tls.cert.display().to_string(), tls.key.display().to_string());
    let with_cert = cli(&[&url, "--ca-file", &ca, "--cert-file", &cert, "--key-file", &key]);
    assert!(with_cert.status.success(), "with a client certificate: {}", String::from_utf8_lossy(&with_cert.stderr));
    let without = cli(&[&url, "--ca-file", &ca]);
    assert!(!without.status.success(), "the store answered a client without a certificate");
    let plain = cli(&[&client_url(&etcd.members[0].addr)]);
    assert!(!plain.status.success(), "the store answered over plain http");

    // `lb fleet drain a` withdraws site a's VIPs on both its nodes: the router keeps only site
    // b's node.
    let site_a = ["10.20.1.2".to_owned(), "10.20.2.2".to_owned()];
    wait_for(Duration::from_secs(20), "routes via both nodes of site a", || net.next_hops() == site_a);
    let (ok, out) = fleet(&net, &["drain", "a"]);
    assert!(ok, "{out}");
    let drained = Instant::now();
    wait_for(Duration::from_secs(10), "site a withdrawn", || net.next_hops() == ["10.20.3.2"]);
    println!("`lb fleet drain a`: the router's route moved to site b {:?} after the command", drained.elapsed());
    let status = fleet_status(&net);
    assert_eq!(status["drained_sites"], serde_json::json!(["a"]));
    let (ok, out) = fleet(&net, &["undrain", "a"]);
    assert!(ok, "{out}");
    wait_for(Duration::from_secs(10), "site a announced again", || net.next_hops() == site_a);

    // A node killed outright stops renewing its lease: its report goes within the TTL.
    net.sites[0].nodes[1].lb.kill();
    let killed = Instant::now();
    wait_for(Duration::from_secs(15), "the dead node's report gone", || revisions(&fleet_status(&net)).len() == 2);
    let gone = killed.elapsed();
    println!("a killed node left `lb fleet status` {gone:?} after the kill (report TTL 3 s)");
    assert!(gone <= Duration::from_secs(5), "{gone:?}");
    assert!(revisions(&fleet_status(&net)).iter().all(|(node, _)| node != "n2"));
}

#[test]
fn a_staged_rollout_halts_when_it_breaks_its_canary_and_is_promoted_when_its_canaries_are_good() {
    require_root!();
    let _serial = lb_tests::serial();
    let (net, _servers) = serving_fleet(&[2, 2], &[2, 2], false, false);
    let first = wait_converged(&net, Duration::from_secs(20));
    let file = net.sites[0].nodes[0].lb.dir.join("candidate.toml");
    // A canary compares the candidate with the 10 s before it: start from a steady node.
    for (s, n) in [(1, 0), (0, 0)] {
        wait_steady(&net.sites[s].nodes[n].lb);
    }

    // A candidate that points site b's IPv4 reals at addresses nobody answers at, with site b's
    // first node (n3) as its canary: n3 finds them down, the rollout halts, n3 goes back, and
    // no other node ever runs it. Site a carries the clients meanwhile.
    let broken = fleet_document(&[2, 2], &[1, 1]).replace("10.31.0.2\"", "10.31.0.9\"").replace("10.31.1.2\"", "10.31.1.9\"");
    std::fs::write(&file, &broken).unwrap();
    let path = file.display().to_string();
    let (ok, out) = fleet(&net, &["apply", &path, "--revision", &first.to_string(), "--canary", "n3", "--hold-s", "3"]);
    assert!(ok, "{out}");
    let started = Instant::now();
    let (mut answered, mut failed, mut halted_after) = (0, 0, None);
    while started.elapsed() < Duration::from_secs(12) && halted_after.is_none() {
        let got = net.client.run(|| http_get(Site::vip_addr(), lb_tests::anycast::client_addr(answered + failed), "/c").is_ok());
        if got {
            answered += 1;
        } else {
            failed += 1;
        }
        let s = fleet_status(&net);
        for (node, revision) in revisions(&s) {
            if node != "n3" {
                assert_eq!(revision, first, "{node} left the document during the canary stage");
            }
        }
        if s["rollout"]["stage"] == "halted" {
            halted_after = Some(started.elapsed());
            let why = s["rollout"]["halted"].as_str().unwrap_or_default().to_owned();
            println!("rollout halted {:?} after the apply: {why}", started.elapsed());
            assert!(why.contains("health checks failed") || why.contains("lb doctor: critical"), "halted for its health: {why}");
        }
    }
    assert!(halted_after.is_some(), "the broken candidate was not halted: {}", fleet(&net, &["status"]).1);
    wait_converged(&net, Duration::from_secs(10));
    println!("breaking canary: {answered} requests answered, {failed} failed while it ran");
    assert_eq!(failed, 0);
    assert_eq!(fleet_status(&net)["document_revision"].as_i64(), Some(first), "the halted candidate never became the document");

    // A good candidate (real 1 weighs 3) with n1 as canary: n1 runs it first, then it becomes
    // the document and every node follows.
    std::fs::write(&file, fleet_document(&[2, 2], &[1, 3])).unwrap();
    let (ok, out) = fleet(&net, &["apply", &path, "--revision", &first.to_string(), "--canary", "n1", "--hold-s", "2"]);
    assert!(ok, "{out}");
    let started = Instant::now();
    wait_for(Duration::from_secs(5), "the canary running the candidate", || weight(&net.sites[0].nodes[0].lb, 1) == Some(3));
    assert_eq!(weight(&net.sites[0].nodes[1].lb, 1), Some(1), "n2 ran the candidate before it was promoted");
    let promoted = wait_converged(&net, Duration::from_secs(20));
    assert!(promoted > first);
    println!("good canary: every node on the promoted revision {:?} after the apply (hold 2 s)", started.elapsed());
    for node in net.sites.iter().flat_map(|s| &s.nodes) {
        assert_eq!(weight(&node.lb, 1), Some(3));
    }
    assert!(fleet_status(&net)["rollout"].is_null(), "the rollout key is gone once promoted");
}
