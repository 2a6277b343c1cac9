//! BIRD, driven by `lb`: render the include file that lists the VIP prefixes to announce, write it
//! atomically, and ask BIRD over its control socket to check and load the configuration.
//!
//! Control-socket replies (BIRD's nest/cli.c, doc/reply_codes): each line starts with a 4-digit
//! code followed by '-' (more lines follow) or ' ' (last line); a line starting with a space
//! continues the previous one. 0xxx is success, 8xxx a runtime error, 9xxx a parse error.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
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

/// Reads lines until the last line of a reply and classifies it.
pub fn read_reply(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Result<Reply, BirdError> {
    let mut text = Vec::new();
    loop {
        let line = lines
            .next()
            .ok_or_else(|| BirdError::Garbled("connection closed".into()))?
            .map_err(|source| BirdError::Socket { path: "(reading)".into(), source })?;
        if let Some(rest) = line.strip_prefix(' ') {
            text.push(rest.to_owned()); // continuation of the previous line
            continue;
        }
        let (Some(code), Some(sep)) = (line.get(..4).and_then(|c| c.parse::<u16>().ok()), line.as_bytes().get(4)) else {
            return Err(BirdError::Garbled(line));
        };
        text.push(line[5..].to_owned());
        if *sep == b' ' {
            let text = text.join("\n");
            return Ok(match code {
                0..=7999 => Reply::Ok { code, text },
                8000..=8999 => Reply::RuntimeError { code, text },
                _ => Reply::ParseError { code, text },
            });
        }
        if *sep != b'-' {
            return Err(BirdError::Garbled(line));
        }
    }
}

/// Sends one command and returns its reply.
pub fn command(socket: &Path, cmd: &str) -> Result<Reply, BirdError> {
    let err = |source| BirdError::Socket { path: socket.display().to_string(), source };
    let stream = UnixStream::connect(socket).map_err(err)?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(err)?;
    let mut lines = BufReader::new(stream.try_clone().map_err(err)?).lines();
    read_reply(&mut lines)?; // 0001 greeting
    (&stream).write_all(format!("{cmd}\n").as_bytes()).map_err(err)?;
    read_reply(&mut lines)
}

/// What BIRD should announce for one VIP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Announcement {
    pub prefix: IpAddr,
    /// Announce with AS-path prepend (healthy capacity under the steering threshold).
    pub prepend: bool,
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
    let set = |list: &[&Announcement], len: u8| -> String {
        let items: Vec<String> = list.iter().filter(|a| a.prepend).map(|a| format!("{}/{len}", a.prefix)).collect();
        items.join(", ")
    };
    // BIRD rejects an empty set literal; a prefix no VIP uses stands in for "none".
    let or_none = |s: String, none: &str| if s.is_empty() { none.to_owned() } else { s };
    format!(
        "# Written by lb (anycast-lb); do not edit: it is replaced on every change.\n\
         # VIP prefixes announced now ({} IPv4, {} IPv6).\n\
         define LB_PREPEND_V4 = [ {} ];\n\
         define LB_PREPEND_V6 = [ {} ];\n\
         protocol static lb_vips4 {{\n  ipv4;\n{}}}\n\
         protocol static lb_vips6 {{\n  ipv6;\n{}}}\n",
        v4.len(),
        v6.len(),
        or_none(set(&v4, 32), "0.0.0.0/32"),
        or_none(set(&v6, 128), "::/128"),
        routes(&v4, 32),
        routes(&v6, 128),
    )
}

/// Writes the include file atomically (temp + rename), then `configure check` and `configure`.
pub fn apply(include: &Path, socket: &Path, content: &str) -> Result<(), BirdError> {
    let werr = |source| BirdError::Write { path: include.display().to_string(), source };
    if let Some(dir) = include.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp = include.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(werr)?;
    std::fs::rename(&tmp, include).map_err(werr)?;
    for cmd in ["configure check", "configure"] {
        match command(socket, cmd)? {
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
        read_reply(&mut text.lines().map(|l| Ok(l.to_owned())))
    }

    #[test]
    fn replies_are_classified_by_code() {
        assert_eq!(reply("0003 Reconfigured").unwrap(), Reply::Ok { code: 3, text: "Reconfigured".into() });
        assert_eq!(reply("0020 Configuration OK").unwrap().code(), 20);
        assert!(matches!(reply("8002 /etc/bird.conf:3:1 syntax error").unwrap(), Reply::RuntimeError { code: 8002, .. }));
        assert!(matches!(reply("9001 syntax error, unexpected CF_SYM_UNDEFINED").unwrap(), Reply::ParseError { code: 9001, .. }));
    }

    #[test]
    fn multi_line_replies_end_at_the_space_line() {
        let r = reply("0002-Reading configuration from /etc/bird.conf\n continued\n0003 Reconfigured\n0001 next").unwrap();
        assert_eq!(r, Reply::Ok { code: 3, text: "Reading configuration from /etc/bird.conf\ncontinued\nReconfigured".into() });
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(reply("hello"), Err(BirdError::Garbled(_))));
        assert!(matches!(reply("0002-only a first line"), Err(BirdError::Garbled(_))));
    }

    #[test]
    fn render_matches_the_golden_file() {
        let announce = [
            Announcement { prefix: "10.99.0.2".parse().unwrap(), prepend: true },
            Announcement { prefix: "10.99.0.1".parse().unwrap(), prepend: false },
            Announcement { prefix: "2001:db8::10".parse().unwrap(), prepend: false },
        ];
        let golden = include_str!("../../bird-config/testdata/vips.conf");
        assert_eq!(render(&announce), golden);
        let empty = include_str!("../../bird-config/testdata/vips-empty.conf");
        assert_eq!(render(&[]), empty);
    }
}
