//! End to end in network namespaces (see `lb_tests::topology`): real TCP from a client to the
//! VIP, balanced by the XDP program on the LB node's NIC and answered by the backends directly.

use lb_common::stats::DecapCounter;
use lb_tests::{
    packet::ip,
    require_root,
    topology::{ask, backend_addr, expected_backend, Site, CLIENT},
};

const CONNECTIONS: usize = 40;

#[test]
fn tcp_to_the_vip_is_answered_by_the_maglev_backend_directly() {
    require_root!();
    let site = Site::new(2);
    let answers = site.with_servers(|| {
        (0..CONNECTIONS).map(|i| ask(Site::vip_addr(), &format!("request {i}")).expect("answered")).collect::<Vec<_>>()
    });
    let mut per_backend = [0usize; 2];
    for (i, a) in answers.iter().enumerate() {
        let backend = (0..2).find(|&b| ip(&backend_addr(b)) == expected_backend(&site, a.local_port)).unwrap();
        assert_eq!(a.text, format!("backend {backend} answered request {i} from {CLIENT}\n"), "Maglev's backend answers");
        per_backend[backend] += 1;
    }
    println!("answers per backend: {per_backend:?}");
    assert!(per_backend.iter().all(|&n| n > 0), "both backends served: {per_backend:?}");

    let stats = site.balancer.dp.vip_stats(site.vip.meta.vip_index).unwrap();
    println!("VIP stats after {CONNECTIONS} connections: {stats:?}");
    assert_eq!(stats.new_flows, CONNECTIONS as u64, "one new flow per connection");
    assert!(stats.conn_hits >= 2 * CONNECTIONS as u64, "later packets of a connection hit the table");
    let decapsulated: u64 = site.net.decaps.iter().map(|d| d.decap_counter(DecapCounter::Decapsulated).unwrap()).sum();
    assert_eq!(decapsulated, stats.packets, "every tunnelled packet was stripped by a backend");
}
