//! Nothing runs out: idle connections held by an unprivileged local user, unauthenticated reads
//! used as a lever, pin directories someone else made, and pinned maps of an older layout
//! (the real `lb` and `lb backend` in namespaces of the test's own).

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use lb_tests::{
    lbd::{http_request, metric, over_tcp_in, run_once, LbDaemon},
    require_root,
    topology::{backend_addr, connections_to_every_backend, who, Net},
};
use lb_userspace::dataplane::pins;

/// lb with two reals checked over HTTP at `lb backend`'s own endpoint every 100 ms, and the
/// admin API on loopback TCP as well as the socket.
fn config(extra: &str) -> String {
    format!(
        "conn_table_size = 1024\n[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [health]\nkind = \"http\"\nport = 9180\npath = \"/healthz\"\ninterval_ms = 100\ntimeout_ms = 80\nrise = 2\nfall = 2\n\
         [api]\nlisten = \"127.0.0.1:9101\"\n{extra}\
         [[vip]]\nname = \"web\"\naddress = \"10.99.0.1\"\nport = 8080\nprotocol = \"tcp\"\n\
         [[vip.real]]\naddress = \"{}\"\n[[vip.real]]\naddress = \"{}\"\n",
        backend_addr(0),
        backend_addr(1)
    )
}

/// Runs `hold_conns SECONDS COUNT ADDR...` in namespace `ns` as uid 65534 (nobody), in the
/// background; its output when joined.
fn hold_as_nobody(ns: &str, seconds: u64, count: usize, addrs: &[&str]) -> std::thread::JoinHandle<String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_hold_conns")]);
    cmd.arg(seconds.to_string()).arg(count.to_string()).args(addrs);
    std::thread::spawn(move || {
        let out = cmd.output().expect("hold_conns");
        assert!(out.status.success(), "hold_conns: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// The listener families of a /metrics text, one line per series.
fn listener_lines(metrics: &str) -> Vec<String> {
    metrics.lines().filter(|l| l.contains("listener_") && !l.starts_with('#')).map(str::to_owned).collect()
}

/// An unprivileged local user holds 5,000 idle connections to every TCP listener of `lb run`
/// (metrics, admin API) and of both `lb backend`s (whose /healthz is lb's health check), with
/// lb started under systemd's soft limit of 1,024 descriptors. Health checks, the VIP's
/// servability (what BGP announces) and root's scrapes carry on; no connection moves.
#[test]
fn idle_connections_to_every_listener_starve_nothing() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let _servers = net.servers();
    // systemd's soft limit; the hard limit is this machine's (raising it needs CAP_SYS_RESOURCE).
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to write.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let wrapper: Vec<String> = vec!["prlimit".into(), format!("--nofile=1024:{}", limit.rlim_max)];
    let d = LbDaemon::start_wrapped(&net.lb, &config(""), &wrapper);
    assert!(d.log().contains(&format!("descriptors={}", limit.rlim_max)), "lb raised its soft limit:\n{}", d.log());
    let up = |d: &LbDaemon| d.status()[0].reals.iter().all(|r| r.up);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up(&d) {
        assert!(Instant::now() < deadline, "reals never came up:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut open = connections_to_every_backend(&net, 2);

    const SECONDS: u64 = 14; // longer than the 10 s request timeout: idle ones are closed and come back
    const COUNT: usize = 5_000;
    let attackers = [
        hold_as_nobody(&net.lb.name, SECONDS, COUNT, &["127.0.0.1:9100", "127.0.0.1:9101"]),
        hold_as_nobody(&net.backends[0].name, SECONDS, COUNT, &["127.0.0.1:9180"]),
        hold_as_nobody(&net.backends[1].name, SECONDS, COUNT, &["127.0.0.1:9180"]),
    ];
    let started = Instant::now();
    let (mut scrapes, mut slowest) = (0, Duration::ZERO);
    std::thread::sleep(Duration::from_secs(2));
    while started.elapsed() < Duration::from_secs(SECONDS - 1) {
        let status = d.status();
        assert!(status[0].reals.iter().all(|r| r.up), "a real went down at {:?}: {:?}\n{}", started.elapsed(), status[0].reals, d.log());
        assert!(status[0].servable(), "the VIP stays servable (announced with BGP)");
        let t = Instant::now();
        let scrape = over_tcp_in(&net.lb.name, "127.0.0.1:9100", &http_request("GET", "/metrics", &[], ""));
        let took = t.elapsed();
        assert!(matches!(scrape, Some((200, _))), "root's scrape failed at {:?}: {scrape:?}", started.elapsed());
        slowest = slowest.max(took);
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let held: Vec<String> = attackers.into_iter().map(|a| a.join().expect("attacker")).collect();
    net.client.run(|| {
        for (b, conn) in open.iter_mut().enumerate() {
            assert_eq!(who(&conn.exchange("still here?").expect("connection kept")), b, "no flow moved");
        }
    });
    let lb_metrics = d.metrics();
    let backend_metrics = net.decaps[0].metrics();
    println!("nobody held:\n  {}", held.join("  "));
    println!("{scrapes} scrapes by root during the hold, slowest {slowest:?}");
    println!("lb's listeners:\n  {}", listener_lines(&lb_metrics).join("\n  "));
    println!("backend 0's listener:\n  {}", listener_lines(&backend_metrics).join("\n  "));
    assert!(slowest < Duration::from_secs(2), "a scrape took {slowest:?}");
    for (text, series) in [
        (&lb_metrics, "lb_listener_events_total{listener=\"metrics\",event=\"evicted\"}"),
        (&lb_metrics, "lb_listener_events_total{listener=\"api_tcp\",event=\"evicted\"}"),
        (&backend_metrics, "lb_backend_listener_events_total{listener=\"endpoint\",event=\"evicted\"}"),
    ] {
        assert!(metric(text, series) > 1_000.0, "the cap made room: {series}");
    }
    assert!(metric(&lb_metrics, "lb_listener_connections{listener=\"metrics\"}") <= 256.0);
}

/// 600 concurrent `GET /doctor?window_ms=30000` over the loopback listener (which needs no
/// token to read) take `doctor_calls` (2) blocking threads; the rest are answered 429 at once,
/// and root's scrape and `lb flows` stay fast. A token-less change pipelined after a GET on one
/// connection gets its 401 and changes nothing.
#[test]
fn unauthenticated_reads_are_bounded_and_a_pipelined_change_needs_the_token() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(2);
    let d = LbDaemon::start(&net.lb, &config(""));
    let path = format!("/run/netns/{}", net.lb.name);
    let doctors: Vec<_> = (0..600)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                lb_tests::netns::enter_path(&path);
                let mut c = std::net::TcpStream::connect("127.0.0.1:9101").ok()?;
                c.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
                c.write_all(&http_request("GET", "/doctor?window_ms=30000", &[], "")).ok()?;
                let mut head = [0u8; 12];
                c.read_exact(&mut head).ok()?;
                String::from_utf8_lossy(&head[9..12]).parse::<u16>().ok()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let scrape = over_tcp_in(&net.lb.name, "127.0.0.1:9100", &http_request("GET", "/metrics", &[], ""));
    let scrape_took = t.elapsed();
    let t = Instant::now();
    let flows = d.cli(&["flows", "--limit", "1"]);
    let flows_took = t.elapsed();
    assert!(matches!(scrape, Some((200, _))) && flows.status.success());
    let too_many = d.cli(&["flows", "--limit", "100001"]);
    let said = String::from_utf8_lossy(&too_many.stderr);
    assert!(!too_many.status.success() && said.contains("at most 100000 entries") && said.contains("flows_listed"), "{said}");
    // The two sampling doctors finish after their window; the rest were answered already.
    let answers: Vec<Option<u16>> = doctors.into_iter().map(|t| t.join().expect("doctor")).collect();
    let refused = answers.iter().filter(|a| **a == Some(429)).count();
    let sampled = answers.iter().filter(|a| **a == Some(200)).count();
    println!("600 doctors: {sampled} sampled, {refused} refused (429); scrape {scrape_took:?}, lb flows --limit 1 {flows_took:?}");
    assert_eq!((sampled, refused), (2, 598), "{answers:?}");
    assert!(scrape_took < Duration::from_secs(1) && flows_took < Duration::from_secs(2));
    assert_eq!(metric(&d.metrics(), "lb_doctor_refused_total"), 598.0);

    // Pipelined (HTTP/1.1): GET /status, then a token-less POST on the same connection.
    let weight_before = d.status()[0].reals[0].weight;
    let body = format!("{{\"vip\":\"web\",\"real\":\"{}\"}}", backend_addr(0));
    let both = format!(
        "GET /status HTTP/1.1\r\nHost: lb\r\n\r\nPOST /real/drain HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let text = std::thread::spawn(move || {
        lb_tests::netns::enter_path(&path);
        let mut c = std::net::TcpStream::connect("127.0.0.1:9101").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(both.as_bytes()).unwrap();
        let mut reply = String::new();
        let _ = c.read_to_string(&mut reply);
        reply
    })
    .join()
    .unwrap();
    let statuses: Vec<&str> = text.match_indices("HTTP/1.1 ").map(|(i, _)| &text[i + 9..i + 12]).collect();
    assert_eq!(statuses, ["200", "401"], "{text}");
    assert_eq!(d.status()[0].reals[0].weight, weight_before, "nothing changed");
}

/// `lb run` refuses a pin directory it did not make for itself: owned by another user, a
/// symlink, or writable by others; nothing is loaded or attached.
#[test]
fn pin_directories_someone_else_made_are_refused() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(1);
    let dir = pins::balancer(&format!("once{}", std::process::id()));
    let elsewhere = Path::new("/sys/fs/bpf").join(format!("lbt-elsewhere-{}", std::process::id()));
    let body = "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n[health]\nkind = \"none\"\n";
    type Plant<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Plant, &str)> = vec![
        (
            "owned by nobody",
            Box::new(|| {
                std::fs::create_dir(&dir).unwrap();
                std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            }),
            "owned by uid 65534",
        ),
        (
            "a symlink",
            Box::new(|| {
                std::fs::create_dir(&elsewhere).unwrap();
                std::os::unix::fs::symlink(&elsewhere, &dir).unwrap();
            }),
            "symbolic link",
        ),
        (
            "writable by others",
            Box::new(|| {
                std::fs::create_dir(&dir).unwrap();
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            }),
            "mode 777",
        ),
    ];
    for (what, plant, says) in cases {
        plant();
        let out = run_once(&net.lb, body);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let untouched = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) == 0 && !elsewhere.join("maps").exists();
        let attached = net.lb.ip(&["link", "show", "dev", "lb0"]).contains("xdp");
        let _ = std::fs::remove_file(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&elsewhere);
        assert!(!out.status.success() && stderr.contains("refusing the pin directory") && stderr.contains(says), "{what}: {stderr}");
        assert!(untouched && !attached, "{what}: nothing pinned or attached");
    }

    // `lb backend run` the same: its pin directory owned by nobody.
    let instance = format!("bonce{}", std::process::id());
    let dir = pins::backend(&instance);
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let state = std::env::temp_dir().join(format!("lbt-{instance}"));
    std::fs::create_dir_all(&state).unwrap();
    let config = state.join("backend.toml");
    std::fs::write(
        &config,
        format!(
            "instance = \"{instance}\"\n[backend]\ninterface = [{{ name = \"b0\" }}]\naddresses = [\"{}\"]\nvips = [\"10.99.0.1\"]\n",
            backend_addr(0)
        ),
    )
    .unwrap();
    // nsenter, not `ip netns exec`, which mounts a /sys without bpffs.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", net.backends[0].name))
        .arg(lb_tests::lbd::lb_bin())
        .args(["backend", "run", "--config"])
        .arg(&config)
        .env("LB_STATE_DIR", &state)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let untouched = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0) == 0;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);
    assert!(!out.status.success() && stderr.contains("refusing the pin directory") && stderr.contains("owned by uid 65534"), "{stderr}");
    assert!(untouched, "lb backend pinned nothing");
}

/// A map made and pinned by hand, as an older lb would have left it.
fn pin_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    #[repr(C)]
    #[derive(Default)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        rest: [u32; 20],
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = Create { map_type, key_size, value_size, max_entries, ..Default::default() };
    // SAFETY: BPF_MAP_CREATE (0) with an attr of the kernel's layout (zeroed past the sizes).
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &attr as *const Create, std::mem::size_of::<Create>()) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = Pin { pathname: c.as_ptr() as u64, bpf_fd: fd as u32, file_flags: 0 };
    // SAFETY: BPF_OBJ_PIN (6); the path outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, &pin as *const Pin, std::mem::size_of::<Pin>()) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {}", path.display(), std::io::Error::last_os_error());
    // SAFETY: a new descriptor this function owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// Upgrading over pins of an older layout: a counter list three shorter (STATS) is recreated
/// and the metrics and doctor work, with the connection table's entry kept; a connection table
/// whose entries have another size is refused, naming what to do, and nothing is changed.
#[test]
fn pinned_maps_of_an_older_layout_are_recreated_or_refused() {
    require_root!();
    let _serial = lb_tests::serial();
    use lb_common::{maps, stats::Counter, ConnEntry, FlowKey};
    let net = Net::new(2);
    let dir = pins::balancer(&LbDaemon::instance_for(&net.lb));
    std::fs::create_dir_all(pins::maps_dir(&dir)).unwrap();
    let _stats = pin_map(&pins::map(&dir, maps::STATS), BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, Counter::COUNT - 3);
    let key_size = std::mem::size_of::<FlowKey>() as u32;
    let _conns = pin_map(&pins::map(&dir, maps::CONNS), BPF_MAP_TYPE_LRU_HASH, key_size, std::mem::size_of::<ConnEntry>() as u32, 1024);
    let mut conns: aya::maps::HashMap<_, FlowKey, ConnEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(aya::maps::MapData::from_pin(pins::map(&dir, maps::CONNS)).unwrap()))
            .unwrap();
    let key = FlowKey::new("10.10.1.2".parse().unwrap(), 40_000, "10.99.0.1".parse().unwrap(), 8080, 6);
    conns.insert(key, ConnEntry::new(1, 7, 0, 1, 0), 0).unwrap();

    let mut d = LbDaemon::start(&net.lb, &config(""));
    assert!(d.log().contains("pinned map of another layout recreated") && d.log().contains("STATS"), "{}", d.log());
    let metrics = d.metrics();
    assert!(metrics.contains("lb_xdp_packets_total{verdict=\"pass\"}"), "the counters are back");
    let doctor = d.cli(&["doctor", "--window-ms", "100", "--json"]);
    assert!(String::from_utf8_lossy(&doctor.stdout).contains("findings"), "doctor answers: {doctor:?}");
    let flows = String::from_utf8_lossy(&d.cli(&["flows", "--limit", "10"]).stdout).into_owned();
    assert!(flows.contains("10.10.1.2:40000"), "the connection table was kept: {flows}");
    d.terminate();

    // A connection table of another entry size: refused before anything changes.
    std::fs::remove_file(pins::map(&dir, maps::CONNS)).unwrap();
    let _odd = pin_map(&pins::map(&dir, maps::CONNS), BPF_MAP_TYPE_LRU_HASH, key_size, 12, 1024);
    let stats_before = std::fs::metadata(pins::map(&dir, maps::STATS)).unwrap().modified().unwrap();
    let out = d.run_expecting_failure();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("map CONNS") && stderr.contains("lb stop"), "{stderr}");
    assert_eq!(std::fs::metadata(pins::map(&dir, maps::STATS)).unwrap().modified().unwrap(), stats_before, "nothing recreated");
    assert!(std::fs::metadata(pins::map(&dir, maps::CONNS)).is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

/// strace -f's lines as (thread, whole call): a call another thread interrupted is printed as
/// `NAME(ARGS <unfinished ...>` and later `<... NAME resumed>REST`; the two are joined here.
fn whole_calls(trace: &str) -> Vec<(String, String)> {
    let mut pending: std::collections::HashMap<&str, (usize, &str)> = std::collections::HashMap::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for (pid, call) in trace.lines().filter_map(|l| l.split_once(' ')).map(|(pid, call)| (pid, call.trim_start())) {
        if let Some(start) = call.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (calls.len(), start));
            calls.push((pid.to_owned(), start.to_owned()));
        } else if let Some(rest) = call.strip_prefix("<... ").and_then(|c| c.split_once(" resumed>")).map(|(_, rest)| rest) {
            if let Some((at, start)) = pending.remove(pid) {
                calls[at].1 = format!("{start}{rest}");
            }
        } else {
            calls.push((pid.to_owned(), call.to_owned()));
        }
    }
    calls
}

/// Whether `trace` (strace -f output) shows `file` written durably: the temp file beside it
/// opened, fsynced and renamed over it, then its folder opened and fsynced, by one thread.
fn written_durably(trace: &str, file: &Path) -> bool {
    let (file, tmp) = (file.display().to_string(), format!("{}.tmp", file.display()));
    let dir = Path::new(&file).parent().unwrap().display().to_string();
    let lines = whole_calls(trace);
    let lines: Vec<(&str, &str)> = lines.iter().map(|(pid, call)| (pid.as_str(), call.as_str())).collect();
    let fd_of = |call: &str| call.rsplit("= ").next().and_then(|fd| fd.trim().parse::<i32>().ok());
    lines.iter().enumerate().any(|(i, (pid, call))| {
        if !call.starts_with(&format!("rename(\"{tmp}\", \"{file}\")")) && !call.contains(&format!("\"{tmp}\", AT_FDCWD, \"{file}\"")) {
            return false;
        }
        let before: Vec<&str> = lines[..i].iter().filter(|(p, _)| p == pid).map(|(_, c)| *c).collect();
        let after: Vec<&str> = lines[i + 1..].iter().filter(|(p, _)| p == pid).map(|(_, c)| *c).collect();
        let tmp_fd = before.iter().rev().find(|c| c.starts_with("openat(") && c.contains(&format!("\"{tmp}\""))).and_then(|c| fd_of(c));
        let synced = |calls: &[&str], fd: Option<i32>| fd.is_some_and(|fd| calls.iter().any(|c| c.starts_with(&format!("fsync({fd}"))));
        let dir_fd = after.iter().find(|c| c.starts_with("openat(") && c.contains(&format!("\"{dir}\""))).and_then(|c| fd_of(c));
        synced(&before, tmp_fd) && synced(&after, dir_fd)
    })
}

/// Waits (up to 15 s) until the strace output at `trace` mentions `what`.
fn wait_for_trace(trace: &Path, what: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(trace).unwrap_or_default().contains(what) {
        assert!(start.elapsed() < Duration::from_secs(15), "strace never saw {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The journal and the BIRD include file are written so that a power cut leaves the old file or
/// the new one, whole (seen in lb's own system calls).
#[test]
fn state_files_are_written_durably() {
    require_root!();
    let _serial = lb_tests::serial();
    let net = Net::new(1);
    let include = std::env::temp_dir().join(format!("lbt-durable-{}", std::process::id())).join("vips.conf");
    let trace = include.with_file_name("strace.txt");
    std::fs::create_dir_all(include.parent().unwrap()).unwrap();
    let bgp = format!("[bgp]\nbird_socket = \"/nonexistent/bird.ctl\"\ninclude_file = \"{}\"\n", include.display());
    let mut d = LbDaemon::start(&net.lb, &config(&bgp));
    // strace attached to the running lb, every thread: the drain's journal write, and the
    // include file lb rewrites while it retries the BIRD that is not there (backoff up to 4 s).
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=openat,fsync,rename,renameat,renameat2", "-p", &d.pid().to_string(), "-o"])
        .arg(&trace)
        .spawn()
        .expect("strace");
    // Attached once the include file's next rewrite (a retry, at most 4 s apart) is in the trace.
    wait_for_trace(&trace, "vips.conf.tmp");
    let drained = d.cli(&["real", "drain", "web", &backend_addr(0)]);
    assert!(drained.status.success(), "{drained:?}");
    std::thread::sleep(Duration::from_secs(5));
    lb_tests::netns::sh(&["kill", "-INT", &strace.id().to_string()]);
    strace.wait().unwrap();
    d.terminate();
    let text = std::fs::read_to_string(&trace).unwrap();
    let journal = d.dir.join(format!("{}.json", d.instance));
    assert!(written_durably(&text, &journal), "the journal {}:\n{}", journal.display(), &text[text.len().saturating_sub(4000)..]);
    assert!(written_durably(&text, &include), "the include file {}", include.display());
    let _ = std::fs::remove_dir_all(include.parent().unwrap());
}

/// The reader of strace's output follows a call another thread interrupted (as in a CI run
/// where the journal's rename and the include file's overlapped).
#[test]
fn the_strace_reader_joins_interrupted_calls() {
    let trace = "\
13766 rename(\"/x/vips.conf.tmp\", \"/x/vips.conf\" <unfinished ...>
13771 openat(AT_FDCWD, \"/s/j.json.tmp\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 53
13771 fsync(53)                         = 0
13771 rename(\"/s/j.json.tmp\", \"/s/j.json\" <unfinished ...>
13766 <... rename resumed>)             = 0
13771 <... rename resumed>)             = 0
13771 openat(AT_FDCWD, \"/s\", O_RDONLY|O_CLOEXEC <unfinished ...>
13766 openat(AT_FDCWD, \"/x\", O_RDONLY|O_CLOEXEC) = 54
13771 <... openat resumed>)             = 55
13771 fsync(55 <unfinished ...>
13766 fsync(54)                         = 0
13771 <... fsync resumed>)              = 0
";
    assert!(written_durably(trace, Path::new("/s/j.json")));
    assert!(!written_durably(trace, Path::new("/x/vips.conf")), "its temp file was never opened and fsynced here");
    assert!(!written_durably(&trace.replace("13771 fsync(53)", "13771 close(53)"), Path::new("/s/j.json")), "no fsync before the rename");
}
