//! Deterministic data parallelism on scoped threads.

/// The number of worker threads: `PATHC_THREADS` if set to a positive number, else one per
/// available core. Results do not depend on it (every split of the work is fixed in advance);
/// the variable is there to check that, and to leave cores free.
pub fn threads() -> usize {
    std::env::var("PATHC_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

thread_local! {
    /// Whether [`parallel_map`] runs on the calling thread alone ([`alone`]).
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with every [`parallel_map`] it makes on this thread run on this thread alone: for
/// work done beside other parallel work (`pathc stats` computes the random baseline on a thread
/// of its own while the plan is made and the statistics run), which one more thread per core
/// would only slow down. The results are the same: they do not depend on the thread count.
pub fn alone<R>(f: impl FnOnce() -> R) -> R {
    let before = ALONE.replace(true);
    let out = f();
    ALONE.set(before);
    out
}

/// `items.iter().map(f).collect()` on scoped threads (one per available core), each taking the
/// next unclaimed item (the items' costs differ: an early layer composes with every later one);
/// the output is in input order whatever the scheduling.
pub fn parallel_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    let n_threads = if ALONE.get() { 1 } else { threads().min(items.len()) };
    if n_threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (f, next) = (&f, &next);
    let mut done: Vec<(usize, U)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n_threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        match items.get(i) {
                            Some(item) => out.push((i, f(item))),
                            None => return out,
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a worker thread panicked")).collect()
    });
    done.sort_unstable_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, u)| u).collect()
}

#[cfg(test)]
mod tests {
    use super::{alone, parallel_map};

    /// Inside `alone`, every item runs on the calling thread, in order, with the same results;
    /// outside it again (on a machine with more than one core, and `PATHC_THREADS` unset or
    /// above 1), the items go to other threads.
    #[test]
    fn alone_runs_every_item_on_the_calling_thread_and_restores() {
        let items: Vec<usize> = (0..64).collect();
        let me = std::thread::current().id();
        let work = |&i: &usize| (i * i, std::thread::current().id());
        let inside = alone(|| alone(|| parallel_map(&items, work)));
        assert!(inside.iter().all(|&(_, id)| id == me));
        let outside = parallel_map(&items, work);
        let squares = |v: &[(usize, std::thread::ThreadId)]| v.iter().map(|&(x, _)| x).collect::<Vec<_>>();
        assert_eq!(squares(&inside), squares(&outside));
        if super::threads() > 1 {
            assert!(outside.iter().all(|&(_, id)| id != me), "parallel_map runs on its scoped threads");
        }
    }
}
