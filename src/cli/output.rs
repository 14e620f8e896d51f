//! Where and how results are written: the text-or-JSON choice most commands offer, the `-o FILE`
//! or standard output of `expand` and `codegen`, and [`write_atomically`] for `plot`.

use std::io::{self, BufWriter, Write};
use std::path::Path;

use clap::ValueEnum;

use super::failure::Failure;

/// `--format` of every command that prints a report: `text` or `json`.
#[derive(Clone, Copy, ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

fn cannot_write(path: &Path, e: io::Error) -> Failure {
    Failure::BadInput(format!("error: cannot write {}: {e}", path.display()))
}

/// A buffered writer to FILE (created, or truncated, at once: not atomic) or to standard output.
pub fn sink(output: Option<&Path>) -> Result<Box<dyn Write>, Failure> {
    Ok(match output {
        Some(path) => Box::new(BufWriter::new(std::fs::File::create(path).map_err(|e| cannot_write(path, e))?)),
        None => Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock())),
    })
}

/// Writes the whole of `bytes` to FILE (created or truncated: not atomic) or to standard output.
pub fn write(output: Option<&Path>, bytes: &[u8]) -> Result<(), Failure> {
    match output {
        Some(path) => std::fs::write(path, bytes).map_err(|e| cannot_write(path, e))?,
        None => io::stdout().lock().write_all(bytes)?,
    }
    Ok(())
}

/// Pretty JSON and a newline.
pub fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: `path` is either
/// untouched or complete, and no temporary file is left behind on error.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    let cannot = |e: io::Error| cannot_write(path, e);
    let name = path.file_name().ok_or_else(|| cannot(io::Error::other("not a file name")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(cannot(e))
        }
    }
}
