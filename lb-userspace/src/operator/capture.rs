//! `lb capture`: turns the data plane's capture on (`lb_common::capture`), reads the perf
//! buffers and writes what arrives as pcapng, each packet with its reason as the packet's
//! comment ("drop: drop_bad_l4_header"), readable by tcpdump and Wireshark.
//!
//! The capture holds a lease: the data plane copies packets only until `CaptureCtl::until_ns`,
//! which this loop renews every second, so a capture whose process is killed stops by itself
//! within `LEASE`. It runs in the `lb capture` process, beside `lb run`, through the pins.

use std::{
    borrow::Cow,
    io::Write,
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::perf::PerfEvent;
use lb_common::{capture, stats::Counter, CaptureCtl, CaptureMeta, RateLimit};
use pcap_file::{
    pcapng::{
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
    DataLink,
};

use crate::{
    config::VipId,
    dataplane::{monotonic_ns, CaptureMaps},
};

/// How long the data plane keeps copying after the last renewal.
const LEASE: Duration = Duration::from_secs(3);
/// Pages of each CPU's perf buffer (4 KiB each): about 700 packets of 256 bytes.
const PAGES: usize = 64;

/// What to capture, and when to stop.
pub struct Options {
    /// `capture::*` bits.
    pub what: u32,
    /// Only packets to this VIP (address; port and protocol when the packet shows them).
    pub vip: Option<VipId>,
    /// Stop after writing this many packets.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Packets a second each CPU copies at most.
    pub rate: u32,
}

/// What a capture saw.
#[derive(Debug, Default)]
pub struct Summary {
    pub written: u64,
    /// Copied by the data plane (those written, filtered, lost, and any left unread at the end).
    pub copied: u64,
    /// Captured but not for the `--vip` asked for.
    pub filtered: u64,
    /// Over the rate limit: not copied by the data plane.
    pub suppressed: u64,
    /// Copied, but the perf buffer was full.
    pub lost: u64,
}

/// Set by SIGINT / SIGTERM: the capture ends and turns the data plane's copying off.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The names `--what` takes, and their bits.
pub fn what_of(name: &str) -> Option<u32> {
    Some(match name {
        "drop" => capture::DROP,
        "handoff" => capture::HANDOFF,
        "miss" => capture::MISS,
        "icmp" => capture::ICMP,
        "all" => capture::ALL,
        _ => return None,
    })
}

/// The comment a captured packet gets in the file.
pub fn reason_of(meta: &CaptureMeta) -> String {
    let counter = Counter::ALL.iter().find(|c| **c as u32 == meta.reason).map(|c| c.name());
    match meta.what {
        capture::DROP => format!("drop: {}", counter.unwrap_or("unknown reason")),
        capture::HANDOFF => format!("handoff: {}", counter.unwrap_or("handoff")),
        capture::MISS => "miss: mid-flow TCP of an unknown flow, balanced here".into(),
        capture::ICMP => "icmp: to a VIP address".into(),
        other => format!("kind {other}"),
    }
}

/// Captures from the instance pinned at `pin_dir` into `file` until `opts` says stop or a
/// signal comes. The data plane's copying is turned off on the way out, error or not.
pub fn run(pin_dir: &Path, file: &Path, opts: &Options) -> Result<Summary> {
    let mut maps =
        CaptureMaps::open(pin_dir).with_context(|| format!("opening the capture maps under {} (is lb running?)", pin_dir.display()))?;
    let current = maps.ctl()?;
    if current.what != 0 && current.until_ns > monotonic_ns() {
        bail!("another lb capture is running on this instance (its lease ends within {} s)", LEASE.as_secs());
    }
    let mut buffers = maps.open_buffers(PAGES)?;
    let out = std::fs::File::create(file).with_context(|| format!("creating {}", file.display()))?;
    let mut writer = PcapNgWriter::new(std::io::BufWriter::new(out)).context("writing the pcapng header")?;
    writer.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: capture::SNAPLEN,
        options: vec![InterfaceDescriptionOption::IfName(Cow::Borrowed("lb_xdp")), InterfaceDescriptionOption::IfTsResol(9)],
    })?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let (sent_before, suppressed_before) = maps.totals()?;
    let mut ctl =
        CaptureCtl { what: opts.what, _pad: 0, until_ns: monotonic_ns() + LEASE.as_nanos() as u64, rate: RateLimit::per_sec(opts.rate) };
    maps.set_ctl(&ctl)?;
    let result = copy_until_done(&mut buffers, &mut writer, opts, &mut || {
        ctl.until_ns = monotonic_ns() + LEASE.as_nanos() as u64;
        maps.set_ctl(&ctl).map_err(anyhow::Error::from)
    });
    let off = maps.set_ctl(&CaptureCtl::default());
    let mut summary = result?;
    off.context("turning the capture off")?;
    writer.get_mut().flush()?;
    let (sent, suppressed) = maps.totals()?;
    (summary.copied, summary.suppressed) = (sent - sent_before, suppressed - suppressed_before);
    Ok(summary)
}

fn copy_until_done(
    buffers: &mut [crate::dataplane::CaptureBuffer],
    writer: &mut PcapNgWriter<std::io::BufWriter<std::fs::File>>,
    opts: &Options,
    renew: &mut dyn FnMut() -> Result<()>,
) -> Result<Summary> {
    let start = Instant::now();
    let mut renewed = Instant::now();
    // Monotonic ns of the data plane -> wall-clock time for the file.
    let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?;
    let wall_minus_mono = wall.as_nanos() as i128 - monotonic_ns() as i128;
    let mut summary = Summary::default();
    let mut fds: Vec<libc::pollfd> = buffers.iter().map(|b| libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    while !STOP.load(Ordering::Relaxed)
        && opts.count.is_none_or(|n| summary.written < n)
        && opts.duration.is_none_or(|d| start.elapsed() < d)
    {
        if renewed.elapsed() >= Duration::from_secs(1) {
            renew()?;
            renewed = Instant::now();
        }
        // SAFETY: `fds` is a valid array of pollfd for its length; the fds live in `buffers`.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
        if ready <= 0 {
            continue; // timeout, or a signal (EINTR): the loop's condition decides
        }
        for buffer in buffers.iter_mut() {
            let mut failed = None;
            buffer.for_each(|event| match event {
                PerfEvent::Lost { count } => summary.lost += count,
                PerfEvent::Sample { head, tail } => {
                    if failed.is_some() || opts.count.is_some_and(|n| summary.written >= n) {
                        return;
                    }
                    let bytes: Vec<u8> = head.iter().chain(tail.iter()).copied().collect();
                    match packet(&bytes) {
                        Some((meta, frame)) if opts.vip.is_none_or(|v| to_vip(frame, &v)) => {
                            let at = (meta.time_ns as i128 + wall_minus_mono).max(0) as u64;
                            let block = EnhancedPacketBlock {
                                interface_id: 0,
                                timestamp: Duration::from_nanos(at),
                                original_len: meta.packet_len,
                                data: Cow::Borrowed(frame),
                                options: vec![EnhancedPacketOption::Comment(Cow::Owned(reason_of(&meta)))],
                            };
                            match writer.write_pcapng_block(block) {
                                Ok(_) => summary.written += 1,
                                Err(e) => failed = Some(e),
                            }
                        }
                        Some(_) => summary.filtered += 1,
                        None => {}
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e).context("writing the capture file");
            }
        }
        writer.get_mut().flush()?;
    }
    Ok(summary)
}

/// A sample's `CaptureMeta` and frame bytes.
fn packet(sample: &[u8]) -> Option<(CaptureMeta, &[u8])> {
    let size = std::mem::size_of::<CaptureMeta>();
    let head = sample.get(..size)?;
    // SAFETY: `head` holds `size_of::<CaptureMeta>()` bytes; CaptureMeta is plain integers.
    let meta: CaptureMeta = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    let frame = sample.get(size..size + meta.captured_len as usize)?;
    Some((meta, frame))
}

/// Whether `frame` is addressed to `vip`: its destination address, and its port and protocol
/// when the packet is whole enough to show them (a malformed packet to the VIP's address counts).
fn to_vip(frame: &[u8], vip: &VipId) -> bool {
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes([frame.get(at).copied().unwrap_or(0), frame.get(at + 1).copied().unwrap_or(0)]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        at += 4;
        ethertype = frame.get(at..at + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    }
    let l3 = at + 2;
    let (dst, proto, l4): (Option<IpAddr>, Option<u8>, usize) = match ethertype {
        0x0800 => {
            let ihl = frame.get(l3).map_or(20, |b| usize::from(b & 0x0f) * 4);
            let dst = frame.get(l3 + 16..l3 + 20).map(|b| IpAddr::from(<[u8; 4]>::try_from(b).expect("4 bytes")));
            (dst, frame.get(l3 + 9).copied(), l3 + ihl)
        }
        0x86dd => {
            let dst = frame.get(l3 + 24..l3 + 40).map(|b| IpAddr::from(<[u8; 16]>::try_from(b).expect("16 bytes")));
            (dst, frame.get(l3 + 6).copied(), l3 + 40)
        }
        _ => return false,
    };
    if dst != Some(vip.addr) {
        return false;
    }
    let port = frame.get(l4 + 2..l4 + 4).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match (proto, port) {
        (Some(p), Some(port)) if p == vip.proto.number() => vip.port == 0 || port == vip.port,
        (Some(6 | 17), Some(_)) => false, // the other protocol
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Proto;

    fn ipv4_tcp(dst: [u8; 4], port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 20];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[14 + 9] = 6;
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f[34 + 2..34 + 4].copy_from_slice(&port.to_be_bytes());
        f
    }

    #[test]
    fn the_vip_filter_matches_address_port_and_protocol_and_keeps_malformed_packets_to_the_address() {
        let vip = VipId { addr: "10.99.0.1".parse().unwrap(), port: 8080, proto: Proto::Tcp };
        assert!(to_vip(&ipv4_tcp([10, 99, 0, 1], 8080), &vip));
        assert!(!to_vip(&ipv4_tcp([10, 99, 0, 1], 443), &vip), "another port");
        assert!(!to_vip(&ipv4_tcp([10, 99, 0, 2], 8080), &vip), "another address");
        let cut = &ipv4_tcp([10, 99, 0, 1], 8080)[..36];
        assert!(to_vip(cut, &vip), "too short to show the port: the address decides");
        let mut udp = ipv4_tcp([10, 99, 0, 1], 8080);
        udp[14 + 9] = 17;
        assert!(!to_vip(&udp, &vip), "UDP to a TCP VIP");
        assert!(!to_vip(&[0u8; 10], &vip));
    }

    #[test]
    fn every_kind_has_a_name_and_a_drop_names_its_counter() {
        for (name, bit) in [("drop", capture::DROP), ("handoff", capture::HANDOFF), ("miss", capture::MISS), ("icmp", capture::ICMP)] {
            assert_eq!(what_of(name), Some(bit));
        }
        assert_eq!(what_of("all"), Some(capture::ALL));
        assert_eq!(what_of("everything"), None);
        let meta = CaptureMeta { what: capture::DROP, reason: Counter::DropBadL4Header as u32, ..Default::default() };
        assert_eq!(reason_of(&meta), "drop: drop_bad_l4_header");
    }
}
