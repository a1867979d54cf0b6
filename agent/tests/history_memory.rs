//! The history rings' memory across 1000 instances (the services cap) and 20 minutes of
//! simulated time: bounded by `receiver.max_services` x the per-instance bound, flat once
//! the rings are full, every ring holding its 15 minutes, and freed when the instances are
//! forgotten. Simulated time: the exports and evaluations carry their own instants.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loopwatch_agent::config::Config;
use loopwatch_agent::testing::{AgentState, EVICT_AFTER_STALE, HISTORY_MAX_BYTES, HISTORY_SECONDS};

const INSTANCES: usize = 1000;
/// Each instance exports every 10 s (staggered); the agent evaluates every instance every
/// simulated second, which writes every ring's sample of that second.
const EXPORT_EVERY: u64 = 10;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("rss pages");
    pages * 4096
}

#[test]
fn history_memory_is_bounded_flat_and_freed() {
    let config = Config::builder().build().expect("config");
    let stale_after = config.health.stale_after;
    let state = AgentState::new(config);
    let start = Instant::now();
    let names: Vec<String> = (0..INSTANCES).map(|i| format!("pod-{i}")).collect();
    // Every 20 s an instance reports a 0.8 s lag (an incident: unhealthy, then recovered), so
    // each keeps its most episodes from the 11th minute on.
    let calm: Vec<_> = names
        .iter()
        .map(|n| tokio_export("fleet", n, 0.002, 0.0, 0.3))
        .collect();
    let spike: Vec<_> = names
        .iter()
        .map(|n| tokio_export("fleet", n, 0.8, 0.0, 0.9))
        .collect();

    let mut at_16_min = None;
    let mut rss_16_min = 0;
    for sec in 0..20 * 60u64 {
        let now = start + Duration::from_secs(sec);
        for (i, _) in names
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as u64 + sec).is_multiple_of(EXPORT_EVERY))
        {
            let req = if (i as u64 + sec).is_multiple_of(20) {
                &spike[i]
            } else {
                &calm[i]
            };
            state.ingest_metrics_at(req, now).expect("accepted");
        }
        state.reevaluate(now, Duration::from_millis(250));
        if sec == 16 * 60 {
            at_16_min = Some(state.history_bytes());
            rss_16_min = rss_bytes();
        }
    }
    let end = start + Duration::from_secs(20 * 60);
    let at_20_min = state.history_bytes();
    let at_16_min = at_16_min.expect("measured at 16 min");
    let per_instance = at_20_min / INSTANCES;
    eprintln!(
        "history: {at_16_min} B at 16 min, {at_20_min} B at 20 min ({per_instance} B per instance, bound {HISTORY_MAX_BYTES} B)"
    );
    assert!(at_20_min <= INSTANCES * HISTORY_MAX_BYTES, "{at_20_min} B");
    assert_eq!(at_20_min, at_16_min, "history grew after the rings filled");
    let rss_growth = rss_bytes().saturating_sub(rss_16_min);
    assert!(
        rss_growth < 2 << 20,
        "RSS grew {rss_growth} B from 16 to 20 min"
    );

    let views = state.history("fleet", Some("pod-7"), end);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].samples.len(), HISTORY_SECONDS, "a full ring");
    assert!(
        views[0]
            .episodes
            .iter()
            .any(|e| e.reasons.iter().any(|r| r.starts_with("lag "))),
        "the lag incidents are kept: {:?}",
        views[0].episodes
    );

    // Departed: after 60 x stale_after without data every instance is forgotten with its ring.
    let later = end + stale_after.saturating_mul(EVICT_AFTER_STALE) + Duration::from_secs(1);
    state.reevaluate(later, Duration::from_millis(250));
    assert!(state.evaluate(later).is_empty());
    assert_eq!(state.history_bytes(), 0);
}
