//! Control-plane threads (the manifests watcher, the table compile worker) run at a
//! lower CPU priority than the proxy's workers: on a saturated core,
//! requests come first and a table change waits for spare cycles instead
//! of taking them from traffic. Nice 10 still gets about a tenth of a
//! contended core (CFS weights 110 vs 1024), so changes are delayed, never
//! starved; on an idle core nothing changes.

/// The nice value control-plane threads take.
pub const CONTROL_PLANE_NICE: i32 = 10;

/// Lower the calling thread's priority to [`CONTROL_PLANE_NICE`] (Linux
/// sets it per thread). Failure (a sandbox forbidding it) is logged once
/// and otherwise ignored.
pub fn control_plane_thread() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), CONTROL_PLANE_NICE) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(
            || tracing::debug!(error = %e, "could not lower the control-plane thread's priority"),
        );
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// How long a control-plane thread waits after its last piece of work
/// before it gives its allocator's free memory back ([`quiet`]).
pub const QUIET_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

static ON_QUIET: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Install what a control-plane thread runs when it goes quiet (the binary
/// installs mimalloc's collect: memory this thread freed goes back to the
/// system now rather than lingering as RSS until the thread allocates
/// again, which an idle control plane may not do for hours). Only the first
/// call counts.
pub fn set_on_quiet(f: fn()) {
    let _ = ON_QUIET.set(f);
}

/// The calling control-plane thread has finished a burst of work and will
/// wait: run the installed hook, if any.
pub fn quiet() {
    if let Some(f) = ON_QUIET.get() {
        f();
    }
}

/// Wait on `rx` for up to `wait` (`None`: for as long as it takes). After
/// work (`*worked`, which the caller sets after each piece), a first
/// [`QUIET_AFTER`] without a message runs [`quiet`] and clears `*worked`;
/// then a bounded wait reports its timeout at once, an unbounded one goes
/// on waiting.
pub fn recv_or_quiet<T>(
    rx: &std::sync::mpsc::Receiver<T>,
    worked: &mut bool,
    wait: Option<std::time::Duration>,
) -> Result<T, std::sync::mpsc::RecvTimeoutError> {
    use std::sync::mpsc::RecvTimeoutError;
    if *worked {
        match rx.recv_timeout(QUIET_AFTER) {
            Err(RecvTimeoutError::Timeout) => {
                *worked = false;
                quiet();
                if wait.is_some() {
                    return Err(RecvTimeoutError::Timeout);
                }
            }
            other => return other,
        }
    }
    match wait {
        Some(d) => rx.recv_timeout(d),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

/// One long-lived control-plane thread running jobs in order (table
/// compiles, then freeing the table they replaced). A thread per job cost a
/// spawn each time and gave every job a fresh allocator heap, abandoned at
/// its exit with the old table's memory in it.
pub struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Worker {
    /// Start the thread, named `name`, at the control plane's priority.
    pub fn spawn(name: &str) -> std::io::Result<Worker> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                control_plane_thread();
                // A second without a job after the last: a compile's garbage
                // and the released table's memory go back to the system.
                let mut worked = false;
                while let Ok(job) = recv_or_quiet(&queue, &mut worked, None) {
                    // A job that panics (a compile bug) must not end the
                    // worker: it drops its result sender, and whoever waits
                    // on it hears so.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    worked = true;
                }
            })?;
        Ok(Worker { jobs })
    }

    /// Queue a job; gives it back if the worker is gone.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Job> {
        self.jobs.send(Box::new(job)).map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn worker_goes_quiet_a_second_after_its_last_job() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static QUIET: AtomicUsize = AtomicUsize::new(0);
        // The hook is process-wide (first install wins): other tests'
        // workers may count too, so only growth after our job is checked.
        super::set_on_quiet(|| {
            QUIET.fetch_add(1, Ordering::SeqCst);
        });
        let w = super::Worker::spawn("test-quiet").expect("a thread");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::sleep(super::QUIET_AFTER + Duration::from_millis(300));
        let before = QUIET.load(Ordering::SeqCst);
        assert!(w.run(move || tx.send(()).unwrap()).is_ok());
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the job ran");
        let deadline = std::time::Instant::now() + super::QUIET_AFTER * 5;
        while QUIET.load(Ordering::SeqCst) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "no quiet hook after the job"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn worker_runs_jobs_in_order_and_outlives_a_panicking_one() {
        let w = super::Worker::spawn("test-worker").expect("a thread");
        let (tx, rx) = std::sync::mpsc::channel();
        let t1 = tx.clone();
        assert!(w.run(move || t1.send(1).unwrap()).is_ok());
        assert!(w.run(|| panic!("a compile bug")).is_ok());
        assert!(w.run(move || tx.send(2).unwrap()).is_ok());
        let got: Vec<i32> = (0..2)
            .map(|_| rx.recv_timeout(Duration::from_secs(5)).expect("a job ran"))
            .collect();
        assert_eq!(got, [1, 2]);
    }
}
