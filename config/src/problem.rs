//! A validation finding that names the file, the field path and the fix.

use std::fmt;
use std::path::PathBuf;

/// How bad a finding is. Errors stop every command before any work starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in one file, e.g. `cluster.yaml: nodes[2].ip: ... (fix: ...)`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub file: PathBuf,
    /// Field path such as `nodes[3].ip`, or empty for the whole file.
    pub path: String,
    pub message: String,
    pub fix: String,
}

/// The longest message a problem carries: a value pasted into a file (a
/// 50 MB string, a whole certificate) is echoed only in part.
const MAX_MESSAGE: usize = 300;

/// `text` cut to [`MAX_MESSAGE`] characters, saying how much was left out.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} more bytes not shown)", &text[..cut], text.len() - cut),
    }
}

impl Problem {
    pub(crate) fn error(file: impl Into<PathBuf>, path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Problem::new(Severity::Error, file.into(), path.into(), message.into(), fix.into())
    }

    pub(crate) fn warning(file: impl Into<PathBuf>, path: impl Into<String>, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Problem::new(Severity::Warning, file.into(), path.into(), message.into(), fix.into())
    }

    fn new(severity: Severity, file: PathBuf, path: String, message: String, fix: String) -> Self {
        Problem {
            severity,
            file,
            path: clip(&path),
            message: clip(&message),
            fix,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{kind}: {}", self.file.display())?;
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)?;
        if !self.fix.is_empty() {
            write!(f, " (fix: {})", self.fix)?;
        }
        Ok(())
    }
}

/// Every problem found in a file, errors first. Returned when any is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Problem::is_error)
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.0.iter().filter(|p| p.is_error()).count();
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        write!(f, "{errors} error(s), {} warning(s)", self.0.len() - errors)
    }
}

impl std::error::Error for Problems {}
