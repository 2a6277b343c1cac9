//! QUIC connections that survive a new client address (QUIC-LB), end to end: the real `lb run`
//! on the LB node, `lb backend run` on three backends serving their server IDs at /quic-lb, and
//! quinn servers there that issue QUIC-LB connection IDs through them (src/bin/quic_peer.rs). A
//! quinn client opens 50 connections, asks each which backend answers, moves to a new port (or
//! a new address), and asks again. With QUIC-LB every connection keeps its backend; with it off
//! (the same servers, the same IDs) the connections the ring sends elsewhere break.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lb_tests::{
    lbd::{metric, LbDaemon},
    netns::{add_addr, NetNs},
    require_root,
    topology::{backend_addr, Net, CLIENT},
};

const VIP: &str = "10.99.0.1";
const PORT: u16 = 4433;
const BACKENDS: usize = 3;
const CONNS: usize = 50;
/// The client's second address, for the new-address case.
const CLIENT_2: &str = "10.10.1.3";
const KEY: &str = "8f95f09245765f80256934e50c66207f";

fn peer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_quic_peer")
}

fn server_id(i: usize) -> String {
    format!("{:02x}{:02x}", 0xa0 + i, 0x10 + i)
}

/// QUIC-LB parameters (`[vip.quic_lb]` / `[[backend.quic_lb]]` share them).
fn params(key_file: Option<&Path>) -> String {
    let key = key_file.map_or(String::new(), |f| format!("key_file = \"{}\"\n", f.display()));
    format!("config_id = 1\nserver_id_len = 2\nnonce_len = 6\ncid_len = 12\n{key}")
}

/// `lb run`'s config: the UDP VIP over the backends, with QUIC-LB (`quic`: its parameters) or
/// without; reals checked by TCP on `lb backend`'s endpoint.
fn lb_config(quic: Option<&str>) -> String {
    let mut c = format!(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [health]\nkind = \"tcp\"\nport = 9180\ninterval_ms = 200\ntimeout_ms = 150\nrise = 1\nfall = 2\n\
         [[vip]]\nname = \"h3\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"udp\"\n"
    );
    if let Some(q) = quic {
        c += &format!("[vip.quic_lb]\n{q}");
    }
    for i in 0..BACKENDS {
        c += &format!("[[vip.real]]\naddress = \"{}\"\n", backend_addr(i));
        if quic.is_some() {
            c += &format!("server_id = \"{}\"\n", server_id(i));
        }
    }
    c
}

fn in_ns(ns: &NetNs) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name));
    cmd
}

/// The QUIC servers, one per backend, killed on drop.
struct Servers(Vec<Child>);

impl Servers {
    fn start(net: &Net, certs: &Path) -> Self {
        let children = net
            .backends
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                in_ns(ns)
                    .args([peer_bin(), "server", "--listen", &format!("{VIP}:{PORT}"), "--name", &format!("b{i}")])
                    .args(["--cert-dir", &certs.display().to_string(), "--offer", "127.0.0.1:9180"])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("quic_peer server")
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        Self(children)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one client run saw: how many connections kept their backend, and how many broke.
struct Run {
    kept: usize,
    broken: usize,
    before: Vec<String>,
    errors: Vec<String>,
}

fn client_run(net: &Net, certs: &Path, rebind_to: &str) -> Run {
    let out = in_ns(&net.client)
        .args([peer_bin(), "client", "--connect", &format!("{VIP}:{PORT}"), "--cert-dir", &certs.display().to_string()])
        .args(["--conns", &CONNS.to_string(), "--rebind-to", rebind_to])
        .output()
        .expect("quic_peer client");
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client JSON");
    let list = |k: &str| -> Vec<String> { report[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect() };
    let (before, after) = (list("before"), list("after"));
    assert!(before.iter().all(|b| b.starts_with('b')), "every connection answered before the move: {before:?}");
    let kept = before.iter().zip(&after).filter(|(b, a)| b == a).count();
    let broken = after.iter().filter(|a| a.starts_with("error")).count();
    assert_eq!(kept + broken, CONNS, "an answer from another backend: {after:?}");
    let errors = after.iter().filter(|a| a.starts_with("error")).cloned().collect();
    Run { kept, broken, before, errors }
}

fn quic_counter(lb: &LbDaemon, what: &str) -> f64 {
    metric(&lb.metrics(), &format!("lb_xdp_events_total{{event=\"quic_{what}\"}}"))
}

/// Reloads `lb run` with `config` and waits until its VIP shows QUIC-LB as wanted (`on`,
/// `encrypted`) with every real up.
fn reload(lb: &LbDaemon, config: &str, on: Option<bool>) {
    let instance = &lb.instance;
    std::fs::write(&lb.config, format!("instance = \"{instance}\"\n{config}")).unwrap();
    let out = lb.cli(&["reload"]);
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = lb.status();
        let v = &status[0];
        if v.quic_lb.as_ref().map(|q| q.encrypted) == on && v.healthy() == BACKENDS as u32 {
            return;
        }
        assert!(Instant::now() < deadline, "lb did not take the config: {status:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backends_offer(net: &mut Net, key_file: Option<&Path>) {
    for (i, b) in net.decaps.iter_mut().enumerate() {
        b.with_sections(&format!("[[backend.quic_lb]]\nvip = \"{VIP}:{PORT}\"\n{}server_ids = [\"{}\"]\n", params(key_file), server_id(i)));
    }
}

fn report(label: &str, rebind: &str, run: &Run) {
    let spread: std::collections::BTreeMap<&str, usize> = run.before.iter().fold(Default::default(), |mut m, b| {
        *m.entry(b.as_str()).or_default() += 1;
        m
    });
    println!("{label:<22} {rebind:<12} {CONNS} connections {spread:?}: {} kept their backend, {} broke", run.kept, run.broken);
}

#[test]
fn quic_connections_keep_their_backend_across_a_new_port_or_address() {
    require_root!();
    let mut net = Net::new(BACKENDS);
    add_addr(&net.client, &format!("{CLIENT_2}/24"), "c0");
    let dir = std::env::temp_dir().join(format!("quic-migration-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certs = dir.join("certs");
    assert!(Command::new(peer_bin()).args(["cert", &certs.display().to_string()]).status().unwrap().success());
    let key_file = dir.join("quic.key");
    std::fs::write(&key_file, KEY).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases = [("a new port", CLIENT), ("a new address", CLIENT_2)];

    // Plaintext connection IDs.
    backends_offer(&mut net, None);
    let servers = Servers::start(&net, &certs);
    let plaintext = params(None);
    let lb = LbDaemon::start(&net.lb, &lb_config(Some(&plaintext)));
    reload(&lb, &lb_config(Some(&plaintext)), Some(false));
    for (what, to) in cases {
        let routed = quic_counter(&lb, "routed_by_cid");
        let run = client_run(&net, &certs, to);
        report("QUIC-LB plaintext", what, &run);
        assert_eq!(run.kept, CONNS, "with QUIC-LB every connection keeps its backend across {what}: {:?}", run.errors);
        assert!(quic_counter(&lb, "routed_by_cid") > routed, "routed by connection ID");
    }

    // QUIC-LB off: the same servers issue the same IDs, the balancer ignores them.
    reload(&lb, &lb_config(None), None);
    for (what, to) in cases {
        let run = client_run(&net, &certs, to);
        report("QUIC-LB off", what, &run);
        assert!(run.broken >= CONNS / 5, "without QUIC-LB the ring sends some elsewhere: {} broke", run.broken);
    }

    // Encrypted connection IDs (server ID 2 + nonce 6 octets: the four-pass Feistel).
    drop(servers);
    backends_offer(&mut net, Some(&key_file));
    let _servers = Servers::start(&net, &certs);
    reload(&lb, &lb_config(Some(&params(Some(&key_file)))), Some(true));
    for (what, to) in cases {
        let run = client_run(&net, &certs, to);
        report("QUIC-LB encrypted", what, &run);
        assert_eq!(run.kept, CONNS, "encrypted: every connection keeps its backend across {what}: {:?}", run.errors);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
