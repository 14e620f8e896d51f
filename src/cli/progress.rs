//! [`TerminalProgress`], the command line's [`pathc::progress::Progress`]: a bar on standard error.

use std::io;

/// A progress bar on standard error, drawn only when standard error is a terminal and only once
/// the job has run for [`TerminalProgress::AFTER`] (`PATHC_PROGRESS_AFTER_MS` overrides it):
/// short jobs and redirected output stay silent.
pub struct TerminalProgress {
    bar: indicatif::ProgressBar,
    started: std::time::Instant,
    after: std::time::Duration,
    shown: std::sync::atomic::AtomicBool,
}

impl TerminalProgress {
    const AFTER: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new() -> TerminalProgress {
        let after = std::env::var("PATHC_PROGRESS_AFTER_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Self::AFTER, std::time::Duration::from_millis);
        TerminalProgress {
            bar: indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::hidden()),
            started: std::time::Instant::now(),
            after,
            shown: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl pathc::progress::Progress for TerminalProgress {
    fn start(&self, what: &str, total: u64) {
        self.bar.set_length(total);
        self.bar.set_message(what.to_string());
        let style = indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({elapsed}, {eta} left)");
        if let Ok(style) = style {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }

    fn advance(&self, units: u64) {
        use std::io::IsTerminal;
        use std::sync::atomic::Ordering;
        if !self.shown.load(Ordering::Relaxed) && self.started.elapsed() >= self.after && io::stderr().is_terminal() {
            self.shown.store(true, Ordering::Relaxed);
            self.bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.bar.inc(units);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
