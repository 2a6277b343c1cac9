//! A packet generator for benches and flood tests: raw frames out of an interface with AF_PACKET
//! and `sendmmsg`, bounded in count and in time.

use std::{
    ffi::CString,
    time::{Duration, Instant},
};

/// Frames handed to the kernel per `sendmmsg`.
const BATCH: usize = 256;

/// What `send` did.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    /// Frames the interface took.
    pub sent: usize,
    /// Frames it refused (a full transmit ring: a veth's is its peer's receive ring).
    pub refused: usize,
    pub took: Duration,
}

/// Sends `frames` round and round on `ifname` (in the calling thread's namespace), bypassing the
/// qdisc, until `count` frames were offered or `limit` passed.
pub fn send(ifname: &str, frames: &[Vec<u8>], count: usize, limit: Duration) -> Sent {
    assert!(!frames.is_empty(), "no frames to send");
    // SAFETY: plain socket calls with valid arguments; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    let bypass: libc::c_int = 1;
    // SAFETY: an int option of the right size.
    unsafe { libc::setsockopt(fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&bypass as *const libc::c_int).cast(), 4) };
    let name = CString::new(ifname).expect("interface name");
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    assert!(ifindex > 0, "no interface {ifname}");
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex;
    // SAFETY: addr is a sockaddr_ll of the size given.
    let rc = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());

    let mut iovs: Vec<libc::iovec> = frames.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero mmsghdr is valid; its iovec is set.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let start = Instant::now();
    let (mut sent, mut refused, mut next) = (0, 0, 0);
    while sent + refused < count && start.elapsed() < limit {
        let n = BATCH.min(msgs.len() - next).min(count - sent - refused);
        // SAFETY: msgs[next..next + n] are valid headers pointing at live frames.
        let done = unsafe { libc::sendmmsg(fd, msgs[next..].as_mut_ptr(), n as u32, 0) }.max(0) as usize;
        // Short: the frame after the ones sent was refused; it is skipped.
        let skipped = usize::from(done < n);
        sent += done;
        refused += skipped;
        next = (next + done + skipped) % msgs.len();
    }
    let took = start.elapsed();
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    Sent { sent, refused, took }
}
