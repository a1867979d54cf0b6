//! Process metrics (`process.memory.usage`, `process.cpu.utilization`: procfs on Linux, `sysinfo`
//! elsewhere), and the
//! [`Sampler`] that drives the stuck-worker checks and the heap samples on the `loopwatch-probe`
//! thread's wake-ups (no thread of its own: an idle service pays one wake-up per probe interval,
//! not two).

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[cfg(not(target_os = "linux"))]
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::config::Settings;
use crate::flush::FlushTrigger;
use crate::heap::{HeapSampler, HeapShared};
use crate::workers::{WorkerShared, WorkerWatch};

/// Process RSS and CPU read at collection time: on Linux from `/proc/self/stat`, kept open and
/// re-read with one `pread` (sysinfo's refresh opened and parsed several files, the largest
/// part of an idle export's CPU); elsewhere through `sysinfo`.
pub(crate) struct ProcessReader {
    source: Source,
    cpus: f64,
    /// (when, process CPU seconds) of the previous read.
    last: Option<(Instant, f64)>,
}

#[cfg(target_os = "linux")]
struct Source {
    stat: std::fs::File,
    buf: Vec<u8>,
    page_size: u64,
    ticks_per_s: f64,
}

#[cfg(target_os = "linux")]
impl Source {
    fn new() -> Option<Self> {
        let stat = std::fs::File::open("/proc/self/stat").ok()?;
        let (page_size, ticks) = auxv_page_size_and_ticks();
        Some(Source {
            stat,
            buf: vec![0; 1024],
            page_size,
            ticks_per_s: ticks as f64,
        })
    }

    /// (resident bytes, process CPU seconds).
    fn read(&mut self) -> Option<(u64, f64)> {
        use std::os::unix::fs::FileExt;
        let n = self.stat.read_at(&mut self.buf, 0).ok()?;
        let (rss_pages, ticks) = parse_stat(self.buf.get(..n)?)?;
        Some((
            rss_pages.saturating_mul(self.page_size),
            ticks as f64 / self.ticks_per_s,
        ))
    }
}

/// `rss` (pages) and `utime + stime` (clock ticks) from the text of `/proc/PID/stat`. Fields
/// are counted after the last `)`: the command name may hold spaces and parentheses.
#[cfg(any(target_os = "linux", test))]
fn parse_stat(text: &[u8]) -> Option<(u64, u64)> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(text.get(close + 1..)?).ok()?;
    // Field 3 (state) is index 0 here: utime is field 14, stime 15, rss 24.
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let rss: u64 = fields.nth(8)?.parse().ok()?;
    Some((rss, utime.saturating_add(stime)))
}

/// Page size and clock ticks per second from the auxiliary vector (`AT_PAGESZ`, `AT_CLKTCK`);
/// 4096 and 100 (Linux's `USER_HZ`) where it cannot be read.
#[cfg(target_os = "linux")]
fn auxv_page_size_and_ticks() -> (u64, u64) {
    const AT_PAGESZ: u64 = 6;
    const AT_CLKTCK: u64 = 17;
    let (mut page, mut ticks) = (4096, 100);
    if let Ok(auxv) = std::fs::read("/proc/self/auxv") {
        let word = |c: &[u8]| c.try_into().ok().map(u64::from_ne_bytes);
        for pair in auxv.chunks_exact(16) {
            match (word(&pair[..8]), word(&pair[8..])) {
                (Some(AT_PAGESZ), Some(v)) if v > 0 => page = v,
                (Some(AT_CLKTCK), Some(v)) if v > 0 => ticks = v,
                _ => {}
            }
        }
    }
    (page, ticks)
}

#[cfg(not(target_os = "linux"))]
struct Source {
    system: System,
    pid: Pid,
}

#[cfg(not(target_os = "linux"))]
impl Source {
    fn new() -> Option<Self> {
        let pid = sysinfo::get_current_pid().ok()?;
        Some(Source {
            system: System::new().ok()?,
            pid,
        })
    }

    /// (resident bytes, process CPU seconds).
    fn read(&mut self) -> Option<(u64, f64)> {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            false,
            // Without tasks: listing the process's threads on every refresh was most of its cost.
            ProcessRefreshKind::nothing()
                .with_memory()
                .with_cpu()
                .without_tasks(),
        );
        let p = self.system.process(self.pid)?;
        Some((p.memory(), p.accumulated_cpu_time() as f64 / 1e3))
    }
}

impl ProcessReader {
    /// A reader of this process; `None` when it cannot be read (e.g. no /proc).
    pub(crate) fn new() -> Option<Self> {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let mut r = ProcessReader {
            source: Source::new()?,
            cpus,
            last: None,
        };
        // CPU usage is a difference between two reads: prime the first one.
        r.read()?;
        Some(r)
    }

    /// (resident bytes, CPU utilization 0..=1 of the CPUs available to the process since the
    /// previous read).
    pub(crate) fn read(&mut self) -> Option<(u64, f64)> {
        let (rss, cpu_s) = self.source.read()?;
        let now = Instant::now();
        let util = match self.last {
            Some((t, c)) => {
                let wall = now.saturating_duration_since(t).as_secs_f64();
                if wall > 0.0 {
                    ((cpu_s - c) / wall / self.cpus).clamp(0.0, 1.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, cpu_s));
        Some((rss, util))
    }
}

/// The sampler's part of the resolved settings.
pub(crate) struct SamplerSettings {
    pub(crate) probe_interval: Duration,
    pub(crate) stuck_threshold: Duration,
    pub(crate) heap_window: Duration,
    pub(crate) runtime_name: String,
}

impl SamplerSettings {
    pub(crate) fn of(s: &Settings) -> Self {
        SamplerSettings {
            probe_interval: s.probe_interval,
            stuck_threshold: s.stuck_threshold,
            heap_window: s.heap_window,
            runtime_name: s.runtime_name.clone(),
        }
    }
}

/// Stuck-worker, heap and process monitoring: the shared state read by the guard and the
/// metric callbacks. The periodic work is a [`Sampler`], run on the `loopwatch-probe` thread.
#[derive(Debug)]
pub(crate) struct Extras {
    pub(crate) workers: Arc<WorkerShared>,
    pub(crate) heap: Arc<HeapShared>,
}

/// The per-tick work of stuck-worker checks and heap samples. It has no thread of its own: the
/// `loopwatch-probe` thread, which wakes every probe interval anyway, calls
/// [`Sampler::run_due`] on each wake-up and never sleeps past [`Sampler::next_due`].
pub(crate) struct Sampler {
    watch: WorkerWatch,
    heap: HeapSampler,
    check_every: Duration,
    /// A check due within this is run now: absorbs the probe tick's wake-up jitter, so that
    /// the checks ride on the probe's wake-ups instead of adding their own.
    slack: Duration,
    next_check: Instant,
    next_heap: Instant,
}

impl Sampler {
    /// Runs the stuck-worker check and the heap sample if due (or due within the slack).
    /// Stall stacks for the stuck-worker check.
    pub(crate) fn set_stacks(&mut self, stacks: Option<std::sync::Arc<crate::stacks::Stacks>>) {
        self.watch.set_stacks(stacks);
    }

    pub(crate) fn run_due(&mut self, now: Instant) {
        if now + self.slack >= self.next_check {
            self.watch.check(now);
            self.next_check = now + self.check_every;
        }
        if now + self.slack >= self.next_heap {
            self.heap.sample(now);
            self.next_heap = now + self.heap.period;
        }
    }

    /// When the next stuck-worker check is due: the latest the probe thread sleeps until, except
    /// while the runtime is quiet (every worker parked: none can be stuck), when it sleeps its
    /// idle tick. Heap samples are not waited for: they ride on the next wake-up (at most one
    /// probe interval late, one idle tick while quiet, out of a period of `heap_window / 30`).
    pub(crate) fn next_check_due(&self) -> Instant {
        self.next_check
    }

    /// When the next check or heap sample is due (for a thread that has no other wake-ups).
    pub(crate) fn next_due(&self) -> Instant {
        self.next_check.min(self.next_heap)
    }
}

impl Extras {
    /// The shared state and the [`Sampler`] the probe thread runs.
    pub(crate) fn start(
        handle: &tokio::runtime::Handle,
        flush: FlushTrigger,
        s: SamplerSettings,
    ) -> (Self, Sampler) {
        let n = handle.metrics().num_workers();
        let worker_shared = Arc::new(WorkerShared::new(n));
        let heap_shared = Arc::new(HeapShared::new());

        let watch = WorkerWatch::new(
            handle.clone(),
            Arc::clone(&worker_shared),
            s.stuck_threshold,
            flush,
            s.runtime_name,
        );
        let heap_sampler = HeapSampler::new(Arc::clone(&heap_shared), s.heap_window);
        let check_every = s
            .probe_interval
            .min(s.stuck_threshold / 5)
            .max(Duration::from_millis(1));
        let now = Instant::now();
        let sampler = Sampler {
            watch,
            heap: heap_sampler,
            check_every,
            slack: check_every / 4,
            next_check: now,
            next_heap: now,
        };
        (
            Extras {
                workers: worker_shared,
                heap: heap_shared,
            },
            sampler,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = b"4242 (we ird) (name) R 1 2 3 4 -1 4194304 10 20 0 0 \
            123 45 0 0 20 0 7 0 555 1000000 678 18446744073709551615 1 1 0 0";
        assert_eq!(parse_stat(line), Some((678, 168)));
        assert_eq!(parse_stat(b"4242 (x) R 1 2"), None, "truncated");
        assert_eq!(parse_stat(b"garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let mut r = ProcessReader::new().expect("process readable");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (rss, cpu) = r.read().expect("read");
        assert!(rss > 1024 * 1024, "rss {rss}");
        assert!((0.0..=1.0).contains(&cpu), "cpu {cpu}");
    }
}
