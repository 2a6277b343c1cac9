//! The operator's tools against a real `lb` in the namespaces of `lb_tests::topology`:
//! `lb flow` (where a flow goes and why), `lb flows` and `lb flows purge`.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_tests::{
    bird::wait_for,
    lbd::LbDaemon,
    packet::ip,
    require_root,
    topology::{backend_addr, lb_config, who, LineConn, Net, Site, CLIENT, VIP},
};
use lb_userspace::operator::flow::{Choice, FlowList, FlowReport};

fn cli_ok(d: &LbDaemon, args: &[&str]) -> String {
    let out = d.cli(args);
    assert!(out.status.success(), "lb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn flow(d: &LbDaemon, port: u16) -> FlowReport {
    let body = cli_ok(d, &["flow", &format!("{CLIENT}:{port}"), &format!("{VIP}:8080"), "tcp", "--json"]);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn flows(d: &LbDaemon, args: &[&str]) -> FlowList {
    let body = cli_ok(d, &[&["flows", "--json"], args].concat());
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn table_real(c: &Choice) -> Option<IpAddr> {
    match c {
        Choice::Table { real, .. } => Some(*real),
        _ => None,
    }
}

fn ring_real(c: &Choice) -> Option<IpAddr> {
    match c {
        Choice::Ring { real, .. } => Some(*real),
        _ => None,
    }
}

/// Every connection's `lb flow` names the backend that answered it; after a drain, old flows
/// are named by their table entry and new ones by the ring's new real; `lb flows` lists a real's
/// entries and `lb flows purge` removes them, after which that real's clients move.
#[test]
fn lb_flow_names_the_backend_that_answered_and_follows_a_drain_and_a_purge() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let servers = net.servers();
    let d = LbDaemon::start(&net.lb, &lb_config(2));
    wait_for(Duration::from_secs(5), "both reals up", || d.status()[0].reals.iter().all(|r| r.up));

    let mut conns: Vec<(LineConn, usize)> = net.client.run(|| {
        (0..20)
            .map(|i| {
                let mut c = LineConn::connect(Site::vip_addr()).expect("connect");
                let b = who(&c.exchange(&format!("hello {i}")).expect("answered"));
                (c, b)
            })
            .collect()
    });
    for (c, b) in &conns {
        let report = flow(&d, c.local_port);
        assert_eq!(table_real(&report.now), Some(ip(&backend_addr(*b))), "port {}: {report:?}", c.local_port);
        assert_eq!(ring_real(&report.new_flow), Some(ip(&backend_addr(*b))), "the ring agrees while unchanged: {report:?}");
        assert_eq!((report.vip.as_deref(), report.announced), (Some("web"), None), "no [bgp] here");
    }
    let sample = conns.iter().find(|(_, b)| *b == 1).expect("a connection to backend 1").0.local_port;
    let text = cli_ok(&d, &["flow", &format!("{CLIENT}:{sample}"), &format!("{VIP}:8080")]);
    println!("lb flow before the drain:\n{text}");
    assert!(text.contains(&format!("now:               connection table: real {}", backend_addr(1))), "{text}");

    cli_ok(&d, &["real", "drain", "web", &backend_addr(1)]);
    wait_for(Duration::from_secs(5), "backend 1 out of the ring", || d.status()[0].reals[1].slots == 0);
    for (c, b) in &conns {
        let report = flow(&d, c.local_port);
        assert_eq!(table_real(&report.now), Some(ip(&backend_addr(*b))), "old flows keep their entry: {report:?}");
        assert_eq!(ring_real(&report.new_flow), Some(ip(&backend_addr(0))), "the ring has only backend 0 now: {report:?}");
    }
    let text = cli_ok(&d, &["flow", &format!("{CLIENT}:{sample}"), &format!("{VIP}:8080")]);
    println!("lb flow after draining backend 1:\n{text}");
    let fresh: Vec<(LineConn, usize)> = net.client.run(|| {
        (0..5)
            .map(|i| {
                let mut c = LineConn::connect(Site::vip_addr()).expect("connect");
                let b = who(&c.exchange(&format!("new {i}")).expect("answered"));
                (c, b)
            })
            .collect()
    });
    for (c, b) in &fresh {
        assert_eq!(*b, 0, "new connections go to backend 0");
        assert_eq!(table_real(&flow(&d, c.local_port).now), Some(ip(&backend_addr(0))));
    }

    // `lb flows`: backend 1's entries are exactly its connections.
    let mut on_1: Vec<u16> = conns.iter().filter(|(_, b)| *b == 1).map(|(c, _)| c.local_port).collect();
    on_1.sort();
    let listed = flows(&d, &["--real", &backend_addr(1)]);
    let mut ports: Vec<u16> = listed.entries.iter().map(|e| e.flow.src_port).collect();
    ports.sort();
    assert_eq!(ports, on_1, "{listed:?}");
    assert!(!listed.truncated);
    assert!(listed.entries.iter().all(|e| e.vip.as_deref() == Some("web") && e.real == Some(ip(&backend_addr(1)))));
    let limited = flows(&d, &["--limit", "3"]);
    assert_eq!((limited.entries.len(), limited.truncated), (3, true), "{limited:?}");
    println!("lb flows --real {}:\n{}", backend_addr(1), cli_ok(&d, &["flows", "--real", &backend_addr(1)]));

    // Purge backend 1's entries: its clients' next packets take the ring, to backend 0, which
    // knows no such connection and resets it.
    let out = cli_ok(&d, &["flows", "purge", "--real", &backend_addr(1)]);
    println!("lb flows purge: {out}");
    assert!(out.starts_with(&format!("removed {} entries", on_1.len())), "{out}");
    assert!(flows(&d, &["--real", &backend_addr(1)]).entries.is_empty());
    let report = flow(&d, on_1[0]);
    assert_eq!(report.entry, None);
    assert_eq!(ring_real(&report.now), Some(ip(&backend_addr(0))), "{report:?}");
    net.client.run(|| {
        for (c, b) in conns.iter_mut() {
            let answer = c.exchange("after the purge");
            if *b == 1 {
                assert!(answer.is_err(), "backend 0 got a purged connection's packet and reset it: {answer:?}");
            } else {
                assert!(answer.expect("backend 0's connections are untouched").starts_with("backend 0 "));
            }
        }
    });
    drop(servers);
}

/// Writes `n` entries of VIP `web` into `d`'s pinned connection table, as if clients
/// 11.0.0.0 + i had connected, entry i to real id `real_of(i)`.
fn fill_conns(d: &LbDaemon, n: u32, real_of: impl Fn(u32) -> u32) {
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::{ConnEntry, FlowKey};

    let vip_index = d.status()[0].index;
    let pin = lb_userspace::dataplane::pins::balancer(&d.instance).join("maps").join(lb_common::maps::CONNS);
    let mut conns: HashMap<MapData, FlowKey, ConnEntry> =
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&pin).expect("pinned CONNS"))).expect("CONNS");
    for i in 0..n {
        let src = std::net::Ipv4Addr::from(0x0b00_0000 + i).into();
        let key = lb_common::FlowKey::new(src, 1000, [10, 99, 0, 1].into(), 8080, 6);
        conns.insert(key, ConnEntry::new(real_of(i), i, vip_index, 1, 0), 0).expect("insert");
    }
}

/// `lb flows` on a table of a million entries: a listing that stops at its limit reads a few
/// entries; a filter that matches few reads the whole table; a purge too. Prints the costs.
#[test]
fn lb_flows_on_a_million_entries_is_bounded_and_a_purge_takes_only_its_real() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    // One answer may list the whole table here (the default stops at 100,000).
    let d = LbDaemon::start(&net.lb, &format!("[limits]\nflows_listed = 2000000\n{}", lb_config(2)));
    let status = d.status();
    let ids: Vec<u32> = status[0].reals.iter().map(|r| r.id).collect();
    const ENTRIES: u32 = 1_000_000;
    const ON_REAL_1: u32 = 1_000; // every 1,000th entry
    let t = Instant::now();
    fill_conns(&d, ENTRIES, |i| if i % (ENTRIES / ON_REAL_1) == 0 { ids[1] } else { ids[0] });
    println!("filled the table with {ENTRIES} entries in {:?}", t.elapsed());

    let t = Instant::now();
    let first = flows(&d, &["--limit", "10"]);
    let quick = t.elapsed();
    assert_eq!((first.entries.len(), first.truncated), (10, true));
    assert!(first.scanned <= 11, "stopped at the limit: {} read", first.scanned);
    let t = Instant::now();
    let few = flows(&d, &["--real", &backend_addr(1), "--limit", "5000"]);
    let walk = t.elapsed();
    assert_eq!(few.entries.len(), ON_REAL_1 as usize);
    assert_eq!(few.scanned, ENTRIES as usize, "the whole table was read");
    let t = Instant::now();
    let out = cli_ok(&d, &["flows", "purge", "--real", &backend_addr(1)]);
    let purge = t.elapsed();
    assert!(out.starts_with(&format!("removed {ON_REAL_1} entries of {} ({ENTRIES} entries read)", backend_addr(1))), "{out}");
    let left = flows(&d, &["--real", &backend_addr(0), "--limit", "2000000"]);
    assert_eq!(left.entries.len(), (ENTRIES - ON_REAL_1) as usize, "backend 0's entries stay");
    println!("lb flows --limit 10: {quick:?}; --real (whole table, {ENTRIES} entries): {walk:?}; purge of {ON_REAL_1}: {purge:?}");
}

/// The completion scripts load in their shells and offer the subcommands.
#[test]
fn completion_scripts_load_and_complete_subcommands() {
    let lb = lb_tests::lbd::lb_bin();
    let script = std::process::Command::new(&lb).args(["completions", "bash"]).output().expect("lb completions bash");
    assert!(script.status.success());
    let file = std::env::temp_dir().join(format!("lb-completion-{}.bash", std::process::id()));
    std::fs::write(&file, &script.stdout).unwrap();
    // What bash offers after "lb fl<TAB>".
    let probe = format!(
        "source {}; COMP_WORDS=(lb fl); COMP_CWORD=1; COMP_LINE='lb fl'; COMP_POINT=5; _lb lb fl lb; echo \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &probe]).output().expect("bash");
    let _ = std::fs::remove_file(&file);
    let offered = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        offered.split_whitespace().collect::<Vec<_>>(),
        ["fleet", "flow", "flows"],
        "{offered} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends, from the client's namespace, packets the balancer must drop: a TCP header cut to 8
/// bytes and a first fragment (IPv4, to the VIP), and a packet with a destination-options
/// header (IPv6, to the IPv6 VIP). Raw sockets: the kernel fills in lengths and checksums.
fn send_malformed(net: &Net) {
    use socket2::{Domain, Protocol, Socket, Type};
    net.client.run(|| {
        let v4 = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW))).expect("raw IPv4 socket");
        let header = |frag: u16, payload: &[u8]| {
            let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34];
            p.extend_from_slice(&frag.to_be_bytes());
            p.extend_from_slice(&[64, 6, 0, 0, 10, 10, 1, 2, 10, 99, 0, 1]);
            p.extend_from_slice(payload);
            p
        };
        let mut tcp = [0u8; 20];
        tcp[0..4].copy_from_slice(&[0x9c, 0x40, 0x1f, 0x90]); // 40000 -> 8080
        tcp[12] = 0x50;
        tcp[13] = 0x10; // ACK
        let to = std::net::SocketAddr::from(([10, 99, 0, 1], 0)).into();
        v4.send_to(&header(0, &tcp[..8]), &to).expect("send a cut TCP header");
        v4.send_to(&header(0x2000, &tcp), &to).expect("send a first fragment");
        let v6 = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(60))).expect("raw IPv6 socket, destination options");
        let mut payload = vec![6, 0, 1, 4, 0, 0, 0, 0]; // next header TCP, PadN
        payload.extend_from_slice(&tcp);
        let to6: std::net::SocketAddr = "[fd00:99::1]:0".parse().unwrap();
        v6.send_to(&payload, &to6.into()).expect("send an IPv6 packet with an extension header");
    });
}

/// `lb capture --what drop` writes the malformed packets the client sends, each with its drop
/// reason, and not the echo request sent before them; tcpdump reads the file.
#[test]
fn lb_capture_writes_dropped_packets_with_their_reasons_and_tcpdump_reads_them() {
    use aya::maps::{Array, Map, MapData};
    use pcap_file::pcapng::{blocks::enhanced_packet::EnhancedPacketOption, Block, PcapNgReader};

    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(1);
    let mut config = lb_config(1);
    config += "[[vip]]\nname = \"web6\"\naddress = \"fd00:99::1\"\nport = 8080\nprotocol = \"tcp\"\n";
    config += &format!("[[vip.real]]\naddress = \"{}\"\n", lb_tests::topology::backend_addr6(0));
    let d = LbDaemon::start(&net.lb, &config);
    let file = d.dir.join("drops.pcapng");
    let mut capture = std::process::Command::new(lb_tests::lbd::lb_bin())
        .args(["capture", "-w", file.to_str().unwrap(), "--what", "drop", "-c", "3", "--seconds", "20", "--instance", &d.instance])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lb capture");
    let ctl_pin = lb_userspace::dataplane::pins::balancer(&d.instance).join("maps").join(lb_common::maps::CAPTURE_CTL);
    let ctl: Array<MapData, lb_common::CaptureCtl> = Array::try_from(Map::Array(MapData::from_pin(&ctl_pin).expect("pin"))).unwrap();
    wait_for(Duration::from_secs(5), "the capture on", || ctl.get(&0, 0).unwrap().what == lb_common::capture::DROP);

    net.client.run(|| {
        let icmp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::ICMPV4)).expect("raw ICMP");
        let to = std::net::SocketAddr::from(([10, 99, 0, 1], 0)).into();
        icmp.send_to(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0], &to).expect("send an echo request (answered, not a drop)");
    });
    send_malformed(&net);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = capture.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "lb capture did not stop after 3 packets");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut summary = String::new();
    std::io::Read::read_to_string(&mut capture.stderr.take().unwrap(), &mut summary).unwrap();
    println!("lb capture: {summary}");
    assert!(status.success(), "{summary}");
    assert_eq!(ctl.get(&0, 0).unwrap().what, 0, "the capture turned the data plane's copying off");

    let mut reader = PcapNgReader::new(std::fs::File::open(&file).unwrap()).expect("a pcapng file");
    let mut reasons = Vec::new();
    while let Some(block) = reader.next_block() {
        if let Block::EnhancedPacket(p) = block.expect("a block") {
            let comment = p.options.iter().find_map(|o| match o {
                EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                _ => None,
            });
            reasons.push(comment.expect("each packet has its reason"));
        }
    }
    reasons.sort();
    assert_eq!(reasons, ["drop: drop_bad_l4_header", "drop: drop_fragment", "drop: drop_ipv6_ext_header"]);

    let out = std::process::Command::new("tcpdump").args(["-nn", "-r"]).arg(&file).output().expect("tcpdump");
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("tcpdump -nn -r {}:\n{lines}", file.display());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines.lines().count(), 3, "{lines}");
    assert!(
        lines.contains("IP 10.10.1.2.40000 > 10.99.0.1.8080") && lines.contains("IP6 fd00:10:1::2 > fd00:99::1: DSTOPT 40000 > 8080"),
        "{lines}"
    );

    // Rate-limited: at 2 a second per CPU, 20 drops in a burst give a few packets, the rest
    // are counted as over the limit.
    let capture = std::process::Command::new(lb_tests::lbd::lb_bin())
        .args(["capture", "-w", file.to_str().unwrap(), "--rate", "2", "--seconds", "2", "--instance", &d.instance])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start lb capture");
    wait_for(Duration::from_secs(5), "the capture on", || ctl.get(&0, 0).unwrap().what != 0);
    for _ in 0..10 {
        send_malformed(&net);
    }
    let out = capture.wait_with_output().expect("lb capture ends after 2 s");
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("lb capture --rate 2: {summary}");
    let written: u64 = summary.lines().nth(1).and_then(|l| l.split(' ').next()).and_then(|n| n.parse().ok()).expect(&summary);
    let suppressed: u64 = summary.split(", ").nth(1).and_then(|p| p.split(' ').next()).and_then(|n| n.parse().ok()).expect(&summary);
    assert!(written <= 2 * 2, "at most a packet per CPU at once and 2 a second: {summary}");
    assert_eq!(written + suppressed, 30, "every drop written or counted over the limit: {summary}");
}

/// `lb doctor --json` against `d`: its exit code and report.
fn doctor(d: &LbDaemon) -> (i32, lb_userspace::operator::doctor::Report) {
    let out = d.cli(&["doctor", "--json", "--window-ms", "500"]);
    let body = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("an exit code"), report)
}

fn checks(report: &lb_userspace::operator::doctor::Report) -> Vec<String> {
    let mut c: Vec<String> = report.findings.iter().map(|f| format!("{:?} {} {}", f.severity, f.check, f.subject)).collect();
    c.sort();
    c
}

/// `lb doctor` on a running `lb`: nothing on a healthy node (exit 0); reals down (exit 2);
/// flapping reals, MTU answers, a nearly full connection table, a changed config file and a
/// handoff peer down (warnings, exit 1), each with its evidence.
#[test]
fn lb_doctor_finds_what_is_provoked_with_evidence_and_exit_codes() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let mut servers = Some(net.servers());
    // An LRU table evicts before it is full (nodes wait in per-CPU free lists, up to 128 each):
    // large enough that 95% stays clear of that.
    const TABLE: u32 = 16_384;
    let d = LbDaemon::start(&net.lb, &format!("conn_table_size = {TABLE}\n{}", lb_config(2)));
    let d = &d;
    let all_up = |up: bool| move || d.status()[0].reals.iter().all(|r| r.up == up);
    wait_for(Duration::from_secs(5), "both reals up", all_up(true));
    let (code, report) = doctor(d);
    assert_eq!((code, checks(&report)), (0, vec![]), "a healthy node");
    println!("lb doctor on a healthy node: {}", String::from_utf8_lossy(&d.cli(&["doctor"]).stdout).trim());

    // Every backend's service stops, then comes back, twice: two flips each time.
    for round in 0..2 {
        drop(servers.take());
        wait_for(Duration::from_secs(5), "both reals down", all_up(false));
        if round == 0 {
            let (code, report) = doctor(d);
            let expected = [
                "Critical vip_below_min_healthy VIP web".to_owned(),
                format!("Warning real_down VIP web real {}", backend_addr(0)),
                format!("Warning real_down VIP web real {}", backend_addr(1)),
            ];
            assert_eq!((code, checks(&report)), (2, expected.to_vec()));
        }
        servers = Some(net.servers());
        wait_for(Duration::from_secs(5), "both reals up", all_up(true));
    }
    let (code, report) = doctor(d);
    let flapping: Vec<String> = (0..2).map(|i| format!("Warning real_flapping VIP web real {}", backend_addr(i))).collect();
    assert_eq!((code, checks(&report)), (1, flapping.clone()));
    assert!(report.findings[0].evidence.starts_with("4 health flips in the last 10 min"), "{:?}", report.findings[0]);

    // Full-size segments do not fit the tunnel: the balancer answers with too-big.
    net.client.run(|| {
        let mut c = LineConn::connect(Site::vip_addr()).expect("connect");
        c.exchange(&format!("UPLOAD {}", "x".repeat(100_000))).expect("the upload is answered");
    });
    // The connection table 95% full.
    let real = d.status()[0].reals[0].id;
    fill_conns(d, TABLE * 95 / 100, |_| real);
    // A changed config file: a handoff peer that does not exist.
    let mut file = std::fs::read_to_string(&d.config).unwrap();
    file += "[handoff]\naddress = \"10.10.2.2\"\npeers = [\"10.10.2.99\"]\nhealth = { interval_ms = 100, timeout_ms = 80, fall = 2 }\n";
    std::fs::write(&d.config, &file).unwrap();
    let (code, report) = doctor(d);
    let mut found = checks(&report);
    found.retain(|c| !flapping.contains(c));
    assert_eq!(code, 1, "{found:?}");
    assert_eq!(found.len(), 3, "{found:?}");
    for check in ["Warning config_not_reloaded config file", "Warning conn_table_full connection table"] {
        assert!(found.contains(&check.to_owned()), "{found:?}");
    }
    // The upload's too-big answers: in the window or before it.
    assert!(found.iter().any(|c| c.ends_with("mtu_too_small path MTU")), "{found:?}");
    let text = String::from_utf8_lossy(&d.cli(&["doctor", "--window-ms", "500"]).stdout).into_owned();
    println!("lb doctor:\n{text}");
    assert!(text.contains("evidence: ") && text.contains("action: "), "{text}");

    cli_ok(d, &["reload"]);
    wait_for(Duration::from_secs(5), "the dead peer found down", || {
        checks(&doctor(d).1).contains(&"Warning handoff_peer_down handoff peer 10.10.2.99".to_owned())
    });
    assert!(!checks(&doctor(d).1).iter().any(|c| c.contains("config_not_reloaded")), "reloaded");
    drop(servers);
}

/// `lb doctor` that cannot reach lb says so and exits 2 (critical), for cron and monitoring.
#[test]
fn lb_doctor_without_a_running_lb_is_critical() {
    let out = std::process::Command::new(lb_tests::lbd::lb_bin())
        .args(["doctor", "--socket", "/nonexistent/lb.sock"])
        .output()
        .expect("lb doctor");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.starts_with("lb doctor: CRITICAL: cannot ask lb: connecting to lb's admin socket /nonexistent/lb.sock"), "{said}");
}
