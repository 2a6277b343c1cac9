//! The next hop's MAC from the kernel's neighbour table over netlink, and followed when the entry
//! changes (in a namespace of the test's own, with static neighbour entries).

use std::{net::IpAddr, time::Duration};

use lb_tests::{netns::NetNs, require_root};
use lb_userspace::{
    config::NextHop,
    next_hop::{resolve, watch, NextHopChanged, NextHopError},
};
use tokio::sync::mpsc;

const MAC1: [u8; 6] = [2, 0, 0, 0, 9, 1];
const MAC2: [u8; 6] = [2, 0, 0, 0, 9, 2];

fn neighbour(ns: &NetNs, ip: &str, mac: &str) {
    ns.ip(&["neigh", "replace", ip, "lladdr", mac, "dev", "nh0", "nud", "permanent"]);
}

#[test]
fn the_next_hop_is_read_from_the_neighbour_table_and_followed_when_it_changes() {
    require_root!();
    let ns = NetNs::new("nexthop", false);
    ns.ip(&["link", "add", "nh0", "type", "veth", "peer", "name", "nh1"]);
    for dev in ["nh0", "nh1"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "nh0"]);
    ns.ip(&["addr", "add", "fd00:9::1/64", "dev", "nh0"]);
    neighbour(&ns, "10.9.0.2", "02:00:00:00:09:01");
    neighbour(&ns, "fd00:9::2", "02:00:00:00:09:01");
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for ip in ["10.9.0.2", "fd00:9::2"] {
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(resolve(&NextHop::Ip(ip)).await.unwrap(), MAC1, "{ip}");
            }
            let absent: IpAddr = "10.9.0.3".parse().unwrap();
            assert!(matches!(resolve(&NextHop::Ip(absent)).await, Err(NextHopError::NoEntry(_))));
            assert_eq!(resolve(&NextHop::Mac(MAC2)).await.unwrap(), MAC2, "a given MAC is taken as it is");

            let ip: IpAddr = "10.9.0.2".parse().unwrap();
            let (tx, mut rx) = mpsc::channel(4);
            let watcher = tokio::spawn(watch(ip, tx));
            let next = async |rx: &mut mpsc::Receiver<NextHopChanged>| tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
            assert_eq!(next(&mut rx).await.unwrap(), Some(NextHopChanged { ip, mac: MAC1 }), "the entry as found");
            neighbour(&ns, "10.9.0.3", "02:00:00:00:09:03"); // another address: no report
            neighbour(&ns, "10.9.0.2", "02:00:00:00:09:02");
            assert_eq!(next(&mut rx).await.unwrap(), Some(NextHopChanged { ip, mac: MAC2 }), "the new MAC");
            assert!(tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(), "nothing else");
            watcher.abort();
        });
    });
}
