//! Who may steer the balancer: the admin socket is its owner's, TCP needs the token, and bad
//! requests change nothing (the real `lb` in a namespace of the test's own).

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use lb_tests::{
    lbd::{http_request, LbDaemon},
    require_root,
    topology::{backend_addr, Net},
};

const TOKEN: &str = "0123456789abcdef-test-token";

fn config(api: &str) -> String {
    format!(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n[health]\nkind = \"none\"\n{api}\
         [[vip]]\nname = \"web\"\naddress = \"10.99.0.1\"\nport = 8080\nprotocol = \"tcp\"\n[[vip.real]]\naddress = \"{}\"\n",
        backend_addr(0)
    )
}

fn token_file(mode: u32) -> PathBuf {
    let path = std::env::temp_dir().join(format!("lbt-token-{}-{mode:o}", std::process::id()));
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn weight(d: &LbDaemon) -> u32 {
    d.status()[0].reals[0].weight
}

fn set_weight(w: u32, auth: Option<&str>) -> Vec<u8> {
    let headers: Vec<String> = auth.map(|a| format!("Authorization: {a}")).into_iter().collect();
    http_request("POST", "/real/set-weight", &headers, &format!("{{\"vip\":\"web\",\"real\":\"{}\",\"weight\":{w}}}", backend_addr(0)))
}

#[test]
fn only_the_owner_uses_the_socket_and_tcp_changes_need_the_token() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(1);
    let token = token_file(0o600);
    let d = LbDaemon::start(&net.lb, &config(&format!("[api]\nlisten = \"127.0.0.1:9101\"\ntoken_file = \"{}\"\n", token.display())));
    let socket = d.socket();
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600, "the socket is its owner's");

    // Another uid on this host: refused by the socket's mode.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lb_tests::lbd::lb_bin())
        .args(["site", "drain", "--socket"])
        .arg(&socket)
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("connecting to lb's admin socket") && stderr.contains("Permission denied"),
        "nobody (uid 65534) was let in: {stderr}"
    );
    assert_eq!(weight(&d), 1);

    // TCP: no token, a wrong one, a wrong scheme: 401 and nothing changes.
    for auth in [None, Some("Bearer wrong-token-wrong-token"), Some(&format!("Basic {TOKEN}") as &str), Some("Bearer ")] {
        let (status, body) = d.over_tcp("127.0.0.1:9101", &set_weight(5, auth));
        assert_eq!(status, 401, "{auth:?}: {body}");
    }
    assert_eq!(weight(&d), 1, "no change went through");
    assert!(!d.dir.join(format!("{}.json", d.instance)).exists(), "and none was journaled");
    // Reading from loopback needs no token; the token holder may change things.
    assert_eq!(d.over_tcp("127.0.0.1:9101", &http_request("GET", "/status", &[], "")).0, 200);
    let (status, body) = d.over_tcp("127.0.0.1:9101", &set_weight(5, Some(&format!("Bearer {TOKEN}"))));
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(weight(&d), 5);
    // The CLI over TCP with the token file.
    let out =
        d.cli(&["real", "set-weight", "web", &backend_addr(0), "7", "--api", "127.0.0.1:9101", "--token-file", token.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(weight(&d), 7);
    let _ = std::fs::remove_file(&token);
}

#[test]
fn a_token_file_others_can_read_stops_lb_at_start() {
    require_root!();
    let net = Net::new(1);
    let token = token_file(0o644);
    let config = config(&format!("[api]\nlisten = \"127.0.0.1:9101\"\ntoken_file = \"{}\"\n", token.display()));
    let out = lb_tests::lbd::run_once(&net.lb, &config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("readable by others (mode 644)"), "{stderr}");
    let pins = lb_userspace::dataplane::pins::balancer(&format!("once{}", std::process::id()));
    let touched = pins.exists();
    let _ = std::fs::remove_dir_all(&pins);
    assert!(!touched, "refused before the data plane was touched");
    let _ = std::fs::remove_file(&token);
}

/// Malformed, oversized and unknown requests over the admin socket: each refused with a reason,
/// the state unchanged, and the daemon answers after them.
#[test]
fn bad_requests_are_refused_and_change_nothing() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(1);
    let d = LbDaemon::start(&net.lb, &config(""));
    let before = serde_json::to_string(&d.status()).unwrap();
    let real = backend_addr(0);
    let big = format!("{{\"vip\":\"{}\",\"real\":\"{real}\"}}", "x".repeat(100_000));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("oversized body", http_request("POST", "/real/drain", &[], &big), 413, ""),
        ("truncated JSON", http_request("POST", "/real/drain", &[], "{\"vip\": \"web\", \"real\":"), 400, "EOF"),
        ("not JSON", http_request("POST", "/real/drain", &[], "vip=web"), 400, "expected value"),
        ("unknown field", http_request("POST", "/real/drain", &[], &format!("{{\"vip\":\"web\",\"real\":\"{real}\",\"evil\":1}}")), 400, "unknown field `evil`"),
        ("missing field", http_request("POST", "/real/drain", &[], "{\"vip\":\"web\"}"), 400, "missing field `real`"),
        ("bad address", http_request("POST", "/real/drain", &[], "{\"vip\":\"web\",\"real\":\"10.0.0.999\"}"), 400, "real: invalid IP address"),
        ("bad weight type", http_request("POST", "/real/set-weight", &[], &format!("{{\"vip\":\"web\",\"real\":\"{real}\",\"weight\":\"a lot\"}}")), 400, "weight: invalid type"),
        ("weight out of range", http_request("POST", "/real/set-weight", &[], &format!("{{\"vip\":\"web\",\"real\":\"{real}\",\"weight\":100000}}")), 400, "out of range"),
        ("negative weight", http_request("POST", "/real/set-weight", &[], &format!("{{\"vip\":\"web\",\"real\":\"{real}\",\"weight\":-1}}")), 400, "weight: invalid value"),
        ("trailing bytes", http_request("POST", "/vip/remove", &[], "{\"name\":\"web\"} {\"name\":\"web\"}"), 400, "trailing"),
        ("no such VIP", http_request("POST", "/vip/remove", &[], "{\"name\":\"nope\"}"), 404, "no VIP"),
        ("VIP with a bad address", http_request("POST", "/vip/add", &[], "{\"name\":\"v2\",\"address\":\"nope\",\"port\":80,\"protocol\":\"tcp\",\"real\":[]}"), 400, "address"),
        ("VIP with an unknown field", http_request("POST", "/vip/add", &[], "{\"name\":\"v2\",\"address\":\"10.99.0.2\",\"port\":80,\"protocol\":\"tcp\",\"evil\":true}"), 400, "unknown field `evil`"),
        ("VIP that exists", http_request("POST", "/vip/add", &[], &format!("{{\"name\":\"web\",\"address\":\"10.99.0.1\",\"port\":8080,\"protocol\":\"tcp\",\"real\":[{{\"address\":\"{real}\"}}]}}")), 409, "exists"),
        ("drain without [bgp]", http_request("POST", "/site/drain", &[], ""), 409, "no [bgp]"),
        ("wrong method", http_request("GET", "/site/drain", &[], ""), 405, ""),
        ("unknown path", http_request("POST", "/vip/steal", &[], "{}"), 404, ""),
        ("not HTTP", b"\x00\x01\x02garbage\r\n\r\n".to_vec(), 400, ""),
    ];
    let mut tried = Vec::new();
    for (what, request, want, says) in &cases {
        let (status, body) = d.over_socket(request);
        assert_eq!(status, *want, "{what}: {body}");
        assert!(body.contains(says), "{what}: {body:?} should say {says:?}");
        tried.push(format!("{what}: {status} {}", body.trim()));
    }
    // A Content-Length far over the limit and a body that never comes: no answer but a refusal
    // (or none: the client is left waiting), and the daemon goes on answering others.
    let (status, body) = d.over_socket(b"POST /real/drain HTTP/1.0\r\nContent-Length: 99999999\r\n\r\n{}");
    assert!(status == 413 || status == 0, "a lying Content-Length: {status} {body}");
    tried.push(format!(
        "a Content-Length of 99,999,999 with a 2-byte body: {}",
        if status == 0 { "no answer within 5 s".to_owned() } else { status.to_string() }
    ));
    println!("refused inputs:\n  {}", tried.join("\n  "));
    assert_eq!(serde_json::to_string(&d.status()).unwrap(), before, "nothing changed");
    assert!(!d.dir.join(format!("{}.json", d.instance)).exists(), "nothing journaled");
    let (status, _) = d.over_socket(&http_request("POST", "/real/drain", &[], &format!("{{\"vip\":\"web\",\"real\":\"{real}\"}}")));
    assert_eq!(status, 200, "and a good request still works");
}

/// `lb check-config` refuses every token file `lb run` would: 0644, missing, empty, blank,
/// shorter than 16 characters; a good one passes.
#[test]
fn check_config_refuses_the_token_files_run_refuses() {
    let dir = std::env::temp_dir().join(format!("lbt-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // (case, the file's text and mode or none, what the refusal says: empty for none)
    type Case<'a> = (&'a str, Option<(&'a str, u32)>, &'a str);
    let cases: [Case; 6] = [
        ("good", Some((TOKEN, 0o600)), ""),
        ("readable", Some((TOKEN, 0o644)), "readable by others (mode 644)"),
        ("missing", None, "No such file"),
        ("empty", Some(("", 0o600)), "shorter than 16"),
        ("blank", Some(("                    \n", 0o600)), "shorter than 16"),
        ("short", Some(("0123456789abcde", 0o600)), "shorter than 16"),
    ];
    for (name, content, refusal) in cases {
        let token = dir.join(name);
        if let Some((text, mode)) = content {
            std::fs::write(&token, text).unwrap();
            std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let file = dir.join(format!("{name}.toml"));
        let conf = config(&format!("[api]\nlisten = \"127.0.0.1:9101\"\ntoken_file = \"{}\"\n", token.display())).replace("lb0", "lo");
        std::fs::write(&file, conf).unwrap();
        let out = std::process::Command::new(lb_tests::lbd::lb_bin()).arg("check-config").arg(&file).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if refusal.is_empty() {
            assert!(out.status.success(), "{name}: {said}");
        } else {
            assert!(!out.status.success() && said.contains("api.token_file") && said.contains(refusal), "{name}: {said}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
