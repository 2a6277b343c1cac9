//! Reading a config file: TOML -> the file as written -> validated.

use std::path::Path;

use super::{
    error::ConfigError,
    raw::RawConfig,
    types::{Config, InterfaceCheck},
};

pub fn load(path: &Path, interfaces: InterfaceCheck) -> Result<Config, ConfigError> {
    load_raw(path)?.validate(interfaces)
}

pub fn parse(text: &str, interfaces: InterfaceCheck) -> Result<Config, ConfigError> {
    parse_raw(text)?.validate(interfaces)
}

/// The file as written, not yet validated (the daemon merges run-time changes into it).
pub fn parse_raw(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax { path: "config".into(), message: e.to_string() })
}

pub fn load_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse_raw(&text).map_err(|e| match e {
        ConfigError::Syntax { message, .. } => ConfigError::Syntax { path: path.display().to_string(), message },
        other => other,
    })
}

/// `02:00:00:00:00:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
