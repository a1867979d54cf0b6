use super::*;
use crate::config::Config;

fn cfg() -> HealthConfig {
    Config::default().health
}

impl Tracker {
    fn evaluate_default(
        &mut self,
        c: &HealthConfig,
        now: Instant,
        lag: Option<f64>,
        last_seen: Instant,
    ) -> Evaluation {
        self.evaluate(c, now, lag, last_seen, last_seen, c.stale_after)
    }
}

#[test]
fn hysteresis_enter_hold_leave() {
    let c = cfg();
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut t = Tracker::default();
    assert_eq!(
        t.evaluate_default(&c, at(0), Some(0.05), at(0)).state,
        HealthState::Ok
    );
    // 0.2 s is above leave but below enter: stays Ok.
    assert_eq!(
        t.evaluate_default(&c, at(100), Some(0.2), at(100)).state,
        HealthState::Ok
    );
    let e = t.evaluate_default(&c, at(200), Some(1.204), at(200));
    assert_eq!(e.state, HealthState::Unhealthy);
    assert_eq!(e.reasons, vec!["lag 1.204 s >= 0.250 s".to_string()]);
    // Between leave and enter: still unhealthy, restarts the hold.
    assert_eq!(
        t.evaluate_default(&c, at(1200), Some(0.15), at(1200)).state,
        HealthState::Unhealthy
    );
    // Below leave, but hold (3 s since 1.2 s) not over.
    assert_eq!(
        t.evaluate_default(&c, at(2000), Some(0.01), at(2000)).state,
        HealthState::Unhealthy
    );
    assert_eq!(
        t.evaluate_default(&c, at(4100), Some(0.01), at(4000)).state,
        HealthState::Unhealthy
    );
    // Hold expires on a timer evaluation with no new export.
    let e = t.evaluate_default(&c, at(4200), Some(0.01), at(4000));
    assert_eq!(e.state, HealthState::Ok);
    assert!(e.reasons.is_empty());
}

#[test]
fn stale_after_no_data() {
    let c = cfg();
    let t0 = Instant::now();
    let mut t = Tracker::default();
    let e = t.evaluate_default(&c, t0 + Duration::from_secs(5), Some(0.0), t0);
    assert_eq!(e.state, HealthState::Stale);
    assert_eq!(
        e.reasons,
        vec!["no data for 5.000 s >= 5.000 s".to_string()]
    );
    let e = t.evaluate_default(
        &c,
        t0 + Duration::from_secs(6),
        Some(0.0),
        t0 + Duration::from_secs(6),
    );
    assert_eq!(e.state, HealthState::Ok);
}

#[test]
fn band_enters_holds_and_leaves() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let hold = Duration::from_millis(500);
    let mut b = Band::default();
    assert_eq!(b.update(Some(0.4), 0.5, 0.2, hold, at(0)), (false, None));
    assert_eq!(b.update(Some(0.5), 0.5, 0.2, hold, at(10)), (true, None));
    assert_eq!(b.update(Some(0.3), 0.5, 0.2, hold, at(20)), (true, None));
    assert_eq!(
        b.update(Some(0.1), 0.5, 0.2, hold, at(120)),
        (true, Some(Duration::from_millis(100)))
    );
    assert_eq!(b.update(None, 0.5, 0.2, hold, at(520)), (false, None));
}

#[test]
fn p99_of_buckets() {
    let bounds = [0.01, 0.1, 1.0];
    assert_eq!(histogram_p99(&bounds, &[0, 0, 0, 0]), None);
    assert_eq!(histogram_p99(&bounds, &[99, 1, 0, 0]), Some(0.01));
    assert_eq!(histogram_p99(&bounds, &[98, 0, 2, 0]), Some(1.0));
    // Overflow bucket: the last finite bound (a lower bound of the truth).
    assert_eq!(histogram_p99(&bounds, &[0, 0, 0, 5]), Some(1.0));
}

#[test]
fn error_window_handles_counter_reset() {
    let t0 = Instant::now();
    let w = Duration::from_secs(10);
    let mut e = ErrorWindow::default();
    let counts = |t: u64, err: u64| BTreeMap::from([("/r", (t, err, 1))]);
    e.observe(t0, counts(100, 10), w);
    e.observe(t0 + Duration::from_secs(1), counts(150, 30), w);
    assert_eq!(e.in_window(), [("/r", (50, 20, 0))]);
    // The process restarted: counts fell, the new values are the window.
    e.observe(t0 + Duration::from_secs(2), counts(5, 1), w);
    assert_eq!(e.in_window(), [("/r", (5, 1, 1))]);
}

#[test]
fn lifecycle_values() {
    assert_eq!(Lifecycle::from_value(0.0), Some(Lifecycle::Running));
    assert_eq!(Lifecycle::from_value(1.0), Some(Lifecycle::Draining));
    assert_eq!(Lifecycle::from_value(2.0), Some(Lifecycle::Stopped));
    assert_eq!(Lifecycle::from_value(-3.0), None);
    assert_eq!(Lifecycle::from_value(f64::NAN), None);
}

#[test]
fn pressure_is_max_of_ratios() {
    let c = cfg();
    let s = Signals {
        runtime: Runtime::Tokio,
        delay_p99: Some(0.05),
        delay_max: None,
        overdue: None,
        stuck: StuckSummary::default(),
        shed_ratio: None,
        error_ratio: None,
        stall: Some(0.2),
        utilization: Some(0.4),
        heap_growth: None,
        lifecycle: None,
        active_requests: None,
    };
    assert_eq!(s.lag(), Some(0.2));
    assert!((s.pressure(&c) - 2.0).abs() < 1e-9);
    let s = Signals { stall: None, ..s };
    assert!((s.pressure(&c) - 0.5).abs() < 1e-9);
    // One stuck worker of 4 takes a quarter of the capacity.
    let stuck = StuckSummary {
        stuck: 1,
        workers: 4,
        longest: 2.0,
        ..StuckSummary::default()
    };
    let s = Signals { stuck, ..s };
    assert!((s.pressure(&c) - 0.5 * 4.0 / 3.0).abs() < 1e-9);
    // Shedding is past the target.
    let s = Signals {
        shed_ratio: Some(0.25),
        ..s
    };
    assert!((s.pressure(&c) - 1.25).abs() < 1e-9);
}

#[test]
fn stuck_workers_make_unready_only_when_asked() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let stuck = StuckSummary {
        stuck: 1,
        workers: 4,
        longest: 1.5,
        ..StuckSummary::default()
    };
    let mut sig = signals(&SeriesMap::default());
    sig.stuck = stuck;
    let report = cfg();
    let mut t = Tracker::default();
    let e = t.assess(&report, at(0), &sig, at(0), report.stale_after);
    assert_eq!(
        e.state,
        HealthState::Ok,
        "report: one stuck worker of 4 still serves"
    );
    let mut unready = cfg();
    unready.stuck_workers = StuckPolicy::Unready;
    let mut t = Tracker::default();
    let e = t.assess(&unready, at(0), &sig, at(0), unready.stale_after);
    assert_eq!(e.state, HealthState::Unhealthy);
    // The worker recovers: unhealthy through the hold, then ok.
    sig.stuck = StuckSummary::default();
    let e = t.assess(&unready, at(1000), &sig, at(1000), unready.stale_after);
    assert_eq!(e.state, HealthState::Unhealthy, "{e:?}");
    assert!(e.reasons[0].starts_with("no worker stuck for"), "{e:?}");
    let e = t.assess(&unready, at(4100), &sig, at(4100), unready.stale_after);
    assert_eq!(e.state, HealthState::Ok, "{e:?}");
}
