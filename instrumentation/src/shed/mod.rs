//! Load shedding: a tower layer that answers `503 Service Unavailable` with `Retry-After` while
//! the runtime is overloaded (scheduling delay, utilization, or a signal of your own), plus the
//! [`Pressure`] handle that the shedder, the local health router and the route layer read.
//!
//! The layer needs the `axum` feature; [`Pressure`] is always there.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::live::Shared;

#[cfg(feature = "axum")]
mod layer;
#[cfg(feature = "axum")]
pub(crate) use layer::Shed;
#[cfg(feature = "axum")]
pub use layer::{ShedLayer, ShedLayerBuilder, ShedService, future};

#[cfg(feature = "axum")]
/// How recently a probe must have completed for a request starting now to count its delay as
/// "just before" it (see `RouteStats::stalled_before`).
const STALL_BEFORE_RECENT: Duration = Duration::from_millis(20);

/// Read-only view of the watched runtime's load, cheap to clone and to read (a few atomics and
/// one short std-mutex copy; never touches the runtime).
///
/// From a running loopwatch: [`crate::LoopwatchGuard::pressure`]. For tests or custom signals:
/// [`Pressure::manual`], whose values you set.
#[derive(Debug, Clone)]
pub struct Pressure {
    src: Src,
}

#[derive(Debug, Clone)]
enum Src {
    Probe(Arc<Shared>),
    Manual(Arc<Manual>),
}

#[derive(Debug, Default)]
struct Manual {
    delay_us: AtomicU64,
    /// Utilization × 1e6.
    utilization_ppm: AtomicU64,
}

impl Pressure {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Pressure {
            src: Src::Probe(shared),
        }
    }

    /// A pressure source whose values are set with [`Pressure::set_delay`] and
    /// [`Pressure::set_utilization`] (tests, or a signal computed elsewhere). Starts at zero.
    pub fn manual() -> Self {
        Pressure {
            src: Src::Manual(Arc::new(Manual::default())),
        }
    }

    /// Sets the scheduling delay of a [`Pressure::manual`] source; no effect on a probe source.
    pub fn set_delay(&self, delay: Duration) {
        if let Src::Manual(m) = &self.src {
            let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
            m.delay_us.store(us, Ordering::Release);
        }
    }

    /// Sets the utilization (0..=1) of a [`Pressure::manual`] source; no effect on a probe source.
    pub fn set_utilization(&self, utilization: f64) {
        if let Src::Manual(m) = &self.src {
            let ppm = (utilization.clamp(0.0, 1.0) * 1e6) as u64;
            m.utilization_ppm.store(ppm, Ordering::Release);
        }
    }

    /// Current scheduling delay: the larger of the stall in progress (age of the outstanding
    /// probe, grows in real time) and the last completed window's p99. A block is therefore seen
    /// within one probe interval of its start and stays visible for one window after it ends.
    pub fn scheduling_delay(&self) -> Duration {
        match &self.src {
            Src::Probe(s) => {
                let p99 = Duration::from_micros(s.window().p99_us);
                s.current_stall().max(p99)
            }
            Src::Manual(m) => Duration::from_micros(m.delay_us.load(Ordering::Acquire)),
        }
    }

    /// Busy ratio of the runtime's workers over the last window, 0..=1.
    pub fn utilization(&self) -> f64 {
        match &self.src {
            Src::Probe(s) => s.runtime().utilization,
            Src::Manual(m) => m.utilization_ppm.load(Ordering::Acquire) as f64 / 1e6,
        }
    }

    #[cfg(feature = "axum")]
    /// Tells loopwatch that work starts on the watched runtime (call it where a request or job
    /// begins): wakes the probe thread if it sleeps an idle tick, so a block starting from an
    /// idle runtime is probed from its start (see `Shared::wake_if_idle`). One relaxed load
    /// when the probe is not idle; nothing for a manual source.
    pub(crate) fn wake_probe(&self) {
        if let Src::Probe(s) = &self.src {
            s.wake_if_idle();
        }
    }

    #[cfg(feature = "axum")]
    /// See `Shared::stall_before_us`; 0 for a manual source.
    pub(crate) fn stall_before_us(&self, now: std::time::Instant) -> u64 {
        match &self.src {
            Src::Probe(s) => s.stall_before_us(now, STALL_BEFORE_RECENT),
            Src::Manual(_) => 0,
        }
    }

    #[cfg(feature = "axum")]
    /// Scheduling delay accumulated since start, µs (completed probe delays plus the
    /// outstanding probe's age). The difference between two reads is the runtime lateness
    /// measured between them. A manual source returns 0.
    pub(crate) fn delayed_clock_us_now(&self) -> u64 {
        match &self.src {
            Src::Probe(s) => s.delayed_clock_us_now(),
            Src::Manual(_) => 0,
        }
    }
}

/// Why a request was (or would be) shed.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Overload {
    /// Scheduling delay at or over the threshold.
    Delay {
        /// Current scheduling delay.
        current: Duration,
        /// Threshold.
        limit: Duration,
    },
    /// Utilization at or over the threshold.
    Utilization {
        /// Current utilization, 0..=1.
        current: f64,
        /// Threshold.
        limit: f64,
    },
    /// The custom predicate given to [`ShedLayerBuilder::also_when`] returned true.
    Custom,
}

impl std::fmt::Display for Overload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overload::Delay { current, limit } => write!(
                f,
                "scheduling delay {:.1} ms >= {:.1} ms",
                current.as_secs_f64() * 1e3,
                limit.as_secs_f64() * 1e3
            ),
            Overload::Utilization { current, limit } => {
                write!(f, "utilization {current:.2} >= {limit:.2}")
            }
            Overload::Custom => f.write_str("custom overload signal"),
        }
    }
}

/// A user predicate that reports overload (e.g. heap growth).
pub type OverloadFn = Arc<dyn Fn() -> bool + Send + Sync>;

#[cfg(feature = "axum")]
/// Thresholds shared by [`ShedLayer`] and [`crate::health::Health`].
#[derive(Clone)]
pub(crate) struct Thresholds {
    pub(crate) pressure: Pressure,
    pub(crate) max_delay: Duration,
    pub(crate) max_utilization: Option<f64>,
    pub(crate) custom: Option<OverloadFn>,
}

#[cfg(feature = "axum")]
impl std::fmt::Debug for Thresholds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thresholds")
            .field("max_delay", &self.max_delay)
            .field("max_utilization", &self.max_utilization)
            .field("custom", &self.custom.is_some())
            .finish()
    }
}

#[cfg(feature = "axum")]
impl Thresholds {
    pub(crate) fn check(&self) -> Option<Overload> {
        let current = self.pressure.scheduling_delay();
        if current >= self.max_delay {
            return Some(Overload::Delay {
                current,
                limit: self.max_delay,
            });
        }
        if let Some(limit) = self.max_utilization {
            let current = self.pressure.utilization();
            if current >= limit {
                return Some(Overload::Utilization { current, limit });
            }
        }
        if let Some(f) = &self.custom
            && f()
        {
            return Some(Overload::Custom);
        }
        None
    }
}
