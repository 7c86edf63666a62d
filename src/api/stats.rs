//! Request counters for `GET /api/v1/status`: requests served since UTC
//! midnight and their mean response time. In memory: a restart starts over.

use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct RequestStats {
    today: Mutex<Day>,
}

#[derive(Default, Clone, Copy)]
struct Day {
    /// Days since the epoch (UTC) these counts are for.
    day: i64,
    requests: u64,
    total_ms: f64,
}

impl RequestStats {
    pub fn record(&self, elapsed: Duration) {
        let today = today();
        let mut d = self.today.lock().unwrap_or_else(|p| p.into_inner());
        if d.day != today {
            *d = Day {
                day: today,
                ..Day::default()
            };
        }
        d.requests += 1;
        d.total_ms += elapsed.as_secs_f64() * 1000.0;
    }

    /// (requests today, mean response time in ms; `None` before the first).
    pub fn today(&self) -> (u64, Option<f64>) {
        let d = *self.today.lock().unwrap_or_else(|p| p.into_inner());
        if d.day != today() || d.requests == 0 {
            return (0, None);
        }
        (d.requests, Some(d.total_ms / d.requests as f64))
    }
}

fn today() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() / 86_400
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_averages_recorded_requests() {
        let stats = RequestStats::default();
        stats.record(Duration::from_millis(10));
        stats.record(Duration::from_millis(30));
        assert_eq!(stats.today(), (2, Some(20.0)));
    }
}
