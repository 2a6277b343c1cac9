//! What is wrong with a config file: every problem with its field, or why it could not be read.

use std::fmt;

/// One problem in the file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{}", .problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

impl ConfigError {
    /// The problems of an invalid file (empty for read or syntax errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

/// Collects problems while validating.
#[derive(Default)]
pub(crate) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem { field: field.into(), reason: reason.into() });
    }

    /// `value` if nothing was found wrong.
    pub(crate) fn or<T>(self, value: impl FnOnce() -> T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(ConfigError::Invalid { problems: self.0 })
        }
    }
}
