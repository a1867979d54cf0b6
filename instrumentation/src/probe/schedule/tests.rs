//! One test per rule of the probe's schedule, on a fake clock: instants are a fixed origin
//! plus offsets, and nothing sleeps.

use super::*;

const MS: Duration = Duration::from_millis(1);
const INTERVAL: Duration = Duration::from_millis(10);
const THRESHOLD: Duration = Duration::from_millis(250);
const WINDOW: Duration = Duration::from_secs(1);
const TICKS: Ticks = Ticks {
    probe: INTERVAL,
    idle: IDLE_TICK,
    long: Duration::from_secs(10),
};

fn origin() -> Instant {
    Instant::now()
}

fn waiting(age: Duration) -> Waiting {
    Waiting {
        age,
        threshold: THRESHOLD,
        stacks: false,
        until_roll: Duration::from_secs(1),
        window: WINDOW,
        until_check: Duration::from_secs(1),
    }
}

#[test]
fn quiet_a_parked_runtime_is_skipped_but_probed_once_per_window_without_a_hook() {
    let parked = |since_probe, hook_trusted| Tick {
        hook_trusted,
        all_parked: true,
        since_probe,
        window: WINDOW,
    };
    assert!(probe_now(parked(None, false)), "the first tick probes");
    assert!(
        !probe_now(parked(Some(300 * MS), false)),
        "skipped within the window"
    );
    assert!(
        probe_now(parked(Some(WINDOW), false)),
        "one probe per window"
    );
    assert!(
        !probe_now(parked(Some(WINDOW * 5), true)),
        "a trusted hook reports wake-ups"
    );
    let busy = Tick {
        all_parked: false,
        ..parked(Some(MS), true)
    };
    assert!(probe_now(busy), "a worker runs: probe");
}

#[test]
fn heartbeat_a_quiet_runtime_sleeps_the_long_tick_only_with_a_trusted_hook() {
    let t = origin();
    let with_hook = rest(t, true, true, None, TICKS);
    assert!(with_hook.idle && with_hook.long);
    assert_eq!(with_hook.due, t + TICKS.long);
    let without = rest(t, true, false, None, TICKS);
    assert!(without.idle && !without.long);
    assert_eq!(without.due, t + IDLE_TICK);
    // The long sleep waits for the heartbeat, not the window, when the window was quiet.
    let next_roll = t + WINDOW;
    assert_eq!(
        park_until(with_hook, false, next_roll, t + WINDOW),
        with_hook.due
    );
}

#[test]
fn nudge_and_settle_the_next_probe_is_due_one_interval_after_the_nudge() {
    assert_eq!(nudge_settle(INTERVAL), 4 * MS);
    assert_eq!(nudge_settle(2 * MS), MS);
    let t = origin();
    let nudge = t - 3 * MS;
    let r = rest(t, false, true, Some(nudge), TICKS);
    assert_eq!(r.due, nudge + INTERVAL - tick_early(INTERVAL));
    // A nudge is no base for an idle rest: the quiet runtime's tick counts from the tick.
    let r = rest(t, true, false, Some(nudge), TICKS);
    assert_eq!(r.due, t + IDLE_TICK);
}

#[test]
fn wake_settle_a_tick_right_after_a_wake_up_waits_until_the_worker_got_going() {
    let t = origin() + 100 * MS;
    let settle = nudge_settle(INTERVAL);
    assert_eq!(settle, 4 * MS);
    assert_eq!(
        wake_settle(t, Some(t - MS), false, INTERVAL),
        3 * MS,
        "until the settle after the wake-up"
    );
    assert_eq!(
        wake_settle(t, Some(t - 6 * MS), false, INTERVAL),
        Duration::ZERO,
        "woke long enough ago"
    );
    assert_eq!(
        wake_settle(t, Some(t + MS), false, INTERVAL),
        settle,
        "a wake-up after the tick's look waits one settle at most"
    );
    assert_eq!(
        wake_settle(t, None, false, INTERVAL),
        Duration::ZERO,
        "no timed wake-up"
    );
    assert_eq!(
        wake_settle(t, Some(t - MS), true, INTERVAL),
        Duration::ZERO,
        "the nudge already settled"
    );
    // The tick after is due one interval (aimed early) after the tick, not after the settle.
    let r = rest(t, false, true, None, TICKS);
    assert_eq!(r.due, t + INTERVAL - tick_early(INTERVAL));
}

#[test]
fn busy_tick_early_aim_two_probes_are_at_most_one_interval_apart() {
    assert_eq!(tick_early(10 * MS), Duration::from_micros(500));
    assert_eq!(tick_early(100 * MS), Duration::from_micros(500));
    assert_eq!(tick_early(2 * MS), Duration::from_micros(100));
    assert_eq!(
        tick_early(Duration::from_micros(100)),
        Duration::from_micros(5)
    );
    let t = origin();
    let r = rest(t, false, false, None, TICKS);
    assert!(!r.idle && !r.long);
    assert_eq!(r.due, t + Duration::from_micros(9_500));
    // A busy rest wakes for the stuck-worker check too.
    let check = t + 2 * MS;
    assert_eq!(park_until(r, false, t + WINDOW, check), check);
}

#[test]
fn window_roll_windows_end_on_time_while_outstanding_and_after_a_busy_window() {
    let mut o = Outstanding::default();
    let step = while_outstanding(
        &mut o,
        Waiting {
            until_roll: Duration::ZERO,
            ..waiting(10 * MS)
        },
    );
    assert!(
        step.roll,
        "a due window ends while the probe is outstanding"
    );
    let step = while_outstanding(
        &mut o,
        Waiting {
            until_roll: 20 * MS,
            ..waiting(10 * MS)
        },
    );
    assert!(!step.roll);
    assert!(
        step.park <= 20 * MS,
        "parks no longer than the window's end"
    );

    let t = origin();
    let window_start = t - 800 * MS;
    assert!(
        busy_window(t, 300 * MS, window_start),
        "quiet since after the start"
    );
    assert!(!busy_window(t, 900 * MS, window_start), "quiet throughout");
    let idle = rest(t, true, true, None, TICKS);
    let next_roll = t + 200 * MS;
    assert_eq!(park_until(idle, true, next_roll, t + WINDOW), next_roll);
    assert_eq!(park_until(idle, false, next_roll, t + WINDOW), idle.due);
}

#[test]
fn early_export_once_half_way_to_the_threshold() {
    let mut o = Outstanding::default();
    let step = while_outstanding(&mut o, waiting(100 * MS));
    assert!(!step.early_export);
    assert_eq!(step.park, 25 * MS, "wakes half way to the threshold");
    let step = while_outstanding(&mut o, waiting(125 * MS));
    assert!(step.early_export && o.early_export_done);
    let step = while_outstanding(&mut o, waiting(130 * MS));
    assert!(!step.early_export, "once per probe");
    // Not loopwatch's own pipeline: no early export.
    let mut o = Outstanding {
        early_export_done: true,
        ..Outstanding::default()
    };
    assert!(!while_outstanding(&mut o, waiting(200 * MS)).early_export);
}

#[test]
fn stall_counted_once_at_the_threshold_with_stacks_at_one_and_two_thresholds() {
    let with_stacks = |age| Waiting {
        stacks: true,
        ..waiting(age)
    };
    let mut o = Outstanding {
        early_export_done: true,
        ..Outstanding::default()
    };
    let step = while_outstanding(&mut o, with_stacks(240 * MS));
    assert!(!step.stall && step.capture.is_none() && step.warm_stacks);
    assert_eq!(step.park, 10 * MS, "wakes at the threshold");
    let step = while_outstanding(&mut o, with_stacks(THRESHOLD));
    assert!(step.stall && o.stalled);
    assert_eq!(step.capture, Some(1));
    let step = while_outstanding(&mut o, with_stacks(300 * MS));
    assert!(!step.stall && step.capture.is_none());
    let step = while_outstanding(&mut o, with_stacks(2 * THRESHOLD));
    assert_eq!(step.capture, Some(2));
    let step = while_outstanding(&mut o, with_stacks(10 * THRESHOLD));
    assert!(step.capture.is_none() && !step.stall);
    assert_eq!(step.park, MAX_PARK, "re-checks without a deadline");
    assert!(while_outstanding(&mut o, with_stacks(Duration::ZERO)).park >= MIN_PARK);
}

#[test]
fn hook_trust_ends_after_more_misses_than_tolerated() {
    assert!(!hook_trusted(false, 0, 5), "no hook");
    assert!(!hook_trusted(true, 0, 0), "a hook that never reported");
    assert!(hook_trusted(true, HOOK_MISSES_TOLERATED, 5));
    assert!(!hook_trusted(true, HOOK_MISSES_TOLERATED + 1, 5));
    assert!(hook_missed(3, 2), "workers woke more often than reported");
    assert!(!hook_missed(2, 2));
    assert!(
        !hook_missed(1, 2),
        "tokio publishes a wake-up late, never early"
    );
}
