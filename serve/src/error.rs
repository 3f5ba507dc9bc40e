//! The daemon library's errors, by whose fault they are: the configuration (the admin's,
//! with the line to fix), the state directory (damaged or of another version), or the
//! system (I/O).

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in the configuration file, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigIssue {
    /// An issue at byte `offset` of `text`, the contents of `path`.
    pub fn at(path: &Path, text: &str, offset: usize, message: String) -> ConfigIssue {
        let before = text.get(..offset.min(text.len())).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
        ConfigIssue {
            path: path.to_owned(),
            line,
            column,
            message,
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// What can go wrong in the daemon library.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid: every problem found, in file order.
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), lines(.0))]
    Config(Vec<ConfigIssue>),
    /// A file of the state directory is damaged or of a version this daemon does not know.
    #[error("the state directory: {0}")]
    State(String),
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

impl ServeError {
    /// An I/O error's wrapper, saying `what` was being done (with the path): for `map_err`.
    pub fn io(what: String) -> impl FnOnce(std::io::Error) -> ServeError {
        move |source| ServeError::Io { what, source }
    }
}

fn lines(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
