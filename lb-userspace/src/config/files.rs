//! The files a config names, checked the way `lb run` reads them, so that `lb check-config`
//! refuses what `lb run` would: the API token file.

use std::{path::Path, sync::Arc};

use super::{
    error::{ConfigError, Problem},
    types::Config,
};

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
