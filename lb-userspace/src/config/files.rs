//! The files a config names, checked the way `lb run` reads them, so that `lb check-config`
//! refuses what `lb run` would: the API token file.

use std::{path::Path, sync::Arc};

use super::{
    error::{ConfigError, Problem},
    raw::RawVip,
    types::Config,
};

/// QUIC-LB keys by the file they were read from.
pub type QuicKeys = std::collections::BTreeMap<std::path::PathBuf, [u8; 16]>;

/// The QUIC-LB key files, read (off the loop that owns the state): each readable only by its
/// owner and holding 32 hex digits.
pub fn read_quic_keys<'a>(files: impl IntoIterator<Item = &'a Path>) -> Result<QuicKeys, ConfigError> {
    let field = "vip.quic_lb.key_file";
    let mut keys = QuicKeys::new();
    for file in files {
        let text = read_secret(file, field, "key", 32)?;
        let key = crate::quic_lb::parse_hex(&text)
            .and_then(|octets| <[u8; 16]>::try_from(octets).ok())
            .ok_or_else(|| refuse(field, format!("{} does not hold a 16-octet key as 32 hex digits", file.display())))?;
        keys.insert(file.to_path_buf(), key);
    }
    Ok(keys)
}

/// The QUIC-LB key files a file's (or fleet document's) VIPs name.
pub fn quic_key_files(vips: &[RawVip]) -> impl Iterator<Item = &Path> {
    vips.iter().filter_map(|v| v.quic_lb.as_ref()?.key_file.as_deref()).map(Path::new)
}

impl Config {
    /// Gives each QUIC-LB VIP with a key file its key from `keys`; a file not read is an error
    /// (`lb vip add` cannot bring one: the key is read where the config or fleet document is).
    pub fn attach_quic_keys(&mut self, keys: &QuicKeys) -> Result<(), ConfigError> {
        for vip in &mut self.vips {
            let Some(q) = vip.quic_lb.as_mut() else { continue };
            if let Some(file) = &q.key_file {
                let key = keys.get(file).ok_or_else(|| {
                    refuse(
                        "vip.quic_lb.key_file",
                        format!("VIP {:?}: the key in {} was not read with this config", vip.name, file.display()),
                    )
                })?;
                q.key = Some(*key);
            }
        }
        Ok(())
    }
}

/// The shortest token the TCP API accepts.
pub const MIN_TOKEN_LEN: usize = 16;

/// The bearer token in `file`: readable only by its owner, at least `MIN_TOKEN_LEN` characters
/// once surrounding whitespace is trimmed.
pub fn read_token(file: &Path) -> Result<Arc<str>, ConfigError> {
    read_secret(file, "api.token_file", "token", MIN_TOKEN_LEN)
}

/// A secret (`what`) in `file`, named by the config field that gives the file: readable only by
/// its owner, at least `min_len` characters once surrounding whitespace is trimmed.
pub fn read_secret(file: &Path, field: &str, what: &str, min_len: usize) -> Result<Arc<str>, ConfigError> {
    let bytes = read_private(file, field)?;
    let shown = file.display();
    let token = String::from_utf8(bytes).map_err(|_| refuse(field, format!("{shown} is not UTF-8")))?;
    let token = token.trim();
    if token.len() < min_len {
        return Err(refuse(field, format!("the {what} in {shown} is shorter than {min_len} characters (blank space does not count)")));
    }
    Ok(token.into())
}

/// A file only its owner may read (a password, a private key), named by the config `field`.
pub fn read_private(file: &Path, field: &str) -> Result<Vec<u8>, ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = file.display();
    let meta = std::fs::metadata(file).map_err(|e| refuse(field, format!("{shown}: {e}")))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(refuse(field, format!("{shown} is readable by others (mode {:o}): chmod 600 it", mode & 0o777)));
    }
    read_file(file, field)
}

/// A file the config `field` names.
pub fn read_file(file: &Path, field: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(file).map_err(|e| refuse(field, format!("{}: {e}", file.display())))
}

fn refuse(field: &str, reason: String) -> ConfigError {
    ConfigError::Invalid { problems: vec![Problem { field: field.into(), reason }] }
}

/// Every file `config` names that `lb run` reads at start.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    read_quic_keys(config.vips.iter().filter_map(|v| v.quic_lb.as_ref()?.key_file.as_deref()))?;
    if let Some(file) = &config.api.token_file {
        read_token(file)?;
    }
    if let Some(file) = config.fleet.as_ref().and_then(|f| f.password_file.as_ref()) {
        read_secret(file, "fleet.password_file", "password", 1)?;
    }
    if let Some(tls) = config.fleet.as_ref().and_then(|f| f.tls.as_ref()) {
        read_file(&tls.ca_file, "fleet.ca_file")?;
        if let Some((cert, key)) = &tls.client {
            read_file(cert, "fleet.cert_file")?;
            read_private(key, "fleet.key_file")?;
        }
    }
    Ok(())
}
