//! BIRD, driven by `lb`: render the include file that lists the VIP prefixes to announce, write it
//! atomically, and ask BIRD over its control socket to check and load the configuration.
//!
//! Control-socket replies (BIRD's nest/cli.c, doc/reply_codes): each line starts with a 4-digit
//! code followed by '-' (more lines follow) or ' ' (last line); a line starting with a space
//! continues the previous one. 0xxx is success, 8xxx a runtime error, 9xxx a parse error.

use std::{net::IpAddr, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok {
        code: u16,
        text: String,
    },
    /// 8xxx: the command ran and failed (e.g. 8002 configuration file error).
    RuntimeError {
        code: u16,
        text: String,
    },
    /// 9xxx: the command was not understood.
    ParseError {
        code: u16,
        text: String,
    },
}

impl Reply {
    pub fn code(&self) -> u16 {
        match self {
            Reply::Ok { code, .. } | Reply::RuntimeError { code, .. } | Reply::ParseError { code, .. } => *code,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("BIRD control socket {path}")]
    Socket {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BIRD control socket {path}: no answer within {after:?} ({step})")]
    Timeout { path: String, step: &'static str, after: Duration },
    #[error("BIRD said {code}: {text}")]
    Refused { code: u16, text: String },
    #[error("unexpected reply line from BIRD: {0:?}")]
    Garbled(String),
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One line of a reply.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// "CODE-text": more lines follow; "CODE text": the last line.
    Coded { code: u16, last: bool, text: &'a str },
    /// " text": continues the previous line.
    Continued(&'a str),
}

/// Classifies one line; anything else is `Garbled` (never a panic, whatever the bytes).
fn parse_line(line: &str) -> Result<Line<'_>, BirdError> {
    if let Some(rest) = line.strip_prefix(' ') {
        return Ok(Line::Continued(rest));
    }
    let bytes = line.as_bytes();
    let garbled = || BirdError::Garbled(line.to_owned());
    if bytes.len() < 5 || !bytes[..4].iter().all(u8::is_ascii_digit) {
        return Err(garbled());
    }
    let last = match bytes[4] {
        b' ' => true,
        b'-' => false,
        _ => return Err(garbled()),
    };
    // Bytes 0..5 are ASCII, so 4 and 5 are character boundaries.
    let code = line[..4].parse().map_err(|_| garbled())?;
    Ok(Line::Coded { code, last, text: &line[5..] })
}

/// The longest reply line, and the most a whole reply may hold: far above what the commands
/// lb sends get back (a few lines), so a confused peer on the socket cannot grow lb's memory.
pub const MAX_LINE: usize = 16 * 1024;
pub const MAX_REPLY: usize = 1024 * 1024;

/// Reads lines until the last line of a reply and classifies it.
pub async fn read_reply(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<Reply, BirdError> {
    use tokio::io::AsyncReadExt as _;
    let mut text = Vec::new();
    let mut buf = Vec::new();
    let mut total = 0;
    loop {
        buf.clear();
        let mut line_limited = (&mut *reader).take(MAX_LINE as u64 + 1);
        let n = line_limited.read_until(b'\n', &mut buf).await.map_err(|source| BirdError::Socket { path: "(reading)".into(), source })?;
        if n == 0 {
            return Err(BirdError::Garbled("connection closed".into()));
        }
        total += n;
        if n > MAX_LINE || total > MAX_REPLY {
            return Err(BirdError::Garbled(format!("a reply line over {MAX_LINE} bytes or a reply over {MAX_REPLY} bytes")));
        }
        let line = std::str::from_utf8(&buf).map_err(|_| BirdError::Garbled(String::from_utf8_lossy(&buf).into_owned()))?;
        let line = line.strip_suffix('\n').unwrap_or(line);
        match parse_line(line)? {
            Line::Continued(rest) => text.push(rest.to_owned()),
            Line::Coded { code, last, text: t } => {
                text.push(t.to_owned());
                if last {
                    let text = text.join("\n");
                    return Ok(match code {
                        0..=7999 => Reply::Ok { code, text },
                        8000..=8999 => Reply::RuntimeError { code, text },
                        _ => Reply::ParseError { code, text },
                    });
                }
            }
        }
    }
}

/// Sends one command and returns its reply; connecting, each write and each reply are bounded
/// by `limit` (a frozen BIRD costs this task `limit`, never the daemon's state loop).
pub async fn command(socket: &Path, cmd: &str, limit: Duration) -> Result<Reply, BirdError> {
    let path = socket.display().to_string();
    let bounded = |step: &'static str| BirdError::Timeout { path: path.clone(), step, after: limit };
    let err = |source| BirdError::Socket { path: path.clone(), source };
    let stream = tokio::time::timeout(limit, UnixStream::connect(socket)).await.map_err(|_| bounded("connect"))?.map_err(err)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    tokio::time::timeout(limit, read_reply(&mut reader)).await.map_err(|_| bounded("greeting"))??; // 0001
    tokio::time::timeout(limit, write.write_all(format!("{cmd}\n").as_bytes())).await.map_err(|_| bounded("write"))?.map_err(err)?;
    tokio::time::timeout(limit, read_reply(&mut reader)).await.map_err(|_| bounded("reply"))?
}

/// What BIRD should announce for one VIP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub prefix: IpAddr,
    /// Announce with AS-path prepend (healthy capacity under the steering threshold).
    pub prepend: bool,
    /// Announce with the GRACEFUL_SHUTDOWN community (RFC 8326): the withdrawal follows.
    pub graceful_shutdown: bool,
}

/// The include file `lb` owns: one static protocol per family with the announced prefixes, and
/// the set of prefixes to prepend. An empty file content still defines everything bird.conf uses.
pub fn render(announce: &[Announcement]) -> String {
    let mut v4: Vec<&Announcement> = announce.iter().filter(|a| a.prefix.is_ipv4()).collect();
    let mut v6: Vec<&Announcement> = announce.iter().filter(|a| a.prefix.is_ipv6()).collect();
    v4.sort();
    v6.sort();
    let routes =
        |list: &[&Announcement], len: u8| -> String { list.iter().map(|a| format!("  route {}/{len} blackhole;\n", a.prefix)).collect() };
    let set = |list: &[&Announcement], len: u8, member: fn(&Announcement) -> bool| -> String {
        let items: Vec<String> = list.iter().filter(|a| member(a)).map(|a| format!("{}/{len}", a.prefix)).collect();
        items.join(", ")
    };
    // BIRD rejects an empty set literal; a prefix no VIP uses stands in for "none".
    let or_none = |s: String, none: &str| if s.is_empty() { none.to_owned() } else { s };
    format!(
        "# Written by lb (anycast-lb); do not edit: it is replaced on every change.\n\
         # VIP prefixes announced now ({} IPv4, {} IPv6).\n\
         define LB_PREPEND_V4 = [ {} ];\n\
         define LB_PREPEND_V6 = [ {} ];\n\
         # Announced with GRACEFUL_SHUTDOWN (65535:0): about to be withdrawn.\n\
         define LB_GSHUT_V4 = [ {} ];\n\
         define LB_GSHUT_V6 = [ {} ];\n\
         protocol static lb_vips4 {{\n  ipv4;\n{}}}\n\
         protocol static lb_vips6 {{\n  ipv6;\n{}}}\n",
        v4.len(),
        v6.len(),
        or_none(set(&v4, 32, |a| a.prepend), "0.0.0.0/32"),
        or_none(set(&v6, 128, |a| a.prepend), "::/128"),
        or_none(set(&v4, 32, |a| a.graceful_shutdown), "0.0.0.0/32"),
        or_none(set(&v6, 128, |a| a.graceful_shutdown), "::/128"),
        routes(&v4, 32),
        routes(&v6, 128),
    )
}

/// Writes the include file durably (`durable::write`), then `configure check` and `configure`,
/// each bounded by `limit`.
pub async fn apply(include: &Path, socket: &Path, content: &str, limit: Duration) -> Result<(), BirdError> {
    let werr = |source| BirdError::Write { path: include.display().to_string(), source };
    crate::durable::write_async(include.to_owned(), content.as_bytes().to_vec()).await.map_err(werr)?;
    for cmd in ["configure check", "configure"] {
        match command(socket, cmd, limit).await? {
            Reply::Ok { .. } => {}
            Reply::RuntimeError { code, text } | Reply::ParseError { code, text } => return Err(BirdError::Refused { code, text }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Result<Reply, BirdError> {
        reply_bytes(text.as_bytes())
    }

    fn reply_bytes(bytes: &[u8]) -> Result<Reply, BirdError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(read_reply(&mut BufReader::new(bytes)))
    }

    #[test]
    fn replies_are_classified_by_code() {
        assert_eq!(reply("0003 Reconfigured\n").unwrap(), Reply::Ok { code: 3, text: "Reconfigured".into() });
        assert_eq!(reply("0020 Configuration OK\n").unwrap().code(), 20);
        assert!(matches!(reply("8002 /etc/bird.conf:3:1 syntax error\n").unwrap(), Reply::RuntimeError { code: 8002, .. }));
        assert!(matches!(reply("9001 syntax error, unexpected CF_SYM_UNDEFINED\n").unwrap(), Reply::ParseError { code: 9001, .. }));
    }

    #[test]
    fn multi_line_replies_end_at_the_space_line() {
        let r = reply("0002-Reading configuration from /etc/bird.conf\n continued\n0003 Reconfigured\n0001 next\n").unwrap();
        assert_eq!(r, Reply::Ok { code: 3, text: "Reading configuration from /etc/bird.conf\ncontinued\nReconfigured".into() });
    }

    #[test]
    fn overlong_lines_and_replies_are_refused() {
        let long_line = format!("0001-{}\n0000 done\n", "x".repeat(MAX_LINE));
        assert!(matches!(reply(&long_line), Err(BirdError::Garbled(e)) if e.contains("over")));
        let many = "0001-a line of text that is not short\n".repeat(MAX_REPLY / 30) + "0000 done\n";
        assert!(matches!(reply(&many), Err(BirdError::Garbled(e)) if e.contains("over")));
        assert!(matches!(reply(&format!("0001-{}\n0000 done\n", "x".repeat(MAX_LINE - 10))), Ok(Reply::Ok { .. })));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(reply("hello\n"), Err(BirdError::Garbled(_))));
        assert!(matches!(reply("0002-only a first line\n"), Err(BirdError::Garbled(_))));
        // The fifth byte starts a multi-byte character: this panicked (slicing at byte 5).
        assert!(matches!(reply("0001\u{e9}t\u{e9}\n"), Err(BirdError::Garbled(_))));
        assert!(matches!(reply("12\n"), Err(BirdError::Garbled(_))));
        assert!(matches!(reply_bytes(b"0001 \xff\xfe\n"), Err(BirdError::Garbled(_))));
    }

    /// Arbitrary bytes from the socket give a reply or an error, never a panic: 20,000 random
    /// strings, most built from the protocol's own pieces so that they get past the first line.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x5eed_b12d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let pieces: [&[u8]; 10] =
            [b"0001", b"8002", b"9999", b" ", b"-", b"\n", "\u{e9}".as_bytes(), b"\xff", b"x", "\u{1f600}".as_bytes()];
        let (mut ok, mut err) = (0, 0);
        for _ in 0..20_000 {
            let len = next() % 24;
            let bytes: Vec<u8> = (0..len)
                .flat_map(|_| {
                    let r = next();
                    if r % 4 == 0 {
                        vec![(r >> 8) as u8]
                    } else {
                        pieces[(r >> 8) as usize % pieces.len()].to_vec()
                    }
                })
                .collect();
            match reply_bytes(&bytes) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
        assert!(ok > 100 && err > 100, "both outcomes exercised: {ok} replies, {err} errors");
    }

    #[test]
    fn a_silent_socket_times_out() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("lb-bird-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&socket);
        // Accepts and never says a word, like a frozen BIRD.
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let started = std::time::Instant::now();
        let result = rt.block_on(command(&socket, "configure", Duration::from_millis(200)));
        assert!(matches!(result, Err(BirdError::Timeout { step: "greeting", .. })), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn render_matches_the_golden_file() {
        let announce = [
            Announcement { prefix: "10.99.0.2".parse().unwrap(), prepend: true, graceful_shutdown: false },
            Announcement { prefix: "10.99.0.1".parse().unwrap(), prepend: false, graceful_shutdown: true },
            Announcement { prefix: "2001:db8::10".parse().unwrap(), prepend: false, graceful_shutdown: false },
        ];
        let golden = include_str!("../../../bird-config/testdata/vips.conf");
        assert_eq!(render(&announce), golden);
        let empty = include_str!("../../../bird-config/testdata/vips-empty.conf");
        assert_eq!(render(&[]), empty);
    }
}
