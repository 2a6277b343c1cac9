//! Loading and rejecting configs: defaults, every problem with its field.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::Duration,
};

use super::*;

const GOOD: &str = r#"
        instance = "edge1"
        [[interface]]
        name = "lo"
        [forwarding]
        next_hop_mac = "02:00:00:00:00:03"
        [health]
        interval_ms = 200
        timeout_ms = 100
        [[vip]]
        name = "web"
        address = "10.99.0.1"
        port = 80
        protocol = "tcp"
        health = { kind = "http", path = "/healthz", body_contains = "ok" }
        [[vip.real]]
        address = "10.1.0.1"
        [[vip.real]]
        address = "10.1.0.2"
        weight = 3
        health = { fall = 5 }
        [[vip]]
        name = "dns6"
        address = "2001:db8::53"
        port = 0
        protocol = "udp"
        ring_size = 251
        health = { kind = "udp", port = 53, request = "ping", expect = "pong" }
        [[vip.real]]
        address = "fd00::1"
"#;

/// The problems of `GOOD` with `from` replaced by `to`.
fn problems(from: &str, to: &str) -> Vec<Problem> {
    assert!(GOOD.contains(from), "{from:?} not in the good config");
    match parse(&GOOD.replacen(from, to, 1), InterfaceCheck::OnThisHost) {
        Ok(_) => vec![],
        Err(e) => e.problems().to_vec(),
    }
}

fn assert_problem(from: &str, to: &str, field: &str, reason: &str) {
    let found = problems(from, to);
    assert!(
        found.iter().any(|p| p.field == field && p.reason.contains(reason)),
        "{from:?} -> {to:?}: want {field}: ..{reason}.., got {found:?}"
    );
}

#[test]
fn good_config_validates_with_inherited_health() {
    let c = parse(GOOD, InterfaceCheck::OnThisHost).unwrap();
    assert_eq!(c.instance, "edge1");
    assert_eq!(c.forwarding.next_hop, NextHop::Mac([2, 0, 0, 0, 0, 3]));
    assert_eq!(c.forwarding.source_v4, (Ipv4Addr::new(10, 255, 0, 0), 16));
    let web = &c.vips[0];
    assert_eq!(web.reals[1].weight, 3);
    let h = &web.reals[1].health;
    assert_eq!((h.interval, h.timeout, h.rise, h.fall), (Duration::from_millis(200), Duration::from_millis(100), 2, 5));
    assert!(matches!(&h.kind, CheckKind::Http { path, expect_status: 200, .. } if path == "/healthz"));
    assert_eq!(h.port, 80, "the VIP's port by default");
    assert_eq!(c.vips[1].reals[0].health.port, 53);
}

#[test]
fn bad_address_is_named() {
    assert_problem("address = \"10.1.0.1\"", "address = \"10.1.0.x\"", "vip[0] \"web\".real[0].address", "not an IP address");
    assert_problem("address = \"10.99.0.1\"", "address = \"10.99.0\"", "vip[0] \"web\".address", "not an IP address");
}

#[test]
fn duplicate_vip_and_name_are_named() {
    let dup = GOOD.replace(
        "name = \"dns6\"\n        address = \"2001:db8::53\"\n        port = 0\n        protocol = \"udp\"",
        "name = \"web\"\n        address = \"10.99.0.1\"\n        port = 80\n        protocol = \"tcp\"",
    );
    let found = parse(&dup, InterfaceCheck::Skip).unwrap_err().problems().to_vec();
    assert!(found.iter().any(|p| p.reason.contains("duplicate VIP 10.99.0.1:80/tcp")), "{found:?}");
    assert!(found.iter().any(|p| p.field == "vip[1].name" && p.reason.contains("used by an earlier VIP")), "{found:?}");
}

#[test]
fn weight_out_of_range_is_named() {
    assert_problem("weight = 3", "weight = 1001", "vip[0] \"web\".real[1].weight", "out of range");
}

/// `vips` VIPs of `reals` reals each (ring_size 16381, health off).
fn many(vips: usize, reals: usize) -> String {
    let mut text = String::from("[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n[health]\nkind = \"none\"\n");
    for v in 0..vips {
        text += &format!(
            "[[vip]]\nname = \"v{v}\"\naddress = \"10.{}.{}.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 16381\n",
            100 + v / 256,
            v % 256
        );
        for r in 0..reals {
            text += &format!("[[vip.real]]\naddress = \"10.1.{}.{}\"\n", r / 256, r % 256 + 1);
        }
    }
    text
}

#[test]
fn the_ring_pool_follows_the_vips_unless_set() {
    let c = parse(GOOD, InterfaceCheck::Skip).unwrap();
    assert_eq!(c.ring_slots, 2 * (65_537 + 251) + 2 * 65_537, "two rings of each, and room for one more VIP");
    let set = parse(&format!("ring_slots = 200000\n{GOOD}"), InterfaceCheck::Skip).unwrap();
    assert_eq!(set.ring_slots, 200_000);
    let small = parse(&format!("ring_slots = 131575\n{GOOD}"), InterfaceCheck::Skip).unwrap_err();
    assert!(small.problems().iter().any(|p| p.field == "ring_slots" && p.reason.contains("fewer than the 131576")), "{small}");
}

#[test]
fn four_thousand_and_ninety_six_vips_with_sixteen_reals_each_are_accepted_and_no_more() {
    let c = parse(&many(4096, 16), InterfaceCheck::Skip).unwrap();
    assert_eq!((c.vips.len(), c.ring_slots), (4096, 2 * 4096 * 16381 + 2 * 65_537));
    let too_many = parse(&many(4097, 1), InterfaceCheck::Skip).unwrap_err();
    assert!(too_many.problems().iter().any(|p| p.field == "vip" && p.reason.contains("4097 VIPs, at most 4096")), "{too_many}");
    // A real has an id per VIP: 4096 VIPs of 17 reals need 69,632.
    let too_many_reals = parse(&many(4096, 17), InterfaceCheck::Skip).unwrap_err();
    assert!(too_many_reals.problems().iter().any(|p| p.reason.contains("69632 reals over all VIPs")), "{too_many_reals}");
}

#[test]
fn the_admin_api_is_a_socket_unless_tcp_is_asked_for_and_tcp_beyond_loopback_needs_a_token() {
    let c = parse(GOOD, InterfaceCheck::Skip).unwrap();
    assert_eq!(c.api, Api { socket: "/run/anycast-lb/edge1.sock".into(), group: None, listen: None, token_file: None });
    let with = |api: &str| format!("{GOOD}\n[api]\n{api}");
    let tcp = parse(&with("listen = \"127.0.0.1:9101\""), InterfaceCheck::Skip).unwrap();
    assert_eq!(tcp.api.listen, Some("127.0.0.1:9101".parse().unwrap()), "loopback without a token: reading only");
    let open = parse(&with("listen = \"0.0.0.0:9101\""), InterfaceCheck::Skip).unwrap_err();
    assert!(open.problems().iter().any(|p| p.field == "api.token_file" && p.reason.contains("not loopback")), "{open}");
    let ok = parse(&with("listen = \"0.0.0.0:9101\"\ntoken_file = \"/etc/anycast-lb/token\""), InterfaceCheck::Skip).unwrap();
    assert_eq!(ok.api.token_file, Some("/etc/anycast-lb/token".into()));
    let stray = parse(&with("token_file = \"/etc/anycast-lb/token\""), InterfaceCheck::Skip).unwrap_err();
    assert!(stray.problems().iter().any(|p| p.field == "api.token_file"), "{stray}");
    let unknown = parse_raw(&with("token = \"secret\"")).unwrap_err();
    assert!(unknown.to_string().contains("unknown field `token`"), "the token itself never goes in the config: {unknown}");
}

#[test]
fn ring_size_must_be_prime() {
    assert_problem("ring_size = 251", "ring_size = 250", "vip[1] \"dns6\".ring_size", "must be a prime");
    assert_problem("ring_size = 251", "ring_size = 131071", "vip[1] \"dns6\".ring_size", "no larger than 65537");
}

#[test]
fn unknown_interface_is_named() {
    assert_problem("name = \"lo\"", "name = \"nosuch0\"", "interface[0].name", "unknown interface");
    assert_problem("name = \"lo\"\n", "name = \"lo\"\n        mode = \"turbo\"\n", "interface[0].mode", "not \"native\" or \"generic\"");
}

#[test]
fn forwarding_problems_are_named() {
    assert_problem("next_hop_mac = \"02:00:00:00:00:03\"", "next_hop_mac = \"02:00:00:00:03\"", "forwarding.next_hop_mac", "not a MAC");
    assert_problem("next_hop_mac = \"02:00:00:00:00:03\"", "", "forwarding", "exactly one of");
    assert_problem("[forwarding]\n", "[forwarding]\n        mtu = 100\n", "forwarding.mtu", "outside");
    // Below 1,320 the IPv6 too-big answer (mtu - 40) would advertise less than 1,280.
    assert_problem("[forwarding]\n", "[forwarding]\n        mtu = 1319\n", "forwarding.mtu", "at least 1280");
    assert!(problems("[forwarding]\n", "[forwarding]\n        mtu = 1320\n").is_empty());
    assert_problem("[forwarding]\n", "[forwarding]\n        source_v6 = \"fd00::/64\"\n", "forwarding.source_v6", "at most 32 host bits");
}

#[test]
fn handoff_validates_and_its_problems_are_named() {
    let with = |h: &str| GOOD.replacen("[[vip]]", &format!("{h}\n        [[vip]]"), 1);
    let c =
        parse(&with("[handoff]\n        address = \"10.20.3.2\"\n        peers = [\"10.20.1.2\", \"10.20.2.2\"]"), InterfaceCheck::Skip)
            .unwrap();
    let h = c.handoff.expect("handoff");
    assert_eq!(h.peers, ["10.20.1.2".parse::<IpAddr>().unwrap(), "10.20.2.2".parse().unwrap()]);
    assert_eq!((h.health.kind.clone(), h.health.port, h.health.fall), (CheckKind::Tcp, 9100, 3), "the peer lb's metrics port by default");
    let bad = |h: &str| parse(&with(h), InterfaceCheck::Skip).unwrap_err().problems().to_vec();
    let found = bad(
        "[handoff]\n        address = \"10.20.3.2\"\n        peers = [\"10.20.3.2\", \"fd00::1\", \"10.20.1.2\", \"10.20.1.2\", \"x\"]",
    );
    let want = [
        ("handoff.peers[0]", "own address"),
        ("handoff.peers[1]", "same address family"),
        ("handoff.peers[3]", "listed twice"),
        ("handoff.peers[4]", "not an IP address"),
    ];
    for (field, reason) in want {
        assert!(found.iter().any(|p| p.field == field && p.reason.contains(reason)), "want {field}: {reason}, got {found:?}");
    }
    let found = bad("[handoff]\n        address = \"10.99.0.1\"\n        peers = [\"10.20.1.2\"]");
    assert!(found.iter().any(|p| p.field == "handoff.address" && p.reason.contains("is a VIP address")), "{found:?}");
    let found = bad("[handoff]\n        address = \"nope\"\n        peers = []\n        health = { fall = 0 }");
    for field in ["handoff.address", "handoff.peers", "handoff.health.fall"] {
        assert!(found.iter().any(|p| p.field == field), "want {field}, got {found:?}");
    }
}

#[test]
fn health_problems_are_named() {
    assert_problem("timeout_ms = 100", "timeout_ms = 300", "vip[0] \"web\".real[0].health.timeout_ms", "at most interval_ms");
    assert_problem("health = { fall = 5 }", "health = { fall = 0 }", "vip[0] \"web\".real[1].health.fall", "outside 1 ..= 100");
    assert_problem("kind = \"udp\", port = 53, ", "kind = \"udp\", ", "vip[1] \"dns6\".real[0].health.port", "any-port VIP needs");
    assert_problem("kind = \"http\"", "kind = \"smtp\"", "vip[0] \"web\".real[0].health.kind", "not tcp, http, udp or none");
    assert_problem(", expect = \"pong\"", "", "vip[1] \"dns6\".real[0].health", "needs both request and expect");
}

#[test]
fn family_mismatch_and_duplicate_real_are_named() {
    assert_problem("address = \"fd00::1\"", "address = \"10.1.0.9\"", "vip[1] \"dns6\".real[0].address", "cannot carry an IPv6 VIP");
    assert_problem("address = \"10.1.0.2\"", "address = \"10.1.0.1\"", "vip[0] \"web\".real[1].address", "listed twice");
}

#[test]
fn syntax_errors_and_unknown_fields_are_reported() {
    assert!(matches!(parse("[[vip]\n", InterfaceCheck::Skip), Err(ConfigError::Syntax { .. })));
    let e = parse(&GOOD.replace("weight = 3", "wieght = 3"), InterfaceCheck::Skip).unwrap_err();
    assert!(e.to_string().contains("wieght"), "{e}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = GOOD.replace("weight = 3", "weight = 5000").replace("ring_size = 251", "ring_size = 4");
    assert_eq!(parse(&bad, InterfaceCheck::Skip).unwrap_err().problems().len(), 2);
}

#[test]
fn example_config_in_the_repository_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb.example.toml");
    load(&path, InterfaceCheck::Skip).unwrap_or_else(|e| panic!("{e}"));
}

/// A unit's setting, as systemd reads `Key=value`.
fn unit_setting(unit: &str, key: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let prefix = format!("{key}=");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("{unit} sets no {key}")).to_owned()
}

/// `systemctl stop` must not kill lb during its longest graceful shutdown (then BIRD would go on
/// announcing the VIPs of a dead lb), and both units raise the open-file limit above systemd's
/// 1,024.
#[test]
fn the_units_outlast_the_longest_graceful_shutdown_and_raise_the_descriptor_limit() {
    let stop: u64 = unit_setting("anycast-lb.service", "TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    // The longest graceful shutdown, the wait for BIRD's confirmation (at most 2 s), and room.
    assert!(stop * 1000 >= MAX_GRACEFUL_SHUTDOWN_MS + 2_000 + 5_000, "TimeoutStopSec={stop}s");
    for unit in ["anycast-lb.service", "anycast-lb-backend.service"] {
        let files: u64 = unit_setting(unit, "LimitNOFILE").parse().unwrap();
        assert!(files >= 65_536, "{unit}: LimitNOFILE={files}");
    }
}

#[test]
fn limits_have_defaults_and_are_checked() {
    let c = parse(GOOD, InterfaceCheck::Skip).unwrap();
    assert_eq!(c.limits.listener.max_connections, crate::serve::DEFAULT_MAX_CONNECTIONS);
    assert_eq!(c.limits.listener.request_timeout, Duration::from_millis(crate::serve::DEFAULT_REQUEST_TIMEOUT_MS));
    assert_eq!((c.limits.flows_listed, c.limits.doctor_calls, c.limits.probes_per_host), (100_000, 2, 64));
    let bad = format!(
        "{GOOD}\n[limits]\nconnections_per_listener = 1\nrequest_timeout_ms = 0\nflows_listed = 0\ndoctor_calls = 0\nprobes_per_host = 0\n"
    );
    let problems = parse(&bad, InterfaceCheck::Skip).unwrap_err().problems().iter().map(|p| p.field.clone()).collect::<Vec<_>>();
    assert_eq!(
        problems,
        [
            "limits.connections_per_listener",
            "limits.request_timeout_ms",
            "limits.flows_listed",
            "limits.doctor_calls",
            "limits.probes_per_host"
        ]
    );
}

/// Addresses that cannot be tunnelled to or announced are refused wherever an address is named.
#[test]
fn unusable_addresses_are_refused() {
    let vip = "vip[1] \"dns6\".address";
    assert_problem("address = \"2001:db8::53\"", "address = \"::ffff:10.99.0.1\"", vip, "IPv4-mapped: write it as 10.99.0.1");
    assert_problem("address = \"10.99.0.1\"", "address = \"224.0.0.1\"", "vip[0] \"web\".address", "multicast");
    assert_problem("address = \"10.99.0.1\"", "address = \"255.255.255.255\"", "vip[0] \"web\".address", "broadcast");
    assert_problem("address = \"10.99.0.1\"", "address = \"127.0.0.1\"", "vip[0] \"web\".address", "loopback");
    assert_problem("address = \"2001:db8::53\"", "address = \"::\"", vip, "unspecified");
    assert_problem("address = \"10.1.0.1\"", "address = \"0.0.0.0\"", "vip[0] \"web\".real[0].address", "unspecified");
    assert_problem("address = \"fd00::1\"", "address = \"fe80::1\"", "vip[1] \"dns6\".real[0].address", "link-local");
    let handoff = format!("{GOOD}\n[handoff]\naddress = \"0.0.0.0\"\npeers = [\"224.0.0.5\"]\n");
    let found: Vec<_> = parse(&handoff, InterfaceCheck::Skip).unwrap_err().problems().iter().map(|p| p.field.clone()).collect();
    assert_eq!(found, ["handoff.address", "handoff.peers[0]"]);
}

#[test]
fn fleet_tls_takes_https_endpoints_a_ca_and_a_certificate_with_its_key() {
    let with = |fleet: &str| parse(&format!("{GOOD}\n[fleet]\nsite = \"a\"\nnode = \"n1\"\n{fleet}"), InterfaceCheck::OnThisHost);
    let fields = |fleet: &str| -> Vec<String> {
        with(fleet).map_or_else(|e| e.problems().iter().map(|p| format!("{}: {}", p.field, p.reason)).collect(), |_| vec![])
    };
    let https = r#"endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]"#;
    let tls = with(&format!("{https}\nca_file = \"/ca.pem\"\ncert_file = \"/n1.pem\"\nkey_file = \"/n1.key\"")).unwrap().fleet.unwrap().tls;
    let client = Some((Path::new("/n1.pem").to_owned(), Path::new("/n1.key").to_owned()));
    assert_eq!(tls, Some(FleetTls { ca_file: "/ca.pem".into(), client }));
    assert_eq!(with(&format!("{https}\nca_file = \"/ca.pem\"")).unwrap().fleet.unwrap().tls.unwrap().client, None);
    assert_eq!(with(r#"endpoints = ["http://10.0.0.1:2379"]"#).unwrap().fleet.unwrap().tls, None);

    let no_ca = fields(https);
    assert!(no_ca.iter().any(|p| p.starts_with("fleet.ca_file: https:// endpoints need the CA")), "{no_ca:?}");
    let mixed = fields(
        r#"endpoints = ["https://10.0.0.1:2379", "http://10.0.0.2:2379"]
ca_file = "/ca.pem""#,
    );
    assert!(mixed.iter().any(|p| p.starts_with("fleet.endpoints: mixes http:// and https://")), "{mixed:?}");
    let lone_cert = fields(&format!("{https}\nca_file = \"/ca.pem\"\ncert_file = \"/n1.pem\""));
    assert!(lone_cert.iter().any(|p| p.starts_with("fleet.cert_file: cert_file and key_file come together")), "{lone_cert:?}");
    let plain = fields("endpoints = [\"http://10.0.0.1:2379\"]\nca_file = \"/ca.pem\"");
    assert!(plain.iter().any(|p| p.starts_with("fleet.ca_file: TLS files are given but the endpoints are http://")), "{plain:?}");
}

/// `GOOD` with a UDP VIP with `[vip.quic_lb]` (`quic`) and `reals` as TOML real tables.
fn quic(quic: &str, reals: &[&str]) -> Result<Config, Vec<String>> {
    let mut text =
        format!("{GOOD}\n[[vip]]\nname = \"h3\"\naddress = \"10.99.0.3\"\nport = 443\nprotocol = \"udp\"\n[vip.quic_lb]\n{quic}\n");
    for r in reals {
        text += &format!("[[vip.real]]\n{r}\n");
    }
    parse(&text, InterfaceCheck::OnThisHost).map_err(|e| e.problems().iter().map(|p| format!("{}: {}", p.field, p.reason)).collect())
}

#[test]
fn quic_lb_takes_the_drafts_lengths_and_a_server_id_per_real() {
    let base = "config_id = 1\nserver_id_len = 2\nnonce_len = 6";
    let ok = quic(base, &["address = \"10.1.0.1\"\nserver_id = \"0a01\"", "address = \"10.1.0.2\"\nserver_id = \"0x0a02\""]).unwrap();
    let vip = ok.vips.last().unwrap();
    let q = vip.quic_lb.as_ref().unwrap();
    assert_eq!((q.config_id, q.server_id_len, q.nonce_len, q.cid_len, q.key_file.as_ref()), (1, 2, 6, 9, None));
    assert_eq!(q.server_id_hold, Duration::from_secs(DEFAULT_SERVER_ID_HOLD_S));
    assert_eq!(vip.reals[1].server_id, Some(vec![0x0a, 0x02]));

    let real = ["address = \"10.1.0.1\"\nserver_id = \"0a01\""];
    let cases: [(&str, &[&str], &str); 8] = [
        ("config_id = 7\nserver_id_len = 2\nnonce_len = 6", &real, "quic_lb.config_id: 7 is out of range 0 ..= 6"),
        (
            "config_id = 0\nserver_id_len = 0\nnonce_len = 6",
            &["address = \"10.1.0.1\"\nserver_id = \"\""],
            "quic_lb.server_id_len: 0 is out of range",
        ),
        ("config_id = 0\nserver_id_len = 2\nnonce_len = 3", &real, "quic_lb.nonce_len: 3 is below 4"),
        ("config_id = 0\nserver_id_len = 2\nnonce_len = 18", &real, "server_id_len + nonce_len is 20, at most 19"),
        ("config_id = 0\nserver_id_len = 2\nnonce_len = 6\ncid_len = 8", &real, "quic_lb.cid_len: 8 is out of range 9 ..= 20"),
        (base, &["address = \"10.1.0.1\""], "server_id: is missing"),
        (base, &["address = \"10.1.0.1\"\nserver_id = \"0a\""], "server_id: \"0a\" is 1 octets; server_id_len is 2"),
        (base, &[real[0], "address = \"10.1.0.2\"\nserver_id = \"0a01\""], "server_id: 0a01 is 10.1.0.1's too"),
    ];
    for (q, reals, want) in cases {
        let found = quic(q, reals).unwrap_err();
        assert!(found.iter().any(|p| p.contains(want)), "{q:?} {reals:?}: want ..{want}.., got {found:?}");
    }
    let tcp_vip = "[[vip]]\nname = \"t\"\naddress = \"10.99.0.4\"\nport = 443\nprotocol = \"tcp\"";
    let tcp = parse(&format!("{GOOD}\n{tcp_vip}\n[vip.quic_lb]\n{base}"), InterfaceCheck::OnThisHost).unwrap_err();
    assert!(tcp.problems().iter().any(|p| p.reason.contains("is for UDP VIPs")), "{tcp}");
    let stray = problems("address = \"10.1.0.1\"", "address = \"10.1.0.1\"\nserver_id = \"01\"");
    assert!(stray.iter().any(|p| p.reason.contains("is for a VIP with [vip.quic_lb]")), "{stray:?}");
}

#[test]
fn a_quic_lb_key_file_is_private_and_holds_sixteen_octets_in_hex() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("lb-quic-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    };
    let good = write("good", "8f95f09245765f80256934e50c66207f\n", 0o600);
    let keys = read_quic_keys([good.as_path()]).unwrap();
    assert_eq!(keys[&good][..2], [0x8f, 0x95]);
    let open = write("open", "8f95f09245765f80256934e50c66207f", 0o644);
    assert!(read_quic_keys([open.as_path()]).unwrap_err().to_string().contains("readable by others"));
    let short = write("short", "8f95f09245765f80256934e50c66207", 0o600);
    assert!(read_quic_keys([short.as_path()]).unwrap_err().to_string().contains("shorter than 32"));
    let not_hex = write("nothex", "zz95f09245765f80256934e50c66207f", 0o600);
    assert!(read_quic_keys([not_hex.as_path()]).unwrap_err().to_string().contains("16-octet key"));

    // A config naming it gets the key attached; without it read, the VIP is refused.
    let mut config = quic(
        &format!("config_id = 0\nserver_id_len = 2\nnonce_len = 6\nkey_file = \"{}\"", good.display()),
        &["address = \"10.1.0.1\"\nserver_id = \"0a01\""],
    )
    .unwrap();
    assert!(config.clone().attach_quic_keys(&QuicKeys::new()).is_err());
    config.attach_quic_keys(&keys).unwrap();
    assert_eq!(config.vips.last().unwrap().quic_lb.as_ref().unwrap().key.map(|k| k[0]), Some(0x8f));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adapt_takes_a_signal_and_bounded_settings() {
    let vip = |adapt: &str| {
        format!("{GOOD}\n[[vip]]\nname = \"a\"\naddress = \"10.99.0.5\"\nport = 80\nprotocol = \"tcp\"\n[vip.adapt]\n{adapt}\n[[vip.real]]\naddress = \"10.1.0.1\"\n")
    };
    let ok = parse(&vip("signal = \"latency\""), InterfaceCheck::OnThisHost).unwrap();
    let a = ok.vips.last().unwrap().adapt.unwrap();
    assert_eq!((a.floor, a.step, a.hysteresis, a.interval), (0.2, 0.25, 0.1, Duration::from_secs(2)));
    assert_eq!(a.signal, crate::adapt::Signal::Latency { slow_ratio: 2.0 });
    let problems = |adapt: &str| -> Vec<String> {
        parse(&vip(adapt), InterfaceCheck::OnThisHost)
            .err()
            .map(|e| e.problems().iter().map(|p| p.to_string()).collect())
            .unwrap_or_default()
    };
    let p = problems("signal = \"latency\"\nfloor = 0\nstep = 2\ninterval_ms = 10\nslow_ratio = 0.5");
    for want in ["adapt.floor: 0 is outside", "adapt.step: 2 is outside", "adapt.interval_ms: 10 is outside", "adapt.slow_ratio: 0.5"] {
        assert!(p.iter().any(|p| p.contains(want)), "{want}: {p:?}");
    }
    let p = problems("signal = \"load\"");
    assert!(p.iter().any(|p| p.contains("\"load\" is read from each real's http check")), "{p:?}");
    let p = problems("signal = \"cpu\"");
    assert!(p.iter().any(|p| p.contains("\"cpu\" is not \"latency\" or \"load\"")), "{p:?}");
}
