//! The CLI's side of the admin API: where `lb run` listens (its admin socket, or TCP with a
//! token), and requests that expect a 200.

use anyhow::{bail, Context as _, Result};

use super::args::Target;
use crate::{
    config::default_api_socket,
    http::{self, Call, Endpoint, HttpError},
};

/// A running `lb`'s admin API.
pub(super) struct AdminClient {
    endpoint: Endpoint,
    /// `Authorization: Bearer` for TCP, read from `--token-file`.
    token: Option<String>,
    instance: String,
}

impl AdminClient {
    pub(super) fn new(target: &Target) -> Result<Self> {
        let instance = target.instance_name().to_owned();
        let (endpoint, token) = match target.api {
            Some(api) => {
                let token = match &target.token_file {
                    Some(file) => {
                        Some(std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?.trim().to_owned())
                    }
                    None => None,
                };
                (Endpoint::Tcp(api), token)
            }
            None => (Endpoint::Unix(target.socket.clone().unwrap_or_else(|| default_api_socket(&instance))), None),
        };
        Ok(Self { endpoint, token, instance })
    }

    /// GET `path`: the body of a 200, else the error lb answered.
    pub(super) fn get(&self, path: &str) -> Result<String> {
        self.call(Call::new("GET", path))
    }

    /// GET `path`, waiting up to `limit` for the answer.
    pub(super) fn get_within(&self, path: &str, limit: std::time::Duration) -> Result<String> {
        self.call(Call { limit, ..Call::new("GET", path) })
    }

    /// POST `path` with a JSON `body`: the body of a 200, else the error lb answered.
    pub(super) fn post(&self, path: &str, body: Option<String>) -> Result<String> {
        self.call(Call { body: Some(body.unwrap_or_default()), ..Call::new("POST", path) })
    }

    fn call(&self, mut call: Call<'_>) -> Result<String> {
        if let Some(token) = &self.token {
            call.headers.push(("authorization", format!("Bearer {token}")));
        }
        let reply = http::request_blocking(&self.endpoint, call).map_err(|e| match (e, &self.endpoint) {
            (HttpError::Connect { source, .. }, Endpoint::Unix(socket)) => anyhow::Error::new(source).context(format!(
                "connecting to lb's admin socket {} (is `lb run` of instance {:?} running, and may this user use it?)",
                socket.display(),
                self.instance
            )),
            (HttpError::Connect { source, .. }, Endpoint::Tcp(api)) => {
                anyhow::Error::new(source).context(format!("connecting to lb's API at {api}"))
            }
            (other, _) => anyhow::Error::new(other).context("asking lb"),
        })?;
        if reply.status != 200 {
            bail!("lb answered {}: {}", reply.status, reply.body.trim());
        }
        Ok(reply.body)
    }
}
