//! The Prometheus alert rules and the Grafana dashboard in deploy/, against the real tools:
//! promtool's checks and rule unit tests, `promtool check metrics` on a live scrape of `lb`, and
//! a real Prometheus server scraping the LB nodes of the anycast harness, through which every
//! dashboard query and every alert expression is evaluated.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use lb_tests::{
    anycast::{client_addr, Anycast},
    bird::wait_for,
    lbd::{http_request, over_tcp_in, LbDaemon},
    require_root,
    topology::{http_get, Net, Site},
};

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool").args(args).current_dir(dir).output().expect("promtool (cargo xtask setup installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The alert names of alerts.yml and each alert's one-line `expr`.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let mut alerts = Vec::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- alert: ") {
            name = Some(n.to_owned());
        } else if let Some(e) = line.strip_prefix("expr: ") {
            assert!(!e.ends_with('|') && !e.ends_with('>'), "keep each expr on one line: {line}");
            alerts.push((name.take().expect("an expr after its alert"), e.to_owned()));
        }
    }
    alerts
}

/// Every query of the dashboard: (panel title, expression).
fn panel_queries() -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(deploy("grafana/anycast-lb.json")).unwrap()).unwrap();
    let panels = dash["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap().to_owned();
            p["targets"].as_array().unwrap().iter().map(move |t| (title.clone(), t["expr"].as_str().unwrap().to_owned()))
        })
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_every_alert_fires_in_a_unit_test() {
    let dir = deploy("prometheus");
    println!("{}", promtool(&["check", "rules", "alerts.yml"], &dir).trim());
    println!("{}", promtool(&["test", "rules", "alerts_test.yml"], &dir).trim());
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for (name, _) in &alerts {
        let fires = lines.windows(2).any(|w| w[0] == format!("alertname: {name}") && w[1] == "exp_alerts:");
        assert!(fires, "no unit test in alerts_test.yml expects {name} to fire");
    }
    println!("{} alerts, each with a unit test where it fires", alerts.len());
}

#[test]
fn promtool_check_metrics_accepts_a_live_scrape() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(1);
    let servers = net.servers();
    let d = LbDaemon::start(&net.lb, &lb_tests::topology::lb_config(1));
    net.client.run(|| lb_tests::topology::ask(Site::vip_addr(), "counted").expect("answered"));
    let reply = d.metrics();
    let scrape = reply.split_once("\r\n\r\n").expect("an HTTP reply").1;
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), scrape.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("promtool check metrics on a scrape of {} lines: exit {}, {:?}", scrape.lines().count(), out.status, said.trim());
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    drop(servers);
}

/// A Prometheus server in the router's namespace, stopped on drop.
struct Prometheus {
    child: Child,
    ns: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(ns: &str, targets: &[String]) -> Self {
        let dir = std::env::temp_dir().join(format!("lbt-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}:9100\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: anycast-lb\n    static_configs:\n      - targets: [{}]\n",
            deploy("prometheus/alerts.yml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg("--web.listen-address=127.0.0.1:9090")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus (cargo xtask setup installs it)");
        Self { child, ns: ns.to_owned(), dir }
    }

    /// GET `path` of the HTTP API: the JSON answer, or None while the server is not up.
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let (_, body) = over_tcp_in(&self.ns, "127.0.0.1:9090", &http_request("GET", path, &[], ""))?;
        serde_json::from_str(&body).ok() // not JSON: "Service Unavailable" while it starts
    }

    /// Evaluates `expr` now: the result vector (panics on an error answer).
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?{}", serde_urlencoded::to_string([("query", expr)]).unwrap());
        let answer = self.get(&path).expect("prometheus answers");
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().expect("a vector").clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn prometheus_scraping_the_anycast_harness_evaluates_every_panel_and_alert() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Anycast::new(&[1, 1], &[2, 2]);
    let _a = net.sites[0].servers();
    let _b = net.sites[1].servers();
    wait_for(Duration::from_secs(30), "a route to site A", || net.next_hops() == ["10.20.1.2"]);
    let nodes: Vec<String> = net.sites.iter().flat_map(|s| s.nodes.iter().map(|n| n.addr.clone())).collect();
    let prometheus = Prometheus::start(&net.router.name, &nodes);
    wait_for(Duration::from_secs(30), "Prometheus scraping both nodes", || {
        prometheus.get("/api/v1/query?query=up").is_some() && prometheus.query("up{job=\"anycast-lb\"} == 1").len() == nodes.len()
    });
    // Traffic for a few scrapes, so rates have two samples or more.
    for round in 0..4 {
        net.client.run(|| {
            for i in 0..20 {
                http_get(Site::vip_addr(), client_addr(i), &format!("/r{round}-{i}")).expect("answered");
            }
        });
        std::thread::sleep(Duration::from_millis(800));
    }

    let mut series = 0;
    let queries = panel_queries();
    for (panel, expr) in &queries {
        let result = prometheus.query(expr);
        assert!(!result.is_empty(), "panel {panel:?}: no data for {expr}");
        series += result.len();
    }
    let alerts = alerts();
    let mut firing = Vec::new();
    for (name, expr) in &alerts {
        if !prometheus.query(expr).is_empty() {
            firing.push(name.clone());
        }
    }
    // The rule manager evaluated each rule without an error.
    let rules = prometheus.get("/api/v1/rules").expect("rules");
    let evaluated: Vec<(String, String)> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["health"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(evaluated.len(), alerts.len());
    assert!(evaluated.iter().all(|(_, health)| health == "ok"), "{evaluated:?}");
    println!(
        "Prometheus scraping {} nodes: {} dashboard queries of {} panels returned {series} series; {} alert expressions evaluated (rule health ok), true now: {firing:?}",
        nodes.len(),
        queries.len(),
        queries.iter().map(|(p, _)| p).collect::<std::collections::BTreeSet<_>>().len(),
        alerts.len()
    );
    assert!(firing.is_empty(), "a healthy harness fires no alert: {firing:?}");
}
