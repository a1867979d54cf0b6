//! When the captures of one stall or stuck episode are due: the first at the threshold, the
//! second at twice it (a loop shows different stacks, one slow call the same), none after.

use std::time::Duration;

/// What a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A runtime-wide stall (the probe was not polled).
    Stall,
    /// One worker stuck.
    Stuck,
}

impl Kind {
    pub(crate) fn event_name(self) -> &'static str {
        match self {
            Kind::Stall => "loopwatch.stall",
            Kind::Stuck => "tokio.worker.stuck",
        }
    }
}

/// Which capture of an episode is due at `age`, given how many were taken: the first at the
/// threshold, the second at twice it, none after.
pub(crate) fn decide(age: Duration, threshold: Duration, taken: u8) -> Option<u8> {
    match taken {
        0 if age >= threshold => Some(1),
        1 if age >= threshold.saturating_mul(2) => Some(2),
        _ => None,
    }
}

/// When the next capture of an episode is due (age), if any.
pub(crate) fn next_due(threshold: Duration, taken: u8) -> Option<Duration> {
    match taken {
        0 => Some(threshold),
        1 => Some(threshold.saturating_mul(2)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(250);

    #[test]
    fn first_capture_at_the_threshold_second_at_twice_then_none() {
        let ms = Duration::from_millis;
        assert_eq!(decide(ms(249), T, 0), None);
        assert_eq!(decide(ms(250), T, 0), Some(1));
        assert_eq!(decide(ms(499), T, 1), None);
        assert_eq!(decide(ms(500), T, 1), Some(2));
        assert_eq!(decide(ms(5000), T, 2), None);
        // A probe thread waking late takes the first, then the second on its next look.
        assert_eq!(decide(ms(900), T, 0), Some(1));
        assert_eq!(decide(ms(900), T, 1), Some(2));
        assert_eq!(next_due(T, 0), Some(T));
        assert_eq!(next_due(T, 1), Some(ms(500)));
        assert_eq!(next_due(T, 2), None);
    }
}
