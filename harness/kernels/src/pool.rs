//! A fixed set of worker threads that run one job together, waking fast.
//!
//! A decoding step runs some hundred products of well under a millisecond
//! each, with a few small tensor operations between them. Waking a sleeping
//! thread through the kernel costs tens of microseconds each time, so workers
//! spin for a while after each job and only then sleep.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers wait for it to change.
    epoch: AtomicUsize,
    /// The current job, valid from its epoch's bump until `pending` is 0.
    job: Mutex<Option<JobPtr>>,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// Workers asleep (or about to be), guarded by `wake`'s mutex.
    sleepers: AtomicUsize,
    wake: (Mutex<()>, Condvar),
}

/// A job's address, lifetime erased: `Pool::run` keeps the job alive until
/// every worker is done with it.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointee is `Sync`, and outlives every use (see `Pool::run`).
unsafe impl Send for JobPtr {}

/// Threads that run a job as `f(0)`, `f(1)`, ..., `f(threads - 1)` at once,
/// the caller's thread being 0.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    /// One job at a time: callers from several threads take turns.
    turn: Mutex<()>,
}

impl Pool {
    /// The process-wide pool, one thread per available core.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| Pool::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    /// A pool of `threads` (at least 1), the caller counted.
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            wake: (Mutex::new(()), Condvar::new()),
        });
        for index in 1..threads {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("emh-kernels-{index}"))
                .spawn(move || worker(&shared, index))
                .expect("spawning a kernel thread");
        }
        Pool {
            threads,
            shared,
            turn: Mutex::new(()),
        }
    }

    /// Threads in the pool, the caller counted.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(range)` over `rows` split into one contiguous range per
    /// thread, on only as many threads as get `min_rows` each: below that,
    /// waking a thread costs more than it saves.
    pub fn split(&self, rows: usize, min_rows: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let threads = self.threads.min(rows / min_rows.max(1)).max(1);
        let per = rows.div_ceil(threads);
        let part = |index: usize| {
            let first = (index * per).min(rows);
            let last = ((index + 1) * per).min(rows);
            if first < last {
                f(first..last)
            }
        };
        if threads == 1 {
            part(0);
        } else {
            self.run(&|index| {
                if index < threads {
                    part(index)
                }
            });
        }
    }

    /// Runs `f(i)` for every thread index `i`, returning when all are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased; we wait below until no worker
        // can still be using the job.
        let ptr =
            JobPtr(unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) });
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(ptr);
        s.pending.store(self.threads - 1, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.1.notify_all();
        }
        f(0);
        while s.pending.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
    }
}

/// Rows `rows` of `width` values of the f32 buffer at address `addr`.
///
/// # Safety
/// The buffer must hold those rows, and no other reference may touch them
/// while the slice lives: each thread of a job takes disjoint rows.
pub(crate) unsafe fn rows_mut<'a>(addr: usize, width: usize, rows: Range<usize>) -> &'a mut [f32] {
    // SAFETY: the caller's contract.
    unsafe {
        std::slice::from_raw_parts_mut(
            (addr as *mut f32).add(rows.start * width),
            rows.len() * width,
        )
    }
}

/// Sets `out` to zeros, each thread its own part: on fresh memory this is
/// mostly page faults, which every core takes at once.
pub fn zero(pool: &Pool, out: &mut [f32]) {
    // Whole pages per thread: 4 KiB of f32.
    const PAGE: usize = 1024;
    let addr = out.as_mut_ptr() as usize;
    let pages = out.len().div_ceil(PAGE);
    pool.split(pages, 16, &|range| {
        let end = (range.end * PAGE).min(out.len());
        // SAFETY: each thread zeroes only its own pages of `out`.
        unsafe { rows_mut(addr, 1, range.start * PAGE..end) }.fill(0.0);
    });
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(SeqCst) == seen {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
            } else if started.elapsed() > SPIN {
                let g = s.wake.0.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, SeqCst);
                // The epoch is checked under the lock that `run` notifies
                // under, so a bump between the check and the wait is not lost.
                let g = s
                    .wake
                    .1
                    .wait_while(g, |_| s.epoch.load(SeqCst) == seen)
                    .unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_sub(1, SeqCst);
                drop(g);
            }
        }
        seen = s.epoch.load(SeqCst);
        let job = s
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expect("a job is set before its epoch");
        // SAFETY: `run` keeps the job alive until `pending` reaches 0.
        unsafe { (*job.0)(index) };
        s.pending.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = Pool::new(3);
        let hits = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        for round in 0..200u64 {
            pool.run(&|i| {
                hits[i].fetch_add(round, SeqCst);
            });
        }
        let want = (0..200u64).sum::<u64>();
        assert!(hits.iter().all(|h| h.load(SeqCst) == want));
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let pool = Pool::new(2);
        let ran = AtomicU64::new(0);
        pool.run(&|_| {
            ran.fetch_add(1, SeqCst);
        });
        std::thread::sleep(SPIN * 3);
        pool.run(&|_| {
            ran.fetch_add(1, SeqCst);
        });
        assert_eq!(ran.load(SeqCst), 4);
    }

    #[test]
    fn zero_clears_every_value() {
        let pool = Pool::new(3);
        for len in [0, 1, 1023, 1025, 100_000] {
            let mut v = vec![f32::NAN; len];
            zero(&pool, &mut v);
            assert!(v.iter().all(|x| *x == 0.0), "{len}");
        }
    }

    #[test]
    fn split_covers_every_row_once() {
        let pool = Pool::new(3);
        for (rows, min_rows) in [(0, 1), (1, 1), (7, 1), (7, 4), (100, 8)] {
            let hits: Vec<AtomicU64> = (0..rows).map(|_| AtomicU64::new(0)).collect();
            pool.split(rows, min_rows, &|range| {
                for r in range {
                    hits[r].fetch_add(1, SeqCst);
                }
            });
            assert!(
                hits.iter().all(|h| h.load(SeqCst) == 1),
                "{rows} {min_rows}"
            );
        }
    }
}
