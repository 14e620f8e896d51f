//! How a command fails: [`Failure`], and the rendering of the library's errors into it (reading
//! the model file, diagnostics with `file:line:col` and a caret). `main` turns it into the exit
//! code.

use std::io;
use std::path::Path;

use pathc::diag;

/// Why a command did not succeed; `main` turns it into the exit code.
pub enum Failure {
    /// Bad input, its message rendered: exit 2.
    BadInput(String),
    /// A check that ran and failed: exit 1, its report already printed.
    Check,
    /// Reading or writing failed: exit 2, or 0 quietly for a broken pipe.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

/// A computed value that is not a number is bad input (the weights overflow): exit 2, saying
/// where it arose.
impl From<pathc::linalg::NonFinite> for Failure {
    fn from(e: pathc::linalg::NonFinite) -> Failure {
        Failure::BadInput(format!("error: {e}"))
    }
}

/// A path table's or a check's failure (a non-finite value) is bad input: exit 2.
impl From<pathc::eval::EvalError> for Failure {
    fn from(e: pathc::eval::EvalError) -> Failure {
        Failure::BadInput(format!("error: {e}"))
    }
}

pub fn read_model(path: &Path) -> Result<String, Failure> {
    pathc::syntax::read_source(path).map_err(|e| Failure::BadInput(e.render(&path.display().to_string())))
}

/// Renders a library error for the terminal: diagnostics with `file:line:col` and a caret.
pub fn render(path: &Path, source: &str, error: &pathc::Error) -> Failure {
    let diagnostics = error.diagnostics();
    let text = if diagnostics.is_empty() {
        format!("error: {error}")
    } else {
        diag::render(&path.display().to_string(), source, diagnostics)
    };
    Failure::BadInput(text)
}
