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
    use std::os::unix::fs::PermissionsExt as _;
    let refuse = |reason: String| ConfigError::Invalid { problems: vec![Problem { field: "api.token_file".into(), reason }] };
    let shown = file.display();
    let meta = std::fs::metadata(file).map_err(|e| refuse(format!("{shown}: {e}")))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(refuse(format!("{shown} is readable by others (mode {:o}): chmod 600 it", mode & 0o777)));
    }
    let token = std::fs::read_to_string(file).map_err(|e| refuse(format!("{shown}: {e}")))?;
    let token = token.trim();
    if token.len() < MIN_TOKEN_LEN {
        return Err(refuse(format!("the token in {shown} is shorter than {MIN_TOKEN_LEN} characters (blank space does not count)")));
    }
    Ok(token.into())
}

/// Every file `config` names that `lb run` reads at start.
pub fn check_files(config: &Config) -> Result<(), ConfigError> {
    if let Some(file) = &config.api.token_file {
        read_token(file)?;
    }
    Ok(())
}
