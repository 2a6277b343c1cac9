//! QUIC servers and clients for the QUIC-LB migration test (tests/tests/quic_migration.rs), built
//! on quinn.
//!
//! - `quic_peer cert DIR`: a self-signed certificate for "lb-test" (cert.der, key.der).
//! - `quic_peer server --listen VIP:PORT --name NAME --cert-dir DIR --offer ADDR:PORT`: asks
//!   `lb backend`'s endpoint at ADDR:PORT for `/quic-lb`, and issues every connection ID through
//!   QUIC-LB with this host's server ID (the key from the key file when encrypted); answers each
//!   stream with NAME.
//! - `quic_peer client --connect VIP:PORT --cert-dir DIR --conns N --rebind-to ADDR`: opens N
//!   connections, each from its own port, asks each who answers, moves each to a new socket on
//!   ADDR (a new port, or a new address), asks again; prints one JSON line:
//!   `{"before": [names], "after": [names or "error: .."]}`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use lb_userspace::{backend::QuicLbOffer, quic_lb::QuicLbConfig};
use quinn::{
    crypto::rustls::{QuicClientConfig, QuicServerConfig},
    ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, TokioRuntime, TransportConfig,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const SERVER_NAME: &str = "lb-test";
/// How long a client waits for an answer, and how long an idle connection lives.
const ANSWER_WAIT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| -> Result<String> {
        let at = args.iter().position(|a| a == name).with_context(|| format!("{name} is required"))?;
        args.get(at + 1).cloned().with_context(|| format!("{name} needs a value"))
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match args.first().map(String::as_str) {
        Some("cert") => write_cert(Path::new(args.get(1).context("cert DIR")?)),
        Some("server") => {
            let offer = fetch_offer(&flag("--offer")?, flag("--listen")?.parse()?)?;
            rt.block_on(server(flag("--listen")?.parse()?, flag("--name")?, &PathBuf::from(flag("--cert-dir")?), offer))
        }
        Some("client") => rt.block_on(client(
            flag("--connect")?.parse()?,
            &PathBuf::from(flag("--cert-dir")?),
            flag("--conns")?.parse()?,
            flag("--rebind-to")?.parse()?,
        )),
        _ => bail!("usage: quic_peer cert DIR | server .. | client .. (see the source's header)"),
    }
}

fn write_cert(dir: &Path) -> Result<()> {
    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cert.der"), cert.cert.der())?;
    std::fs::write(dir.join("key.der"), cert.signing_key.serialize_der())?;
    Ok(())
}

/// `GET /quic-lb` from `lb backend` at `endpoint`: the entry for `vip`.
fn fetch_offer(endpoint: &str, vip: SocketAddr) -> Result<QuicLbOffer> {
    let mut conn = std::net::TcpStream::connect(endpoint).with_context(|| format!("connecting to lb backend at {endpoint}"))?;
    conn.write_all(b"GET /quic-lb HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).context("no body in /quic-lb's answer")?;
    let offers: Vec<QuicLbOffer> = serde_json::from_str(body).context("parsing /quic-lb")?;
    offers.into_iter().find(|o| o.vip == vip).with_context(|| format!("/quic-lb has no entry for {vip}"))
}

/// Issues QUIC-LB connection IDs: this host's server ID, a fresh random nonce each.
struct QuicLbIds {
    codec: QuicLbConfig,
    server_id: Vec<u8>,
}

impl ConnectionIdGenerator for QuicLbIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random)).expect("/dev/urandom");
        let nonce = &random[..self.codec.nonce_len as usize];
        let extra = &random[16..];
        ConnectionId::new(&self.codec.encode(&self.server_id, nonce, random[31], extra))
    }

    fn cid_len(&self) -> usize {
        self.codec.cid_len as usize
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// rustls on ring: it builds without a C toolchain, and a test's key exchange need not resist
/// quantum computers (why rustls deprecates ring's default provider).
#[allow(deprecated)]
fn crypto() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout")));
    Arc::new(t)
}

async fn server(listen: SocketAddr, name: String, cert_dir: &Path, offer: QuicLbOffer) -> Result<()> {
    let key = match (&offer.key, &offer.key_file) {
        (Some(hex), _) => Some(parse_key(hex)?),
        (None, Some(file)) => Some(parse_key(&std::fs::read_to_string(file)?)?),
        (None, None) => None,
    };
    let server_id = lb_userspace::quic_lb::parse_hex(offer.server_ids.first().context("no server ID offered")?).context("server ID")?;
    let codec = offer.codec(key);
    let mut endpoint_config = EndpointConfig::default();
    endpoint_config.cid_generator(move || Box::new(QuicLbIds { codec: codec.clone(), server_id: server_id.clone() }));
    let cert = CertificateDer::from(std::fs::read(cert_dir.join("cert.der"))?);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(std::fs::read(cert_dir.join("key.der"))?));
    let tls = rustls::ServerConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    server_config.transport_config(transport());
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    let endpoint = Endpoint::new(endpoint_config, Some(server_config), socket, Arc::new(TokioRuntime))?;
    eprintln!("quic_peer server {name} on {listen}, server ID {}", offer.server_ids[0]);
    while let Some(incoming) = endpoint.accept().await {
        let name = name.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                if recv.read_to_end(64).await.is_err() {
                    return;
                }
                let _ = send.write_all(name.as_bytes()).await;
                let _ = send.finish();
            }
        });
    }
    Ok(())
}

fn parse_key(hex: &str) -> Result<[u8; 16]> {
    lb_userspace::quic_lb::parse_hex(hex).and_then(|k| k.try_into().ok()).context("a key of 32 hex digits")
}

/// Who answers on `conn`: the server's name, or the error.
async fn ask(conn: &quinn::Connection) -> String {
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"who").await?;
        send.finish()?;
        anyhow::Ok(String::from_utf8_lossy(&recv.read_to_end(64).await?).into_owned())
    };
    match tokio::time::timeout(ANSWER_WAIT, exchange).await {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => format!("error: no answer within {ANSWER_WAIT:?}"),
    }
}

async fn ask_all(conns: &[quinn::Connection]) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.iter().enumerate() {
        let conn = conn.clone();
        tasks.spawn(async move { (i, ask(&conn).await) });
    }
    let mut answers = vec![String::new(); conns.len()];
    while let Some(Ok((i, answer))) = tasks.join_next().await {
        answers[i] = answer;
    }
    answers
}

async fn client(vip: SocketAddr, cert_dir: &Path, conns: usize, rebind_to: IpAddr) -> Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(std::fs::read(cert_dir.join("cert.der"))?))?;
    let tls = rustls::ClientConfig::builder_with_provider(crypto())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport());
    // An endpoint (a socket, a client port) per connection, as separate clients would have:
    // the ring spreads their handshakes over the backends.
    let unspecified: IpAddr = if vip.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    let mut endpoints = Vec::new();
    let mut opened = Vec::new();
    for _ in 0..conns {
        let mut endpoint = Endpoint::client(SocketAddr::new(unspecified, 0))?;
        endpoint.set_default_client_config(config.clone());
        let conn = tokio::time::timeout(ANSWER_WAIT, endpoint.connect(vip, SERVER_NAME)?).await.context("handshake timed out")??;
        opened.push(conn);
        endpoints.push(endpoint);
    }
    let before = ask_all(&opened).await;
    // The client's address changes under every connection: a new port, or a new address.
    for endpoint in &endpoints {
        endpoint.rebind(UdpSocket::bind(SocketAddr::new(rebind_to, 0))?)?;
    }
    let after = ask_all(&opened).await;
    println!("{}", serde_json::json!({ "before": before, "after": after }));
    for conn in &opened {
        conn.close(0u32.into(), b"done");
    }
    for endpoint in &endpoints {
        endpoint.wait_idle().await;
    }
    Ok(())
}
