//! Retrying with exponential backoff (after afterburn's `retry`): waits on the
//! network, on sockets and on keepalived are retried, each failed try logged,
//! the pause doubling up to a cap. Sleeping goes through [`Sleeper`] so tests
//! run without real time passing.

use std::fmt::Display;
use std::time::Duration;

/// Pauses between tries. Tests substitute one that only records.
pub trait Sleeper: Send + Sync {
    fn sleep(&self, d: Duration);
}

/// Real time.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadSleeper;

impl Sleeper for ThreadSleeper {
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Pause after the first failure.
    pub initial: Duration,
    /// The pause doubles up to this.
    pub max: Duration,
    /// Tries in total; `None` retries forever (a failed step of the agent:
    /// the first control plane may come hours later, and giving up would only
    /// leave a failed node that needs a reboot).
    pub attempts: Option<u32>,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration, attempts: Option<u32>) -> Backoff {
        Backoff { initial, max, attempts }
    }

    /// The pause after failed try number `n` (1-based).
    pub fn pause(&self, n: u32) -> Duration {
        let mut d = self.initial;
        for _ in 1..n {
            d = d.saturating_mul(2);
            if d >= self.max {
                return self.max;
            }
        }
        d.min(self.max)
    }

    /// The longest total pause before giving up, for messages (`None`: never gives up).
    pub fn budget(&self) -> Option<Duration> {
        let attempts = self.attempts?;
        Some((1..attempts).map(|n| self.pause(n)).sum())
    }
}

/// Runs `f` until it succeeds or the tries are used up; returns the last error then.
pub fn retry<T, E: Display>(what: &str, backoff: &Backoff, sleeper: &dyn Sleeper, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let mut n: u32 = 1;
    loop {
        match f() {
            Ok(v) => {
                if n > 1 {
                    log::info!("{what}: succeeded on try {n}");
                }
                return Ok(v);
            }
            Err(e) => {
                if backoff.attempts.is_some_and(|max| n >= max) {
                    log::warn!("{what}: try {n} failed: {e}; giving up");
                    return Err(e);
                }
                let pause = backoff.pause(n);
                log::info!("{what}: try {n} failed: {e}; next try in {}s", pause.as_secs_f32());
                sleeper.sleep(pause);
                n = n.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::{Backoff, Sleeper, retry};

    #[derive(Default)]
    struct Recorded(Mutex<Vec<Duration>>);

    impl Sleeper for Recorded {
        fn sleep(&self, d: Duration) {
            self.0.lock().unwrap().push(d);
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), None);
        let pauses: Vec<u64> = (1..=8).map(|n| b.pause(n).as_secs()).collect();
        assert_eq!(pauses, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.pause(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn bounded_retry_returns_last_error() {
        let sleeper = Recorded::default();
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(15), Some(3));
        let mut n = 0;
        let r: Result<(), String> = retry("thing", &b, &sleeper, || {
            n += 1;
            Err(format!("no {n}"))
        });
        assert_eq!(r, Err("no 3".to_string()));
        assert_eq!(
            *sleeper.0.lock().unwrap(),
            vec![Duration::from_millis(10), Duration::from_millis(15)]
        );
        assert_eq!(b.budget(), Some(Duration::from_millis(25)));
    }

    #[test]
    fn unbounded_retry_keeps_going() {
        let sleeper = Recorded::default();
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), None);
        let mut n = 0;
        let r: Result<u32, &str> = retry("api", &b, &sleeper, || {
            n += 1;
            if n < 50 { Err("refused") } else { Ok(n) }
        });
        assert_eq!(r, Ok(50));
        let pauses = sleeper.0.lock().unwrap();
        assert_eq!(pauses.len(), 49);
        assert!(pauses.iter().all(|d| *d <= Duration::from_secs(30)));
    }
}
