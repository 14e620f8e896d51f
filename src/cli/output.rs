//! Where and how results are written: the text-or-JSON choice most commands offer, and the
//! `-o FILE` of `expand`, `codegen` and `plot` ([`OutputFile`]), or standard output.
//!
//! **Invariant:** a file the user names is replaced only by a complete result. A regular file
//! (or a new one) is written to a temporary file beside it and renamed over it once complete,
//! keeping its permissions and owner; a symbolic link is followed and its target replaced so;
//! a device, FIFO or socket (`/dev/stdout`, `/dev/null`) is written through; a read-only file or
//! a directory is refused before anything is written. Commands open their output only once the
//! result is known to exist (after any refusal), and a failure or an interruption before the
//! rename leaves the named file as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use clap::ValueEnum;

use super::failure::Failure;

/// `--format` of every command that prints a report: `text` or `json`.
#[derive(Clone, Copy, ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

/// `--format` of the commands that also write CSV over a dataset (`paths`, `scores`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextJsonCsv {
    Text,
    Json,
    /// Comma-separated values, for pandas (with `--dataset` only).
    Csv,
}

impl TextJsonCsv {
    /// The text-or-JSON choice of a one-prompt report; CSV is refused there.
    pub fn single(self) -> Result<TextOrJson, Failure> {
        match self {
            TextJsonCsv::Text => Ok(TextOrJson::Text),
            TextJsonCsv::Json => Ok(TextOrJson::Json),
            TextJsonCsv::Csv => Err(Failure::BadInput(
                "error: --format csv is the table of a --dataset run; one prompt's report is text or json".to_string(),
            )),
        }
    }
}

/// `--rank` of a dataset table.
#[derive(Clone, Copy, ValueEnum)]
pub enum RankArg {
    /// By |mean contribution| (the default).
    Mean,
    /// By the mean of |contribution|.
    Abs,
    /// By the standard deviation over the prompts.
    Std,
}

impl From<RankArg> for pathc::emit::dataset::Rank {
    fn from(rank: RankArg) -> pathc::emit::dataset::Rank {
        match rank {
            RankArg::Mean => pathc::emit::dataset::Rank::Mean,
            RankArg::Abs => pathc::emit::dataset::Rank::Abs,
            RankArg::Std => pathc::emit::dataset::Rank::Std,
        }
    }
}

/// What a dataset table is ranked by: `--rank` if given; else text ranks by |mean|, and JSON and
/// CSV keep path order unless `--top` asks for the largest.
pub fn dataset_rank(
    rank: Option<RankArg>,
    format: TextJsonCsv,
    top: Option<usize>,
) -> Option<pathc::emit::dataset::Rank> {
    match (rank, format, top) {
        (Some(r), _, _) => Some(r.into()),
        (None, TextJsonCsv::Text, _) | (None, _, Some(_)) => Some(pathc::emit::dataset::Rank::Mean),
        (None, _, None) => None,
    }
}

fn cannot_write(path: &Path, e: io::Error) -> Failure {
    Failure::BadInput(format!("error: cannot write {}: {e}", path.display()))
}

/// How many symbolic links [`resolve`] follows before giving up (Linux's own limit).
const MAX_LINKS: usize = 40;

/// `path` with every symbolic link followed (a dangling link resolves to the file it names).
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// What a replaced file's replacement keeps of it: its mode, user and group.
struct Keep {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A file named with `-o`, open for writing (see the module's invariant).
pub struct OutputFile {
    /// As the user wrote it, for messages.
    named: PathBuf,
    kind: Kind,
}

enum Kind {
    /// A regular file, or none yet, at `target`: written to `temp`, renamed over `target` by
    /// [`OutputFile::commit`]; `keep` is the replaced file's mode and owner.
    Replace { target: PathBuf, temp: PathBuf, file: BufWriter<File>, keep: Option<Keep>, done: bool },
    /// A device, FIFO or socket: written through.
    Through(BufWriter<File>),
}

impl OutputFile {
    /// Opens `path` for a result: nothing at `path` changes until [`OutputFile::commit`].
    pub fn open(path: &Path) -> Result<OutputFile, Failure> {
        let cannot = |e: io::Error| cannot_write(path, e);
        // `metadata` follows links the way `open` does, `/proc/self/fd/N` (`/dev/stdout`)
        // included, whose target is no path of its own.
        let keep = match fs::metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(cannot(e)),
        };
        let target = resolve(path).map_err(cannot)?;
        let special = |p: &Path| p.starts_with("/dev") || p.starts_with("/proc");
        let kind = match keep {
            Some(meta) if meta.is_dir() => return Err(cannot(io::Error::other("it is a directory"))),
            // A device, FIFO or socket, or whatever `/dev/stdout` and `/proc/self/fd/N` stand for.
            // Appended to: a shell's `>>` behind `/dev/stdout` is not overwritten from its start.
            Some(meta) if !meta.is_file() || special(path) || special(&target) => {
                let file = OpenOptions::new().append(true).open(path).map_err(cannot)?;
                Kind::Through(BufWriter::new(file))
            }
            keep => {
                if let Some(meta) = &keep {
                    // Renaming over a file needs only the directory's permission: a file the
                    // user may not write is refused, not replaced (the mode bits too, for root).
                    let read_only = io::Error::new(io::ErrorKind::PermissionDenied, "the file is read-only");
                    if meta.permissions().mode() & 0o222 == 0 {
                        return Err(cannot(read_only));
                    }
                    OpenOptions::new().write(true).open(&target).map_err(cannot)?;
                }
                let name = target.file_name().ok_or_else(|| cannot(io::Error::other("not a file name")))?;
                let mut temp_name = std::ffi::OsString::from(".");
                temp_name.push(name);
                temp_name.push(format!(".pathc-{}.tmp", std::process::id()));
                let temp = target.with_file_name(temp_name);
                let file = OpenOptions::new().write(true).create_new(true).mode(0o666).open(&temp).map_err(cannot)?;
                let keep = keep.map(|meta| Keep { mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid() });
                Kind::Replace { target, temp, file: BufWriter::with_capacity(1 << 16, file), keep, done: false }
            }
        };
        Ok(OutputFile { named: path.to_path_buf(), kind })
    }

    /// Makes the result the file's content: flushes it and, for a regular file, gives the new
    /// file the old one's permissions and owner and renames it over the old one.
    pub fn commit(mut self) -> Result<(), Failure> {
        let named = self.named.clone();
        let cannot = |e: io::Error| cannot_write(&named, e);
        match &mut self.kind {
            Kind::Through(file) => file.flush().map_err(cannot),
            Kind::Replace { target, temp, file, keep, done } => {
                file.flush().map_err(cannot)?;
                let file = file.get_ref();
                if let Some(keep) = keep {
                    file.set_permissions(fs::Permissions::from_mode(keep.mode)).map_err(cannot)?;
                    // Only root may give a file away; anyone else keeps their own ownership.
                    let _ = std::os::unix::fs::fchown(file, Some(keep.uid), Some(keep.gid));
                }
                file.sync_all().map_err(cannot)?;
                fs::rename(&*temp, &*target).map_err(cannot)?;
                *done = true;
                Ok(())
            }
        }
    }
}

impl Write for OutputFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match &mut self.kind {
            Kind::Replace { file, .. } | Kind::Through(file) => file.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.kind {
            Kind::Replace { file, .. } | Kind::Through(file) => file.flush(),
        }
    }
}

/// A result never committed (an error, a refusal while writing) leaves no temporary file.
impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Kind::Replace { temp, done: false, .. } = &self.kind {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Where a streamed result goes: `-o FILE` or standard output.
pub enum Sink {
    File(OutputFile),
    Stdout(BufWriter<io::StdoutLock<'static>>),
}

impl Sink {
    /// Opens FILE ([`OutputFile::open`]) or standard output: call it once the result is known
    /// to exist, just before writing it.
    pub fn open(output: Option<&Path>) -> Result<Sink, Failure> {
        Ok(match output {
            Some(path) => Sink::File(OutputFile::open(path)?),
            None => Sink::Stdout(BufWriter::with_capacity(1 << 16, io::stdout().lock())),
        })
    }

    /// The result is complete: FILE is replaced by it ([`OutputFile::commit`]).
    pub fn finish(self) -> Result<(), Failure> {
        match self {
            Sink::File(file) => file.commit(),
            Sink::Stdout(mut out) => Ok(out.flush()?),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Sink::File(file) => file.write(bytes),
            Sink::Stdout(out) => out.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::File(file) => file.flush(),
            Sink::Stdout(out) => out.flush(),
        }
    }
}

/// Writes the whole of `bytes` to FILE ([`OutputFile`]) or to standard output.
pub fn write(output: Option<&Path>, bytes: &[u8]) -> Result<(), Failure> {
    let mut sink = Sink::open(output)?;
    sink.write_all(bytes)?;
    sink.finish()
}

/// Pretty JSON and a newline.
pub fn write_json(out: &mut impl Write, value: &impl serde::Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)
}
