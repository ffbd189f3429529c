//! The one retry policy of every loop that waits before trying again (upstream calls, the
//! card provider, event handlers, the outbox relay, the broker's consumers, the cache's
//! and the live updates' subscriptions): capped exponential backoff with full jitter.
//! Each pause is drawn anywhere between zero and a ceiling that doubles after every
//! failure up to a cap, so that replicas retrying the same outage spread out instead of
//! retrying in step.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    /// Pauses of up to `first`, then up to twice that after each failure, never over `max`.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, ceiling: first }
    }

    /// The pause before the next try; the ceiling doubles for the one after.
    pub fn next_pause(&mut self) -> Duration {
        let ceiling = u64::try_from(self.ceiling.as_micros()).unwrap_or(u64::MAX);
        let pause = Duration::from_micros(rand::rng().random_range(0..=ceiling));
        self.ceiling = (self.ceiling * 2).min(self.max);
        pause
    }

    /// Waits the next pause.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_pause()).await;
    }

    /// The longest the next pause can be (for a log line).
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// After a success: the next failure starts from the first pause again.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_jittered_under_a_ceiling_that_doubles_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let ceilings: Vec<Duration> = (0..4)
            .map(|_| {
                let ceiling = backoff.ceiling();
                assert!(backoff.next_pause() <= ceiling);
                ceiling
            })
            .collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(ceilings, [ms(100), ms(200), ms(350), ms(350)]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), ms(100));
        let pauses: std::collections::HashSet<Duration> =
            (0..20).map(|_| Backoff::new(ms(100), ms(100)).next_pause()).collect();
        assert!(pauses.len() > 1, "the pauses are drawn, not fixed");
    }
}
