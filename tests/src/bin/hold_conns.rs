//! `hold_conns SECONDS COUNT ADDR...`: holds COUNT idle TCP connections to each ADDR for
//! SECONDS, opening a new one whenever the server closes one, as an unprivileged client
//! would to starve a listener. Prints one line per address: `ADDR opened N closed_by_server M
//! connect_failed K`. Bounded by SECONDS and by COUNT open at once per address.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

struct Target {
    addr: SocketAddr,
    open: Vec<TcpStream>,
    opened: u64,
    closed: u64,
    failed: u64,
}

impl Target {
    fn fill(&mut self, count: usize) {
        while self.open.len() < count {
            match TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)) {
                Ok(s) => {
                    let _ = s.set_nonblocking(true);
                    self.open.push(s);
                    self.opened += 1;
                }
                Err(_) => {
                    self.failed += 1;
                    return;
                }
            }
        }
    }

    /// Drops the connections the server closed.
    fn reap(&mut self) {
        let mut buf = [0u8; 64];
        let before = self.open.len();
        self.open.retain_mut(|s| matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
        self.closed += (before - self.open.len()) as u64;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [seconds, count, addrs @ ..] = args.as_slice() else {
        eprintln!("usage: hold_conns SECONDS COUNT ADDR...");
        std::process::exit(2);
    };
    let (seconds, count): (u64, usize) = (seconds.parse().expect("seconds"), count.parse().expect("count"));
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid rlimit pointers for the calls; the soft limit is raised to the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    let mut targets: Vec<Target> =
        addrs.iter().map(|a| Target { addr: a.parse().expect("address"), open: Vec::new(), opened: 0, closed: 0, failed: 0 }).collect();
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        for t in &mut targets {
            t.reap();
            t.fill(count);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for t in &targets {
        println!("{} opened {} closed_by_server {} connect_failed {} held_at_end {}", t.addr, t.opened, t.closed, t.failed, t.open.len());
    }
}
