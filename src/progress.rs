//! Progress of long jobs, reported to an observer the caller chooses. The library only counts
//! work done; the binary draws it (a bar on standard error, only when that is a terminal and
//! only once a job has run for a second), so library users and tests see nothing.

/// Receives the progress of one job: its total units of work, then units as they are done.
pub trait Progress: Sync {
    fn start(&self, what: &str, total: u64);
    fn advance(&self, units: u64);
    fn finish(&self);
    /// Whether the caller wants the job stopped (an interrupt in the Python package): a job that
    /// can stop between its units of work asks after each, and ends with an error saying so.
    fn cancelled(&self) -> bool {
        false
    }
    /// [`Progress::cancelled`] as an error, for `?` between units of work.
    fn check(&self) -> Result<(), Cancelled> {
        if self.cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

/// A job stopped because its caller asked ([`Progress::cancelled`]): it has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted")]
pub struct Cancelled;

/// Passes on only whether to stop, for a job run inside another whose progress is counted
/// already (a prompt's check inside a dataset run).
pub struct OnlyCancel<'a>(pub &'a dyn Progress);

impl Progress for OnlyCancel<'_> {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn cancelled(&self) -> bool {
        self.0.cancelled()
    }
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
