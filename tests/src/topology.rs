//! One site in network namespaces: a client, a router, the LB node and N backends over veth.
//! The balancer runs natively on the LB node's NIC and sends tunnelled packets back to the router
//! (XDP_TX); each backend strips the tunnel with `lb_decap`, holds the VIP on loopback and answers
//! the client directly (DSR): the LB node has forwarding off and no route to the client.
//!
//! ```text
//! client 10.10.1.2 -- 10.10.1.1 router 10.10.2.1 -- 10.10.2.2 lb (XDP lb_xdp)
//!                               router 10.10.3.1 -- 10.10.3.2 backend 0 (XDP lb_decap, VIP on lo)
//!                               router 10.10.4.1 -- 10.10.4.2 backend 1 ...
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_common::programs;
use lb_userspace::dataplane::{AttachMode, Dataplane, LoadOptions};

use crate::{
    fixture::{Balancer, Vip, TEST_RING_SIZE},
    netns::{veth, End, NetNs},
    packet::ip,
};

pub const VIP: &str = "10.99.0.1";
pub const PORT: u16 = 8080;
pub const CLIENT: &str = "10.10.1.2";

pub struct Site {
    pub client: NetNs,
    pub router: NetNs,
    pub lb: NetNs,
    pub backends: Vec<NetNs>,
    /// The balancer attached to the LB node's NIC.
    pub balancer: Balancer,
    pub vip: Vip,
    /// Kept alive: the router's pass stub and each backend's decapsulator.
    pub router_xdp: Dataplane,
    pub decaps: Vec<Dataplane>,
}

/// Address of backend `i`.
pub fn backend_addr(i: usize) -> String {
    format!("10.10.{}.2", 3 + i)
}

impl Site {
    pub fn new(backends: usize) -> Self {
        let client = NetNs::new("client", false);
        let router = NetNs::new("router", true);
        let lb = NetNs::new("lb", false);
        veth(
            End { ns: &client, dev: "c0", mac: "02:00:00:00:00:01", addr: "10.10.1.2/24" },
            End { ns: &router, dev: "r-c", mac: "02:00:00:00:01:01", addr: "10.10.1.1/24" },
        );
        // MACs as the packet fixture names them: LB_MAC on the LB, ROUTER_MAC as its next hop.
        veth(
            End { ns: &router, dev: "r-lb", mac: "02:00:00:00:00:03", addr: "10.10.2.1/24" },
            End { ns: &lb, dev: "lb0", mac: "02:00:00:00:00:02", addr: "10.10.2.2/24" },
        );
        client.ip(&["route", "add", "default", "via", "10.10.1.1"]);
        router.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.10.2.2"]);

        let backend_ns: Vec<NetNs> = (0..backends)
            .map(|i| {
                let ns = NetNs::new(&format!("b{i}"), false);
                let (rdev, rmac, raddr) = (format!("r-b{i}"), format!("02:00:00:00:03:{i:02x}"), format!("10.10.{}.1/24", 3 + i));
                let (bmac, baddr) = (format!("02:00:00:00:04:{i:02x}"), format!("{}/24", backend_addr(i)));
                veth(
                    End { ns: &router, dev: &rdev, mac: &rmac, addr: &raddr },
                    End { ns: &ns, dev: "b0", mac: &bmac, addr: &baddr },
                );
                ns.ip(&["route", "add", "default", "via", &format!("10.10.{}.1", 3 + i)]);
                ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
                ns
            })
            .collect();

        let reals: Vec<String> = (0..backends).map(backend_addr).collect();
        let (balancer, vip) = lb.run(|| {
            let mut b = Balancer::new();
            let weights: Vec<(&str, u32)> = reals.iter().map(|r| (r.as_str(), 1)).collect();
            let vip = b.add_vip(VIP, PORT, 6, 0, TEST_RING_SIZE, &weights);
            b.dp.attach(programs::BALANCER, "lb0", AttachMode::Native).expect("attach balancer");
            (b, vip)
        });
        // XDP_TX frames from a veth are only received by a peer that runs XDP itself.
        let router_xdp = router.run(|| {
            let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16 }).expect("load");
            dp.attach(programs::PASS, "r-lb", AttachMode::Native).expect("attach pass stub");
            dp
        });
        let decaps = backend_ns
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                ns.run(|| {
                    let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16 }).expect("load");
                    dp.add_decap_addr(ip(&backend_addr(i))).expect("decap addr");
                    dp.attach(programs::DECAP, "b0", AttachMode::Native).expect("attach decap");
                    dp
                })
            })
            .collect();
        Self { client, router, lb, backends: backend_ns, balancer, vip, router_xdp, decaps }
    }

    pub fn vip_addr() -> SocketAddr {
        SocketAddr::new(ip(VIP), PORT)
    }

    /// Runs an HTTP-like server on the VIP in every backend while `f` runs in the client's
    /// namespace; returns what `f` returns.
    pub fn with_servers<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for (i, ns) in self.backends.iter().enumerate() {
                let stop = &stop;
                s.spawn(move || {
                    ns.enter();
                    serve(Self::vip_addr(), &format!("backend {i}"), stop, Duration::from_secs(120));
                });
            }
            std::thread::sleep(Duration::from_millis(50)); // listeners bound
            let result = self.client.run(f);
            stop.store(true, Ordering::Relaxed);
            result
        })
    }
}

/// One answered request: who answered, and the client's source port.
#[derive(Debug)]
pub struct Answer {
    pub text: String,
    pub local_port: u16,
}

/// Client side: one connection, one request, the whole answer.
pub fn ask(vip: SocketAddr, request: &str) -> std::io::Result<Answer> {
    let mut conn = TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let local_port = conn.local_addr()?.port();
    conn.write_all(format!("{request}\n").as_bytes())?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(Answer { text, local_port })
}

/// Backend side: answers each connection with `name`, the request and the client address, until
/// `stop` is set or `limit` passes.
pub fn serve(vip: SocketAddr, name: &str, stop: &AtomicBool, limit: Duration) {
    let listener = TcpListener::bind(vip).expect("bind VIP on the backend");
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + limit;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((mut conn, peer)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(3)));
                let mut request = [0u8; 256];
                let n = conn.read(&mut request).unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                let _ = conn.write_all(format!("{name} answered {} from {}\n", request.trim(), peer.ip()).as_bytes());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The backend Maglev picks for a client connection from `CLIENT:port` to the VIP.
pub fn expected_backend(site: &Site, port: u16) -> IpAddr {
    let frame = crate::packet::Frame::tcp(CLIENT, port, VIP, PORT);
    site.balancer.expected_real(&site.vip, &frame)
}
