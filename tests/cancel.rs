//! Every long job stops when its progress says so ([`Progress::cancelled`], what Ctrl-C sets in
//! the Python package), with an error that says it was interrupted, and runs to its end when
//! nothing asks it to stop.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use pathc::emit::{numbers, report};
use pathc::eval::{self, EvalError, Evaluation, Target, Targets};
use pathc::plan::exec::ExecError;
use pathc::progress::{Cancelled, Progress};
use pathc::rewrite::RewriteError;
use pathc::stats::StatsError;
use pathc::ExpandOptions;

/// Answers "go on" to the first `after` questions, then "stop".
struct StopAfter {
    after: usize,
    asked: AtomicUsize,
}

impl StopAfter {
    fn new(after: usize) -> StopAfter {
        StopAfter { after, asked: AtomicUsize::new(0) }
    }
    fn asked(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }
}

impl Progress for StopAfter {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
    fn cancelled(&self) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed) >= self.after
    }
}

const NEVER: usize = usize::MAX;
const TOKENS: [usize; 8] = [5, 17, 42, 8, 5, 17, 42, 8];

fn evaluation(name: &str, qk: bool) -> Evaluation {
    let options = ExpandOptions { qk, ..ExpandOptions::default() };
    let expansion = pathc::expand_compiled(common::compiled(name), &options).unwrap();
    let params = common::params(name);
    let forward = eval::forward(&params, &TOKENS).unwrap();
    Evaluation { expansion, params, forward }
}

fn is_cancelled(e: &EvalError) -> bool {
    matches!(e, EvalError::Cancelled(Cancelled))
}

#[test]
fn the_expansion_stops_between_saturation_runs() {
    let options = ExpandOptions { qk: true, ..ExpandOptions::default() };
    let stop = StopAfter::new(1);
    let result = pathc::expand_with_progress(common::compiled("unprocessed"), &options, &stop);
    assert!(matches!(result, Err(pathc::Error::Rewrite(RewriteError::Cancelled(Cancelled)))), "{result:?}");
    assert_eq!(stop.asked(), 2, "asked after each run, stopped at the second");
    let never = StopAfter::new(NEVER);
    assert!(pathc::expand_with_progress(common::compiled("unprocessed"), &options, &never).is_ok());
    assert!(never.asked() > 2);
}

#[test]
fn the_check_stops_between_paths() {
    let e = evaluation("unprocessed", false);
    let stop = StopAfter::new(3);
    let result = eval::check(&e.expansion, &e.params, &e.forward, &stop);
    assert!(result.as_ref().is_err_and(is_cancelled), "{result:?}");
    assert_eq!(stop.asked(), 4, "no path is evaluated after the answer");
    let never = StopAfter::new(NEVER);
    let report = eval::check(&e.expansion, &e.params, &e.forward, &never).unwrap();
    assert_eq!(never.asked() as u64, report.paths, "asked once a path");
}

#[test]
fn path_tables_and_score_terms_stop() {
    let e = evaluation("induction", true);
    let targets = Targets::for_params(Target::Next, &TOKENS, &e.params, None).unwrap();
    let result = numbers::target_table(&e, &targets, None, None, false, &StopAfter::new(2));
    assert!(result.as_ref().is_err_and(is_cancelled), "{:?}", result.err());
    assert!(numbers::target_table(&e, &targets, None, None, false, &StopAfter::new(NEVER)).is_ok());

    let result = numbers::score_table(&e, 1, 0, Some(7), None, &StopAfter::new(2));
    assert!(result.as_ref().is_err_and(is_cancelled), "{:?}", result.err());
    let never = StopAfter::new(NEVER);
    let all = numbers::score_table(&e, 1, 0, Some(7), None, &never).unwrap();
    assert_eq!(never.asked(), all.terms, "asked once a score term");
}

#[test]
fn the_statistics_stop_between_vocabulary_chunks() {
    let params = common::params("induction");
    let result = pathc::stats::stats_processed_with_progress(&params, eval::Processing::NONE, &StopAfter::new(1));
    assert!(matches!(result, Err(StatsError::Exec(ExecError::Cancelled(Cancelled)))), "{:?}", result.err());
    let stats = pathc::stats::stats_processed_with_progress(&params, eval::Processing::NONE, &StopAfter::new(NEVER));
    assert_eq!(stats.unwrap(), pathc::stats::stats(&params).unwrap());
}

#[test]
fn the_report_stops() {
    let e = evaluation("induction", true);
    let options = report::ReportOptions {
        position: 7,
        target: 5,
        target_why: "given".to_string(),
        top_paths: 40,
        top_terms: 8,
        max_bytes: 16_000_000,
    };
    for after in [0, 10, 200] {
        let result = report::report(&e, Err("left out".to_string()), None, &options, &StopAfter::new(after));
        assert!(
            matches!(&result, Err(report::ReportError::Eval(e)) if is_cancelled(e)),
            "stopped after {after}: {:?}",
            result.err()
        );
    }
    assert!(report::report(&e, Err("left out".to_string()), None, &options, &StopAfter::new(NEVER)).is_ok());
}
