//! `cargo xtask bench-conns`: the connection table's layouts on more than one CPU.
//!
//! The balancer keeps one LRU hash for all CPUs (`CONNS`). The kernel offers a variant with one
//! LRU list per CPU in the same hash (`BPF_F_NO_COMMON_LRU`): every CPU still finds every flow,
//! but a CPU evicts only among the entries it owns, max_entries / CPUs of them. (Katran goes
//! further, with one LRU map per CPU.) This bench loads the balancer onto either layout (the
//! table is made here with the flag and handed to the loader as a pinned map) and measures, with
//! one BPF_PROG_TEST_RUN call per packet on threads pinned to CPUs, the kernel ns of a
//! connection-table hit and of a new flow's insert, into a table with room and into a full one
//! (every insert evicts), with one CPU working and with two CPUs at once. The program's own
//! counters prove every call's path; the memory line is what the kernel charges for the table.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::{Arc, Barrier},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_common::{maps, programs, ConnEntry, FlowKey, VipStats};
use lb_tests::{
    fixture::Balancer,
    packet::Frame,
    test_run::{self, action_name},
    PinDir,
};
use lb_userspace::dataplane::{Dataplane, LoadOptions};

const VIP: &str = "10.0.0.1";
const XDP_TX: u32 = 3;
/// Calls per thread per measurement.
const CALLS: u32 = 100_000;
const ROUNDS: usize = 5;
/// Table sizes: one with room for every insert of a run, and one that fills first.
const ROOMY: u32 = 1 << 20;
const SMALL: u32 = 1 << 16;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One LRU list for all CPUs (what `lb` uses).
    Shared,
    /// `BPF_F_NO_COMMON_LRU`: one LRU list per CPU.
    PerCpuLists,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Shared => "shared LRU (lb's layout)",
            Layout::PerCpuLists => "per-CPU LRU lists (BPF_F_NO_COMMON_LRU)",
        }
    }
}

/// Makes an LRU hash with `flags` shaped like `CONNS` and pins it at `path`.
fn create_conns(path: &std::path::Path, entries: u32, flags: u32) -> Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
    }
    let mut attr = CreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: std::mem::size_of::<FlowKey>() as u32,
        value_size: std::mem::size_of::<ConnEntry>() as u32,
        max_entries: entries,
        map_flags: flags,
        ..Default::default()
    };
    attr.map_name[..maps::CONNS.len()].copy_from_slice(maps::CONNS.as_bytes());
    // SAFETY: a valid prefix of `union bpf_attr` for BPF_MAP_CREATE, alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr as *const CreateAttr, std::mem::size_of::<CreateAttr>() as u32) };
    ensure!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let fd = fd as RawFd;
    #[repr(C)]
    struct PinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let pin = PinAttr { pathname: cpath.as_ptr() as u64, bpf_fd: fd as u32, file_flags: 0 };
    // SAFETY: as above; the path string outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &pin as *const PinAttr, std::mem::size_of::<PinAttr>() as u32) };
    let pin_error = std::io::Error::last_os_error();
    // SAFETY: our own fd; the pin keeps the map.
    unsafe { libc::close(fd) };
    ensure!(rc == 0, "BPF_OBJ_PIN {}: {pin_error}", path.display());
    Ok(())
}

/// The balancer loaded onto a connection table of `layout` with `entries`, with one UDP VIP.
fn balancer(layout: Layout, entries: u32, pins: &PinDir) -> Result<Balancer> {
    let _ = Dataplane::remove_pins(&pins.0);
    let maps_dir = pins.0.join("maps");
    std::fs::create_dir_all(&maps_dir)?;
    let flags = if layout == Layout::PerCpuLists { BPF_F_NO_COMMON_LRU } else { 0 };
    create_conns(&maps_dir.join(maps::CONNS), entries, flags)?;
    let dp = Dataplane::load_pinned(&LoadOptions { conn_table_size: entries, ring_slots: 2 * lb_common::DEFAULT_RING_SIZE }, &pins.0)
        .context("load onto the table")?;
    let mut lb = Balancer::with_dataplane(dp, programs::BALANCER);
    let reals: Vec<String> = (1..=16).map(|i| format!("10.1.0.{i}")).collect();
    let weighted: Vec<(&str, u32)> = reals.iter().map(|r| (r.as_str(), 1)).collect();
    lb.add_vip(VIP, 53, 17, 0, lb_common::DEFAULT_RING_SIZE, &weighted);
    Ok(lb)
}

/// A datagram of flow number `n` (sources count up from 100.64.0.0): a UDP flow is recorded on
/// its first packet (a TCP one only on its handshake's ACK), so one call is one insert.
fn frame(n: u32) -> Vec<u8> {
    Frame::udp(&std::net::Ipv4Addr::from(0x6440_0000 + n).to_string(), 40_000, VIP, 53).build()
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs each thread's frames on its CPU (`frames[i]` on CPU i), all threads starting together;
/// returns the mean kernel ns per call over all threads.
fn run_on_cpus(fd: i32, frames: Vec<Vec<Vec<u8>>>) -> Result<f64> {
    let start = Arc::new(Barrier::new(frames.len()));
    let threads: Vec<_> = frames
        .into_iter()
        .enumerate()
        .map(|(cpu, frames)| {
            let start = Arc::clone(&start);
            std::thread::spawn(move || -> Result<(u64, u64)> {
                pin_to_cpu(cpu)?;
                start.wait();
                let mut total = 0;
                for frame in &frames {
                    let out = test_run::run(fd, frame, 1)?;
                    ensure!(out.action == XDP_TX, "{} on CPU {cpu}", action_name(out.action));
                    total += out.duration_ns as u64;
                }
                Ok((total, frames.len() as u64))
            })
        })
        .collect();
    let (mut total, mut calls) = (0, 0);
    for t in threads {
        let (ns, n) = t.join().expect("bench thread")?;
        total += ns;
        calls += n;
    }
    Ok(total as f64 / calls as f64)
}

fn stats(lb: &Balancer) -> Result<VipStats> {
    Ok(lb.dp().vip_stats(0)?)
}

/// One row's figures for a layout: hit, insert with room, insert evicting; each with 1 and 2 CPUs.
fn measure(layout: Layout, cpus: usize) -> Result<[f64; 3]> {
    let pins = PinDir::new("bench-conns");
    let mut next = 0u32;
    let mut flows = |count: u32| {
        let first = next;
        next += count;
        first..first + count
    };

    // Hits: each CPU repeats a flow of its own, recorded by its first datagram.
    let lb = balancer(layout, ROOMY, &pins)?;
    let fd = lb.fd();
    let own: Vec<u32> = (0..cpus).map(|_| flows(1).start).collect();
    run_on_cpus(fd, own.iter().map(|&n| vec![frame(n)]).collect())?;
    let before = stats(&lb)?;
    let hit = run_on_cpus(fd, own.iter().map(|&n| vec![frame(n); CALLS as usize]).collect())?;
    let d = stats(&lb)?.conn_hits - before.conn_hits;
    ensure!(d == CALLS as u64 * cpus as u64, "{}: {d} hits for {} calls", layout.name(), CALLS as usize * cpus);

    // Inserts into a table with room: every CPU opens new flows.
    let before = stats(&lb)?;
    let insert = run_on_cpus(fd, (0..cpus).map(|_| flows(CALLS).map(frame).collect()).collect())?;
    let d = stats(&lb)?.new_flows - before.new_flows;
    ensure!(d == CALLS as u64 * cpus as u64, "{}: {d} new flows", layout.name());
    drop(lb);

    // Inserts into a full table: filled first from every CPU, so each later insert evicts.
    let lb = balancer(layout, SMALL, &pins)?;
    let fd = lb.fd();
    run_on_cpus(fd, (0..cpus.max(2)).map(|_| flows(SMALL).map(frame).collect()).collect())?;
    let before = stats(&lb)?;
    let evicting = run_on_cpus(fd, (0..cpus).map(|_| flows(CALLS).map(frame).collect()).collect())?;
    let d = stats(&lb)?.new_flows - before.new_flows;
    ensure!(d == CALLS as u64 * cpus as u64, "{}: {d} new flows into the full table", layout.name());
    Ok([hit, insert, evicting])
}

/// Bytes the kernel charges for a `CONNS` of `entries` entries.
fn table_bytes(entries: u32) -> Result<u64> {
    let pins = PinDir::new("bench-conns-mem");
    let lb = balancer(Layout::Shared, entries, &pins)?;
    let path = pins.0.join("maps").join(maps::CONNS);
    let fd = aya::maps::MapInfo::from_pin(&path)?.fd()?;
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
    drop(lb);
    let memlock = fdinfo.lines().find_map(|l| l.strip_prefix("memlock:")).context("no memlock in fdinfo")?;
    Ok(memlock.trim().parse()?)
}

fn main() -> Result<()> {
    let cpus = std::thread::available_parallelism()?.get();
    ensure!(cpus >= 2, "needs 2 CPUs, this machine has {cpus}");
    println!("one BPF_PROG_TEST_RUN call per packet, {CALLS} calls per thread, threads pinned to CPUs 0 and 1; kernel ns per call (mean over threads); median of {ROUNDS} rounds (min-max), layouts interleaved");
    println!("tables: {ROOMY} entries with room for every insert; {SMALL} entries filled first, so every insert evicts\n");
    let cases = [(Layout::Shared, 1), (Layout::Shared, 2), (Layout::PerCpuLists, 1), (Layout::PerCpuLists, 2)];
    let mut figures = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (i, &(layout, n)) in cases.iter().enumerate() {
            figures[i].push(measure(layout, n)?);
        }
    }
    println!("| layout | CPUs at once | conn-table hit | insert, room | insert, evicting |\n|---|---:|---:|---:|---:|");
    for (&(layout, n), rounds) in cases.iter().zip(&figures) {
        let column = |c: usize| {
            let mut v: Vec<f64> = rounds.iter().map(|r| r[c]).collect();
            v.sort_by(f64::total_cmp);
            format!("{:.0} ({:.0}-{:.0})", v[v.len() / 2], v[0], v[v.len() - 1])
        };
        println!("| {} | {n} | {} | {} | {} |", layout.name(), column(0), column(1), column(2));
    }
    for entries in [SMALL, ROOMY] {
        let bytes = table_bytes(entries)?;
        println!("\nmemory: a table of {entries} entries is charged {bytes} bytes ({:.0} bytes per entry)", bytes as f64 / entries as f64);
    }
    Ok(())
}
