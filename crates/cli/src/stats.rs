//! Latency samples and their summaries.

use std::time::Duration;

#[derive(Default, Clone, Debug)]
pub struct Samples {
    durations: Vec<Duration>,
}

impl Samples {
    pub fn len(&self) -> usize {
        self.durations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.durations.is_empty()
    }

    pub fn push(&mut self, duration: Duration) {
        self.durations.push(duration);
    }

    pub fn extend(&mut self, other: Samples) {
        self.durations.extend(other.durations);
    }

    /// The `percent`-th percentile (nearest rank), or `None` without samples.
    pub fn percentile(&self, percent: f64) -> Option<Duration> {
        if self.durations.is_empty() {
            return None;
        }
        let mut sorted = self.durations.clone();
        sorted.sort_unstable();
        let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    /// `p50/p99` in milliseconds, or `-` without samples.
    pub fn p50_p99(&self) -> String {
        match (self.percentile(50.0), self.percentile(99.0)) {
            (Some(p50), Some(p99)) => format!("{}/{}", millis(p50), millis(p99)),
            _ => "-".to_string(),
        }
    }
}

pub fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = Samples::default();
        for ms in 1..=100 {
            samples.push(Duration::from_millis(ms));
        }
        assert_eq!(samples.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(samples.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(samples.percentile(100.0), Some(Duration::from_millis(100)));
        assert_eq!(Samples::default().p50_p99(), "-");
    }
}
