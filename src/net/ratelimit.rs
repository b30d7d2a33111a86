//! The client-side request budget that keeps us under PostHog's published rate limits
//! (per minute and per hour, docs: ../shared/posthog-api.md "Rate limits"), so that we rarely
//! see a 429 at all. Built on `governor` (GCRA).

use crate::progress::Progress;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

pub(crate) struct Budget {
    limits: Vec<(String, DefaultDirectRateLimiter)>,
    clock: DefaultClock,
}

impl Budget {
    /// `per_minute` and `per_hour` are the server's limits (0: none). GCRA allows a burst on
    /// top of its steady rate, so the burst is taken out of the rate: at most burst + rate =
    /// the limit requests fall in any window of that length.
    pub(crate) fn new(per_minute: u32, per_hour: u32) -> Self {
        let limits = [
            ("per-minute", per_minute, Duration::from_secs(60)),
            ("per-hour", per_hour, Duration::from_secs(3600)),
        ]
        .into_iter()
        .filter_map(|(name, limit, period)| {
            let quota = quota(limit, period)?;
            Some((
                format!("{name} request budget ({limit})"),
                RateLimiter::direct(quota),
            ))
        })
        .collect();
        Budget {
            limits,
            clock: DefaultClock::default(),
        }
    }

    /// Waits until one more request fits in every limit.
    pub(crate) async fn acquire(&self, progress: &Progress) {
        for (name, limiter) in &self.limits {
            while let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(self.clock.now());
                crate::net::retry::wait(progress, name, wait).await;
            }
        }
    }
}

fn quota(limit: u32, period: Duration) -> Option<Quota> {
    if limit == 0 {
        return None;
    }
    let burst = (limit / 6).max(1);
    let steady = (limit - burst).max(1);
    Some(Quota::with_period(period / steady)?.allow_burst(NonZeroU32::new(burst)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_plus_steady_rate_never_exceeds_the_limit() {
        let q = quota(240, Duration::from_secs(60)).unwrap();
        let burst = q.burst_size().get();
        let steady = Duration::from_secs(60).as_secs_f64() / q.replenish_interval().as_secs_f64();
        assert!(burst as f64 + steady <= 240.0 + 1e-9, "{burst} + {steady}");
        assert!(burst >= 1);
        assert!(quota(0, Duration::from_secs(60)).is_none());
        assert!(quota(1, Duration::from_secs(60)).is_some());
    }

    #[test]
    fn a_burst_is_allowed_then_requests_are_held_back() {
        let budget = Budget::new(60, 0);
        let (_, limiter) = &budget.limits[0];
        let allowed = (0..100).take_while(|_| limiter.check().is_ok()).count();
        assert_eq!(allowed, 10, "burst of limit/6");
    }
}
