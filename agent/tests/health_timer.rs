//! The health timer's schedule (`AgentState::reevaluate`): it ticks every period only while
//! a service is unhealthy, otherwise at the next staleness (or forgetting) deadline, and an
//! export that turns a service unhealthy wakes it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loopwatch_agent::config::Config;
use loopwatch_agent::testing::HealthState;
use loopwatch_agent::testing::{AgentState, EVICT_AFTER_STALE};

const PERIOD: Duration = Duration::from_millis(750);

fn state() -> AgentState {
    AgentState::new(Config::builder().build().expect("valid config"))
}

#[test]
fn healthy_services_are_due_at_their_staleness_deadline() {
    let state = state();
    let stale_after = state.config().health.stale_after;
    let before = Instant::now();
    state
        .ingest_metrics(&tokio_export("svc", "i", 0.001, 0.0, 0.1))
        .expect("accepted");
    let after = Instant::now();
    let due = state.reevaluate(after, PERIOD);
    assert!(due >= before + stale_after && due <= after + stale_after);
    // At the deadline the service is stale, and next due when it would be forgotten
    // (capped at one `stale_after` ahead).
    let at = after + stale_after;
    let due = state.reevaluate(at, PERIOD);
    assert_eq!(state.evaluate(at)[0].state, HealthState::Stale);
    assert_eq!(due, at + stale_after);
    let gone = after + stale_after.saturating_mul(EVICT_AFTER_STALE);
    assert!(state.reevaluate(gone, PERIOD) <= gone + stale_after);
    assert!(state.evaluate(gone).is_empty(), "forgotten");
}

#[test]
fn no_service_is_due_after_stale_after() {
    let state = state();
    let now = Instant::now();
    assert_eq!(
        state.reevaluate(now, PERIOD),
        now + state.config().health.stale_after
    );
}

#[tokio::test]
async fn an_unhealthy_service_ticks_every_period_and_wakes_the_timer() {
    let state = state();
    state
        .ingest_metrics(&tokio_export("svc", "i", 0.001, 0.0, 0.1))
        .expect("accepted");
    // Healthy: nothing wakes the timer.
    let quiet = tokio::time::timeout(Duration::from_millis(1), state.turned_unhealthy());
    assert!(quiet.await.is_err());
    state
        .ingest_metrics(&tokio_export("svc", "i", 2.0, 0.0, 0.1))
        .expect("accepted");
    // The permit was kept for the timer.
    state.turned_unhealthy().await;
    let now = Instant::now();
    assert_eq!(state.reevaluate(now, PERIOD), now + PERIOD);
}
