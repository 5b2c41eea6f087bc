//! Which table answers which part of a usage query: whole UTC days from the daily rollup,
//! whole hours from the hourly rollup, the minutes at the edges from the request rows.
//!
//! The request rows are kept for `usage.retention_days`, the rollups for longer, so a query over
//! a year reads a few hundred daily rows instead of millions of requests, and still answers
//! after the requests themselves have been pruned. Splitting a range this way is exact: every
//! record lands in exactly one segment because rollup buckets are aligned to their hour or day.

/// One hour, ms.
pub const HOUR_MS: i64 = 3_600_000;
/// One UTC day, ms.
pub const DAY_MS: i64 = 86_400_000;

/// Where a segment's records are read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The request rows.
    Requests,
    /// Sums per UTC hour.
    Hourly,
    /// Sums per UTC day.
    Daily,
}

impl Table {
    /// Its SQL name.
    pub fn sql_name(self) -> &'static str {
        match self {
            Table::Requests => "requests",
            Table::Hourly => "usage_hourly",
            Table::Daily => "usage_daily",
        }
    }

    /// The width of its buckets, ms (`None` for the request rows).
    pub fn bucket_ms(self) -> Option<i64> {
        match self {
            Table::Requests => None,
            Table::Hourly => Some(HOUR_MS),
            Table::Daily => Some(DAY_MS),
        }
    }
}

/// A half-open time range `[from_ms, to_ms)` read from one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// The table.
    pub table: Table,
    /// Start, Unix ms, inclusive.
    pub from_ms: i64,
    /// End, Unix ms, exclusive.
    pub to_ms: i64,
}

/// The smallest multiple of `step` at or after `t`.
fn ceil_to(t: i64, step: i64) -> i64 {
    let down = t.div_euclid(step) * step;
    if down == t {
        t
    } else {
        down.saturating_add(step)
    }
}

/// The largest multiple of `step` at or before `t`.
fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

/// Splits `[from_ms, to_ms)` into segments, coarsest first where the bounds allow: days (only
/// when `days` — a query grouped by hour cannot read daily sums), then hours, then request rows
/// for what is left at the edges. Empty segments are left out; an empty range gives none.
pub fn plan(from_ms: i64, to_ms: i64, days: bool) -> Vec<Segment> {
    let mut out = Vec::new();
    if from_ms >= to_ms {
        return out;
    }
    let (d0, d1) = (ceil_to(from_ms, DAY_MS), floor_to(to_ms, DAY_MS));
    if days && d0 < d1 {
        plan_hours(from_ms, d0, &mut out);
        out.push(Segment {
            table: Table::Daily,
            from_ms: d0,
            to_ms: d1,
        });
        plan_hours(d1, to_ms, &mut out);
    } else {
        plan_hours(from_ms, to_ms, &mut out);
    }
    out
}

fn plan_hours(from_ms: i64, to_ms: i64, out: &mut Vec<Segment>) {
    let mut push = |table, from_ms, to_ms| {
        if from_ms < to_ms {
            out.push(Segment {
                table,
                from_ms,
                to_ms,
            });
        }
    };
    let (h0, h1) = (ceil_to(from_ms, HOUR_MS), floor_to(to_ms, HOUR_MS));
    if h0 < h1 {
        push(Table::Requests, from_ms, h0);
        push(Table::Hourly, h0, h1);
        push(Table::Requests, h1, to_ms);
    } else {
        push(Table::Requests, from_ms, to_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Which segment holds the record at `t` (a rollup holds its bucket's start).
    fn holder(segments: &[Segment], t: i64) -> Vec<usize> {
        segments
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                let key = s.table.bucket_ms().map_or(t, |b| floor_to(t, b));
                key >= s.from_ms && key < s.to_ms
            })
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn segments_tile_the_range_and_count_every_record_once() {
        let mut rng = StdRng::seed_from_u64(7);
        let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        for _ in 0..2000 {
            let from = t0 + rng.random_range(-3 * DAY_MS..3 * DAY_MS);
            let to = from + rng.random_range(0..5 * DAY_MS);
            let days = rng.random_bool(0.5);
            let segs = plan(from, to, days);
            // Contiguous, in order, covering exactly [from, to).
            let mut at = from;
            for s in &segs {
                assert_eq!(s.from_ms, at, "{segs:?}");
                assert!(s.from_ms < s.to_ms);
                if let Some(b) = s.table.bucket_ms() {
                    assert_eq!(s.from_ms.rem_euclid(b), 0, "{segs:?}");
                    assert_eq!(s.to_ms.rem_euclid(b), 0, "{segs:?}");
                }
                assert!(days || s.table != Table::Daily);
                at = s.to_ms;
            }
            assert_eq!(at.max(from), to.max(from));
            // A record anywhere in the range is counted by exactly one segment; outside, by none.
            for _ in 0..20 {
                let t = from + rng.random_range(-DAY_MS..(to - from) + DAY_MS);
                let n = holder(&segs, t).len();
                let inside = t >= from && t < to;
                assert_eq!(n, usize::from(inside), "t={t} from={from} to={to} {segs:?}");
            }
        }
    }

    #[test]
    fn a_whole_month_reads_days_and_the_current_hour_reads_requests() {
        let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        let now = t0 + 9 * DAY_MS + 5 * HOUR_MS + 123_456;
        let segs = plan(t0, now, true);
        let tables: Vec<Table> = segs.iter().map(|s| s.table).collect();
        assert_eq!(tables, [Table::Daily, Table::Hourly, Table::Requests]);
        assert_eq!(segs[0].to_ms, t0 + 9 * DAY_MS);
        assert_eq!(plan(now, now, true), []);
        // Without days, hours.
        let tables: Vec<Table> = plan(t0, now, false).iter().map(|s| s.table).collect();
        assert_eq!(tables, [Table::Hourly, Table::Requests]);
        // Up to "forever" (budgets restore with an open end).
        assert!(plan(t0, i64::MAX, true).len() <= 3);
    }
}
