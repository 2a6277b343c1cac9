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
    use std::os::unix::fs::PermissionsExt as _;
    let refuse = |reason: String| ConfigError::Invalid { problems: vec![Problem { field: field.into(), reason }] };
    let shown = file.display();
    let meta = std::fs::metadata(file).map_err(|e| refuse(format!("{shown}: {e}")))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(refuse(format!("{shown} is readable by others (mode {:o}): chmod 600 it", mode & 0o777)));
    }
    let token = std::fs::read_to_string(file).map_err(|e| refuse(format!("{shown}: {e}")))?;
    let token = token.trim();
    if token.len() < min_len {
        return Err(refuse(format!("the {what} in {shown} is shorter than {min_len} characters (blank space does not count)")));
    }
    Ok(token.into())
}

/// Every file `config` names that `lb run` reads at start.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    if let Some(file) = &config.api.token_file {
        read_token(file)?;
    }
    if let Some(file) = config.fleet.as_ref().and_then(|f| f.password_file.as_ref()) {
        read_secret(file, "fleet.password_file", "password", 1)?;
    }
    Ok(())
}
