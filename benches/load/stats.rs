//! Latency samples: microseconds in a `Vec<u32>`, sorted once, read by nearest rank.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of one set of samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50_us: u32,
    pub p90_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    pub max_us: u32,
    pub mean_us: f64,
}

impl Summary {
    pub fn of(mut samples: Vec<u32>) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        Summary {
            n: samples.len(),
            p50_us: rank(&samples, 0.50),
            p90_us: rank(&samples, 0.90),
            p99_us: rank(&samples, 0.99),
            p999_us: rank(&samples, 0.999),
            max_us: samples[samples.len() - 1],
            mean_us: sum as f64 / samples.len() as f64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn rank(sorted: &[u32], q: f64) -> u32 {
    let n = sorted.len();
    let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    sorted[idx]
}

/// Whole microseconds, saturating.
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// TTFB by when in a round's burst its stream was due: one slice per tenth of the streams in
/// start order, and when the last first byte arrived. A tail that grows with the start order is
/// a backlog of work; one spread evenly is not.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timeline {
    pub slices: Vec<TimelineSlice>,
    /// Latest `due + TTFB` over all streams, from the round's start.
    pub last_first_byte_us: u32,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TimelineSlice {
    pub due_from_us: u32,
    pub due_to_us: u32,
    pub ttfb: Summary,
}

impl Timeline {
    pub fn of(mut points: Vec<(u32, u32)>) -> Timeline {
        points.sort_unstable();
        let last_first_byte_us = points
            .iter()
            .map(|&(d, t)| d.saturating_add(t))
            .max()
            .unwrap_or(0);
        let per = points.len().div_ceil(10).max(1);
        let slices = points
            .chunks(per)
            .map(|c| TimelineSlice {
                due_from_us: c[0].0,
                due_to_us: c[c.len() - 1].0,
                ttfb: Summary::of(c.iter().map(|&(_, t)| t).collect()),
            })
            .collect();
        Timeline {
            slices,
            last_first_byte_us,
        }
    }
}
