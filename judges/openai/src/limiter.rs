//! Adaptive concurrency: grow while requests succeed, halve when the server
//! pushes back (429, timeouts), as TCP does with its window.

use std::sync::Mutex;

/// The number of requests allowed in flight.
pub struct Limiter {
    state: Mutex<State>,
    max: usize,
}

struct State {
    limit: f64,
    /// Before the first push-back the limit grows by one per success
    /// (doubling per round trip); after it, by one per round trip.
    slow_start: bool,
}

impl Limiter {
    /// Starts at `initial`, never above `max` or below 1.
    pub fn new(initial: usize, max: usize) -> Self {
        let max = max.max(1);
        Limiter {
            state: Mutex::new(State {
                limit: initial.clamp(1, max) as f64,
                slow_start: true,
            }),
            max,
        }
    }

    /// Requests allowed in flight now.
    pub fn current(&self) -> usize {
        self.state.lock().expect("limiter poisoned").limit as usize
    }

    /// A request succeeded.
    pub fn success(&self) {
        let mut s = self.state.lock().expect("limiter poisoned");
        let step = if s.slow_start { 1.0 } else { 1.0 / s.limit };
        s.limit = (s.limit + step).min(self.max as f64);
    }

    /// The server pushed back.
    pub fn throttled(&self) {
        let mut s = self.state.lock().expect("limiter poisoned");
        s.slow_start = false;
        s.limit = (s.limit / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::Limiter;

    #[test]
    fn grows_fast_then_halves_then_grows_slowly() {
        let l = Limiter::new(4, 100);
        for _ in 0..10 {
            l.success();
        }
        assert_eq!(l.current(), 14);
        l.throttled();
        assert_eq!(l.current(), 7);
        for _ in 0..7 {
            l.success();
        }
        assert_eq!(l.current(), 7, "about one per round trip after a push-back");
        for _ in 0..200 {
            l.success();
        }
        assert!(l.current() <= 100 && l.current() > 20);
        for _ in 0..20 {
            l.throttled();
        }
        assert_eq!(l.current(), 1);
    }
}
