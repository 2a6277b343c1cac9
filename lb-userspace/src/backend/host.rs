//! What `lb backend` changes on the host: the sysctls direct server return needs and the VIPs on
//! `lo` (over netlink). Each change is recorded (durably) before it is made, so `stop` puts back
//! exactly what `run` changed.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::config::BackendConfig;

/// What `run` changed on the host, so that `stop` puts it back: kept in
/// `<state dir>/<instance>.backend.json`, written before each change.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostChanges {
    /// sysctl key -> the value before lb changed it.
    pub sysctls: BTreeMap<String, String>,
    /// VIPs lb added to `lo` (ones that were there already are not lb's to remove).
    pub vips_added: Vec<IpAddr>,
}

pub(super) fn changes_path(instance: &str) -> PathBuf {
    crate::journal::state_dir().join(format!("{instance}.backend.json"))
}

pub(super) fn load_changes(instance: &str) -> Result<HostChanges> {
    let path = changes_path(instance);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is not valid; move it away to start over", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostChanges::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_changes(instance: &str, changes: &HostChanges) -> Result<()> {
    let path = changes_path(instance);
    crate::durable::write(&path, &serde_json::to_vec_pretty(changes)?).with_context(|| format!("writing {}", path.display()))
}

/// A key is written with '/' between its parts ("net/ipv4/conf/eth0.100/rp_filter"), as
/// sysctl(8) also accepts, because an interface name may hold dots (VLANs: eth0.100). Keys
/// recorded by earlier versions use dots and name no dotted interface.
fn sysctl_path(key: &str) -> PathBuf {
    let parts = if key.contains('/') { key.to_owned() } else { key.replace('.', "/") };
    Path::new("/proc/sys").join(parts)
}

fn read_sysctl(key: &str) -> Result<String> {
    Ok(std::fs::read_to_string(sysctl_path(key)).with_context(|| format!("reading sysctl {key}"))?.trim().to_owned())
}

pub(super) fn write_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).with_context(|| format!("setting sysctl {key} = {value}"))
}

/// The sysctls direct server return needs: the VIPs on `lo` must not be answered for on the
/// NICs (ARP), and the tunnel NICs must accept the clients' sources.
fn wanted_sysctls(config: &BackendConfig) -> Vec<(String, String)> {
    let mut list = Vec::new();
    if config.vips.iter().any(IpAddr::is_ipv4) {
        list.push(("net/ipv4/conf/all/arp_ignore".to_owned(), "1".to_owned()));
        list.push(("net/ipv4/conf/all/arp_announce".to_owned(), "2".to_owned()));
    }
    // The effective rp_filter of a NIC is the larger of `all` and its own.
    let rp = config.rp_filter.to_string();
    list.push(("net/ipv4/conf/all/rp_filter".to_owned(), rp.clone()));
    for iface in &config.interfaces {
        list.push((format!("net/ipv4/conf/{}/rp_filter", iface.name), rp.clone()));
    }
    list
}

/// Reads every sysctl `run` will set, so that one it cannot read stops `run` before it has
/// attached anything or changed any of them.
pub(super) fn check_sysctls(config: &BackendConfig) -> Result<()> {
    wanted_sysctls(config).iter().try_for_each(|(key, _)| read_sysctl(key).map(drop))
}

/// Sets each wanted sysctl that differs, recording its first value; returns what changed.
pub(super) fn apply_sysctls(config: &BackendConfig, changes: &mut HostChanges) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for (key, value) in wanted_sysctls(config) {
        let now = read_sysctl(&key)?;
        if now == value {
            continue;
        }
        changes.sysctls.entry(key.clone()).or_insert(now.clone());
        save_changes(&config.instance, changes)?;
        write_sysctl(&key, &value)?;
        info!(%key, from = %now, to = %value, "sysctl set");
        changed.push(key);
    }
    Ok(changed)
}

async fn netlink() -> Result<rtnetlink::Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening netlink")?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn lo_index(handle: &rtnetlink::Handle) -> Result<u32> {
    let mut links = handle.link().get().match_name("lo".into()).execute();
    let link = links.try_next().await.context("looking up lo")?.context("no lo")?;
    Ok(link.header.index)
}

/// Addresses on `lo` now.
async fn lo_addresses(handle: &rtnetlink::Handle, index: u32) -> Result<Vec<IpAddr>> {
    let mut found = Vec::new();
    let mut addrs = handle.address().get().set_link_index_filter(index).execute();
    while let Some(msg) = addrs.try_next().await.context("listing lo's addresses")? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(a) = attr {
                found.push(*a);
            }
        }
    }
    Ok(found)
}

/// Adds the VIPs that are not on `lo` yet; returns what it added.
pub(super) async fn hold_vips(config: &BackendConfig, changes: &mut HostChanges) -> Result<Vec<IpAddr>> {
    let handle = netlink().await?;
    let lo = lo_index(&handle).await?;
    let present = lo_addresses(&handle, lo).await?;
    let mut added = Vec::new();
    for &vip in config.vips.iter().filter(|v| !present.contains(v)) {
        if !changes.vips_added.contains(&vip) {
            changes.vips_added.push(vip);
        }
        save_changes(&config.instance, changes)?;
        let len = if vip.is_ipv4() { 32 } else { 128 };
        let mut req = handle.address().add(lo, vip, len);
        // No duplicate address detection: usable at once, and never answered for on a NIC.
        req.message_mut().header.flags = AddressHeaderFlags::Nodad;
        req.execute().await.with_context(|| format!("adding {vip} to lo"))?;
        info!(%vip, "VIP added to lo");
        added.push(vip);
    }
    Ok(added)
}

/// Removes the VIPs `run` added from `lo`.
pub(super) async fn release_vips(changes: &HostChanges) -> Result<()> {
    let handle = netlink().await?;
    let lo = lo_index(&handle).await?;
    let mut addrs = handle.address().get().set_link_index_filter(lo).execute();
    let mut doomed = Vec::new();
    while let Some(msg) = addrs.try_next().await.context("listing lo's addresses")? {
        if msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(ip) if changes.vips_added.contains(ip))) {
            doomed.push(msg);
        }
    }
    for msg in doomed {
        handle.address().del(msg).execute().await.context("removing a VIP from lo")?;
    }
    for vip in &changes.vips_added {
        info!(%vip, "VIP removed from lo");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VLAN interface's name has a dot: its sysctl is a folder named with the dot, not two.
    #[test]
    fn sysctl_paths_keep_dots_in_interface_names() {
        assert_eq!(sysctl_path("net/ipv4/conf/eth0.100/rp_filter"), Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"));
        assert_eq!(
            sysctl_path("net.ipv4.conf.all.rp_filter"),
            Path::new("/proc/sys/net/ipv4/conf/all/rp_filter"),
            "recorded by earlier versions"
        );
        let config = crate::backend::parse(
            "[backend]\ninterface = [{ name = \"lo\" }, { name = \"eth0.100\" }]\naddresses = [\"10.1.0.1\"]\nvips = [\"10.99.0.1\"]\n",
            crate::config::InterfaceCheck::Skip,
        )
        .unwrap();
        let keys: Vec<String> = wanted_sysctls(&config).into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"net/ipv4/conf/eth0.100/rp_filter".to_owned()), "{keys:?}");
        assert!(read_sysctl("net/ipv4/conf/lo/rp_filter").is_ok());
        let missing = check_sysctls(&config).unwrap_err();
        assert!(format!("{missing:#}").contains("eth0.100"), "{missing:#}");
    }
}
