//! One site in network namespaces: a client, a router, the LB node and N backends over veth.
//! The balancer runs natively on the LB node's NIC and sends tunnelled packets back to the router
//! (XDP_TX); each backend strips the tunnel with `lb_decap`, holds the VIPs on loopback and
//! answers the client directly (DSR): the LB node has forwarding off and no route to the client.
//! Every link is dual stack: 10.10.n.x/24 and fd00:10:n::x/64.
//!
//! ```text
//! client 10.10.1.2 -- 10.10.1.1 router 10.10.2.1 -- 10.10.2.2 lb (XDP lb_xdp)
//!                               router 10.10.3.1 -- 10.10.3.2 backend 0 (XDP lb_decap, VIPs on lo)
//!                               router 10.10.4.1 -- 10.10.4.2 backend 1 ...
//! ```

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use lb_common::programs;
use lb_userspace::{
    config::AttachMode,
    dataplane::{Dataplane, LoadOptions},
};

use crate::{
    backend::BackendDaemon,
    fixture::{Balancer, Vip, TEST_RING_SIZE},
    netns::{veth, End, NetNs},
    packet::ip,
};

pub const VIP: &str = "10.99.0.1";
/// The IPv6 VIP, held by the backends beside the IPv4 one.
pub const VIP6: &str = "fd00:99::1";
pub const PORT: u16 = 8080;
pub const CLIENT: &str = "10.10.1.2";
pub const CLIENT6: &str = "fd00:10:1::2";

/// The namespaces and links, the router's pass stub and the backends' decapsulators: everything
/// but the balancer.
pub struct Net {
    pub client: NetNs,
    pub router: NetNs,
    pub lb: NetNs,
    pub backends: Vec<NetNs>,
    /// Kept alive: the router's pass stub and each backend's `lb backend run`.
    pub router_xdp: Dataplane,
    pub decaps: Vec<BackendDaemon>,
}

/// A `Net` with the test fixture's balancer attached on the LB node, balancing one VIP.
pub struct Site {
    pub net: Net,
    pub balancer: Balancer,
    pub vip: Vip,
    /// The VIP's address (`VIP` or `VIP6`).
    pub vip_ip: IpAddr,
}

/// Health checks of `lb_config`: every 100 ms, down after 2 failures in a row.
pub const CHECK_INTERVAL_MS: u64 = 100;
pub const CHECK_FALL: u64 = 2;

/// A config for the real `lb` on a `Net`'s LB node: VIP web (10.99.0.1:8080, TCP) over the
/// IPv4 addresses of the first `backends` backends, checked by TCP connect every
/// `CHECK_INTERVAL_MS`.
pub fn lb_config(backends: usize) -> String {
    let mut c = format!(
        "[[interface]]\nname = \"lb0\"\n[forwarding]\nnext_hop_mac = \"02:00:00:00:00:03\"\n\
         [health]\ninterval_ms = {CHECK_INTERVAL_MS}\ntimeout_ms = 80\nrise = 2\nfall = {CHECK_FALL}\n\
         [[vip]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\n"
    );
    for i in 0..backends {
        c += &format!("[[vip.real]]\naddress = \"{}\"\n", backend_addr(i));
    }
    c
}

/// IPv4 address of backend `i`.
pub fn backend_addr(i: usize) -> String {
    format!("10.10.{}.2", 3 + i)
}

/// IPv6 address of backend `i`.
pub fn backend_addr6(i: usize) -> String {
    format!("fd00:10:{}::2", 3 + i)
}

/// Adds a default route of each family to a namespace.
pub fn default_routes(ns: &NetNs, via4: &str, via6: &str) {
    ns.ip(&["route", "add", "default", "via", via4]);
    ns.ip(&["-6", "route", "add", "default", "via", via6]);
}

impl Net {
    pub fn new(backends: usize) -> Self {
        let client = NetNs::new("client", false);
        let router = NetNs::new("router", true);
        let lb = NetNs::new("lb", false);
        veth(
            End { ns: &client, dev: "c0", mac: "02:00:00:00:00:01", addrs: &["10.10.1.2/24", "fd00:10:1::2/64"] },
            End { ns: &router, dev: "r-c", mac: "02:00:00:00:01:01", addrs: &["10.10.1.1/24", "fd00:10:1::1/64"] },
        );
        // MACs as the packet fixture names them: LB_MAC on the LB, ROUTER_MAC as its next hop.
        veth(
            End { ns: &router, dev: "r-lb", mac: "02:00:00:00:00:03", addrs: &["10.10.2.1/24", "fd00:10:2::1/64"] },
            End { ns: &lb, dev: "lb0", mac: "02:00:00:00:00:02", addrs: &["10.10.2.2/24", "fd00:10:2::2/64"] },
        );
        default_routes(&client, "10.10.1.1", "fd00:10:1::1");
        default_routes(&lb, "10.10.2.1", "fd00:10:2::1"); // health checks reach the backends
        router.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.10.2.2"]);
        router.ip(&["-6", "route", "add", &format!("{VIP6}/128"), "via", "fd00:10:2::2"]);

        let backend_ns: Vec<NetNs> = (0..backends)
            .map(|i| {
                let ns = NetNs::new(&format!("b{i}"), false);
                let (rdev, rmac) = (format!("r-b{i}"), format!("02:00:00:00:03:{i:02x}"));
                let (raddr, raddr6) = (format!("10.10.{}.1/24", 3 + i), format!("fd00:10:{}::1/64", 3 + i));
                let (bmac, baddr, baddr6) =
                    (format!("02:00:00:00:04:{i:02x}"), format!("{}/24", backend_addr(i)), format!("{}/64", backend_addr6(i)));
                veth(
                    End { ns: &router, dev: &rdev, mac: &rmac, addrs: &[&raddr, &raddr6] },
                    End { ns: &ns, dev: "b0", mac: &bmac, addrs: &[&baddr, &baddr6] },
                );
                default_routes(&ns, &format!("10.10.{}.1", 3 + i), &format!("fd00:10:{}::1", 3 + i));
                ns
            })
            .collect();

        // XDP_TX frames from a veth are only received by a peer that runs XDP itself.
        let router_xdp = router.run(|| {
            let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16, ring_slots: 2 }).expect("load");
            dp.attach(programs::PASS, "r-lb", AttachMode::Native).expect("attach pass stub");
            // And from the backends, which send the second chance's forwards back with XDP_TX.
            for i in 0..backends {
                dp.attach(programs::PASS, &format!("r-b{i}"), AttachMode::Native).expect("attach pass stub");
            }
            dp
        });
        let decaps =
            backend_ns.iter().enumerate().map(|(i, ns)| BackendDaemon::start(ns, &[&backend_addr(i), &backend_addr6(i)])).collect();
        Self { client, router, lb, backends: backend_ns, router_xdp, decaps }
    }

    /// Starts a line server in every backend (stoppable one by one, stopped on drop).
    pub fn servers(&self) -> Servers {
        Servers::start(&self.backends)
    }
}

impl Site {
    /// `backends` backends behind the IPv4 VIP, reached over IPIP.
    pub fn new(backends: usize) -> Self {
        Self::serving(backends, VIP, false)
    }

    /// `backends` backends behind `vip` (`VIP` or `VIP6`), reached at their IPv6 addresses
    /// (IPv6-in-IPv6, IPv4-in-IPv6) when `reals_ipv6`, else at their IPv4 ones.
    pub fn serving(backends: usize, vip: &str, reals_ipv6: bool) -> Self {
        let net = Net::new(backends);
        let reals: Vec<String> = (0..backends).map(|i| if reals_ipv6 { backend_addr6(i) } else { backend_addr(i) }).collect();
        let (balancer, vip_meta) = net.lb.run(|| {
            let mut b = Balancer::new();
            let weights: Vec<(&str, u32)> = reals.iter().map(|r| (r.as_str(), 1)).collect();
            let vip = b.add_vip(vip, PORT, 6, 0, TEST_RING_SIZE, &weights);
            b.dp_mut().attach(programs::BALANCER, "lb0", AttachMode::Native).expect("attach balancer");
            (b, vip)
        });
        Self { net, balancer, vip: vip_meta, vip_ip: ip(vip) }
    }

    /// The IPv4 VIP's socket address.
    pub fn vip_addr() -> SocketAddr {
        SocketAddr::new(ip(VIP), PORT)
    }

    /// The IPv6 VIP's socket address.
    pub fn vip6_addr() -> SocketAddr {
        SocketAddr::new(ip(VIP6), PORT)
    }

    /// This site's VIP's socket address.
    pub fn service(&self) -> SocketAddr {
        SocketAddr::new(self.vip_ip, PORT)
    }

    /// Runs the backends' servers while `f` runs in the client's namespace.
    pub fn with_servers<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let _servers = self.net.servers();
        self.net.client.run(f)
    }
}

/// Line servers on [::]:PORT (both families) in each backend: the VIPs (on lo) and the backend's
/// own addresses (for health checks) all answer. Each line is answered with the backend's name.
pub struct Servers {
    stops: Vec<Arc<AtomicBool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(backends: &[NetNs]) -> Self {
        Self::named(backends, "")
    }

    /// Like `start`, answering as "{prefix}backend {i}".
    pub fn named(backends: &[NetNs], prefix: &str) -> Self {
        let mut stops = Vec::new();
        let mut threads = Vec::new();
        for (i, ns) in backends.iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = std::sync::mpsc::channel();
            let ns_path = format!("/run/netns/{}", ns.name);
            let thread_stop = stop.clone();
            let name = format!("{prefix}backend {i}");
            threads.push(std::thread::spawn(move || {
                crate::netns::enter_path(&ns_path);
                // [::] takes both families (the namespaces keep net.ipv6.bindv6only = 0).
                let listener = TcpListener::bind(SocketAddr::new("::".parse().unwrap(), PORT)).expect("bind backend");
                tx.send(()).unwrap();
                serve(listener, &name, &thread_stop, Duration::from_secs(300));
            }));
            rx.recv_timeout(Duration::from_secs(5)).expect("backend listening");
            stops.push(stop);
        }
        Self { stops, threads }
    }

    /// Stops backend `i`: its listener closes (new connections are refused); connections it
    /// already has are closed too.
    pub fn stop(&self, i: usize) {
        self.stops[i].store(true, Ordering::Relaxed);
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for s in &self.stops {
            s.store(true, Ordering::Relaxed);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One answered request: who answered, and the client's source port.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub local_port: u16,
}

/// Client side: one connection, one request line, one answer line.
pub fn ask(vip: SocketAddr, request: &str) -> std::io::Result<Answer> {
    let conn = TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
    let mut line = LineConn::new(conn)?;
    let local_port = line.local_port;
    let text = line.exchange(request)?;
    Ok(Answer { text, local_port })
}

/// An HTTP/1.0 GET to the VIP from source address `from` (the client's namespace holds many);
/// the answer is the body ("site A backend 2 answered GET /path from 10.10.1.7").
pub fn http_get(vip: SocketAddr, from: IpAddr, path: &str) -> std::io::Result<Answer> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(vip), socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&vip.into(), Duration::from_secs(3))?;
    let mut conn: TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let local_port = conn.local_addr()?.port();
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: {vip}\r\n\r\n").as_bytes())?;
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut conn, &mut reply)?;
    let (head, body) = reply.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("not HTTP: {reply:?}")))?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("status: {head}")));
    }
    Ok(Answer { text: body.to_owned(), local_port })
}

/// A client connection that exchanges lines (also kept open for long-lived tests).
pub struct LineConn {
    reader: BufReader<TcpStream>,
    pub local_port: u16,
}

impl LineConn {
    pub fn new(conn: TcpStream) -> std::io::Result<Self> {
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let local_port = conn.local_addr()?.port();
        Ok(Self { reader: BufReader::new(conn), local_port })
    }

    pub fn connect(vip: SocketAddr) -> std::io::Result<Self> {
        Self::new(TcpStream::connect_timeout(&vip, Duration::from_secs(3))?)
    }

    /// Sends one line, returns the answer line.
    pub fn exchange(&mut self, request: &str) -> std::io::Result<String> {
        self.reader.get_mut().write_all(format!("{request}\n").as_bytes())?;
        let mut text = String::new();
        if self.reader.read_line(&mut text)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        Ok(text)
    }
}

/// Backend side: answers each line of each connection with `name`, the line and the client
/// address (a line starting "UPLOAD " with its size instead), until `stop` is set or `limit`
/// passes.
pub fn serve(listener: TcpListener, name: &str, stop: &AtomicBool, limit: Duration) {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + limit;
    std::thread::scope(|s| {
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((conn, peer)) => {
                    s.spawn(move || answer_lines(conn, peer, name, stop));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => panic!("accept: {e}"),
            }
        }
        drop(listener);
    });
}

fn answer_lines(conn: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) if line.starts_with("GET ") => {
                // HTTP/1.0: skip the headers, answer, close.
                let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim() != "" {
                    header.clear();
                }
                let body = format!("{name} answered GET {target} from {}\n", peer.ip().to_canonical());
                let reply = format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = reader.get_mut().write_all(reply.as_bytes());
                return;
            }
            Ok(_) if line.starts_with("UPLOAD ") => {
                // A bulk upload: answered with its size rather than echoed.
                let reply = format!("{name} received {} bytes from {}\n", line.len(), peer.ip().to_canonical());
                if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Ok(_) => {
                let reply = format!("{name} answered {} from {}\n", line.trim(), peer.ip().to_canonical());
                if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                    return;
                }
                line.clear();
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// The backend Maglev picks for a client connection from `client:port` to the site's VIP.
pub fn expected_backend(site: &Site, client: &str, port: u16) -> IpAddr {
    let frame = crate::packet::Frame::tcp(client, port, &site.vip_ip.to_string(), PORT);
    site.balancer.expected_real(&site.vip, &frame)
}

/// Which backend answered.
pub fn who(answer: &str) -> usize {
    answer
        .strip_prefix("backend ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("odd answer {answer:?}"))
}

/// Opens one long-lived connection per backend (retrying until each backend has one).
pub fn connections_to_every_backend(net: &Net, backends: usize) -> Vec<LineConn> {
    let mut conns: Vec<Option<LineConn>> = (0..backends).map(|_| None).collect();
    net.client.run(|| {
        for _ in 0..200 {
            let mut c = LineConn::connect(Site::vip_addr()).expect("connect");
            let b = who(&c.exchange("hello").expect("first exchange"));
            if conns[b].is_none() {
                conns[b] = Some(c);
            }
            if conns.iter().all(Option::is_some) {
                break;
            }
        }
    });
    conns.into_iter().map(|c| c.expect("a connection to every backend")).collect()
}
