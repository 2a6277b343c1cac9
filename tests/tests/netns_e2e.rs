//! End to end in network namespaces: a client, a router, the LB node and a backend over veth.
//! The balancer runs natively on the LB node's NIC and sends tunnelled packets back to the
//! router (XDP_TX); the backend strips the tunnel with `lb_decap`, holds the VIP on loopback and
//! answers the client directly (DSR): the LB node has forwarding off and no route to the client.
//!
//! ```text
//! client 10.10.1.2 -- 10.10.1.1 router 10.10.2.1 -- 10.10.2.2 lb (XDP lb_xdp)
//!                               router 10.10.3.1 -- 10.10.3.2 backend (XDP lb_decap, VIP on lo)
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use lb_common::{programs, stats::DecapCounter};
use lb_tests::{
    fixture::{Balancer, TEST_RING_SIZE},
    netns::{veth, End, NetNs},
    require_root,
};
use lb_userspace::dataplane::{AttachMode, Dataplane, LoadOptions};

const VIP: &str = "10.99.0.1";
const PORT: u16 = 8080;
const CONNECTIONS: usize = 20;

#[test]
fn tcp_to_the_vip_is_answered_by_the_backend_directly() {
    require_root!();
    let client = NetNs::new("client", false);
    let router = NetNs::new("router", true);
    let lb = NetNs::new("lb", false);
    let backend = NetNs::new("backend", false);
    veth(
        End { ns: &client, dev: "c0", mac: "02:00:00:00:00:01", addr: "10.10.1.2/24" },
        End { ns: &router, dev: "r-c", mac: "02:00:00:00:01:01", addr: "10.10.1.1/24" },
    );
    // MACs as the packet fixture names them: LB_MAC on the LB, ROUTER_MAC as its next hop.
    veth(
        End { ns: &router, dev: "r-lb", mac: "02:00:00:00:00:03", addr: "10.10.2.1/24" },
        End { ns: &lb, dev: "lb0", mac: "02:00:00:00:00:02", addr: "10.10.2.2/24" },
    );
    veth(
        End { ns: &router, dev: "r-b", mac: "02:00:00:00:03:01", addr: "10.10.3.1/24" },
        End { ns: &backend, dev: "b0", mac: "02:00:00:00:03:02", addr: "10.10.3.2/24" },
    );
    client.ip(&["route", "add", "default", "via", "10.10.1.1"]);
    backend.ip(&["route", "add", "default", "via", "10.10.3.1"]);
    router.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.10.2.2"]);
    backend.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);

    let balancer = lb.run(|| {
        let mut b = Balancer::new();
        b.add_vip(VIP, PORT, 6, 0, TEST_RING_SIZE, &[("10.10.3.2", 1)]);
        b.dp.attach(programs::BALANCER, "lb0", AttachMode::Native).expect("attach balancer");
        b
    });
    // XDP_TX frames from a veth are only received by a peer that runs XDP itself.
    let _router_xdp = router.run(|| {
        let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16 }).unwrap();
        dp.attach(programs::PASS, "r-lb", AttachMode::Native).expect("attach pass stub");
        dp
    });
    let decap = backend.run(|| {
        let mut dp = Dataplane::load(&LoadOptions { conn_table_size: 16 }).unwrap();
        dp.add_decap_addr("10.10.3.2".parse().unwrap()).unwrap();
        dp.attach(programs::DECAP, "b0", AttachMode::Native).expect("attach decap");
        dp
    });

    let vip: SocketAddr = format!("{VIP}:{PORT}").parse().unwrap();
    let answers = std::thread::scope(|s| {
        let server = s.spawn(|| {
            backend.enter();
            serve(vip, CONNECTIONS, Duration::from_secs(30))
        });
        let answers = client.run(|| (0..CONNECTIONS).map(|i| ask(vip, i)).collect::<Vec<_>>());
        server.join().expect("server");
        answers
    });
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &format!("backend saw request {i} from 10.10.1.2\n"));
    }
    let stats = balancer.dp.vip_stats(0).unwrap();
    println!("VIP stats after {CONNECTIONS} connections: {stats:?}");
    assert_eq!(stats.new_flows, CONNECTIONS as u64, "one new flow per connection");
    assert!(stats.conn_hits >= 2 * CONNECTIONS as u64, "later packets hit the connection table");
    assert!(decap.decap_counter(DecapCounter::Decapsulated).unwrap() >= stats.packets, "every tunnelled packet was stripped");
}

/// Client side: one connection, one request, the whole answer.
fn ask(vip: SocketAddr, i: usize) -> String {
    let mut conn = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {i}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(format!("request {i}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap_or_else(|e| panic!("read {i}: {e}"));
    answer
}

/// Backend side: answers `count` connections on the VIP, or gives up after `limit`.
fn serve(vip: SocketAddr, count: usize, limit: Duration) {
    let listener = TcpListener::bind(vip).expect("bind VIP on the backend");
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    let mut served = 0;
    while served < count {
        assert!(Instant::now() < deadline, "served only {served} of {count} connections");
        match listener.accept() {
            Ok((mut conn, peer)) => {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut request = [0u8; 64];
                let n = conn.read(&mut request).unwrap();
                let request = String::from_utf8_lossy(&request[..n]);
                let reply = format!("backend saw {} from {}\n", request.trim(), peer.ip());
                conn.write_all(reply.as_bytes()).unwrap();
                served += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("accept: {e}"),
        }
    }
}
