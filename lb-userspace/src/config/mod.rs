//! The config file (TOML) -> validated domain types. Every problem is reported with the field it
//! is in and why, all at once; nothing touches the kernel (interface names are only looked up).
//! `lb.example.toml` at the repository root documents every field.
//!
//! - `raw`: the file as written (serde, with each field's default);
//! - `validate`: raw -> domain types, every problem named by its field;
//! - `types`: the domain types the rest of `lb` uses;
//! - `error`: what is wrong with a file;
//! - `files`: the files a config names (the token file), checked as `lb run` reads them;
//! - `load`: reading and parsing.

mod error;
mod files;
mod load;
mod raw;
#[cfg(test)]
mod tests;
mod types;
mod validate;

pub(crate) use self::{
    error::Problems,
    validate::{
        parse_prefix_len, usable_addresses, validate_instance, validate_interfaces, validate_listener_limits, validate_quic_lb,
        validate_server_id,
    },
};
pub use self::{
    error::{ConfigError, Problem},
    files::{check_files, quic_key_files, read_file, read_private, read_quic_keys, read_secret, read_token, QuicKeys},
    load::{format_mac, load, load_raw, parse, parse_raw},
    raw::*,
    types::*,
    validate::{interface_exists, ring_slots_needed},
};
