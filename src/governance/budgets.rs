//! Budgets: what a tenant (or one of its projects) may spend per UTC day or month, in dollars,
//! kWh or grams of CO2e. Spending is counted as requests are recorded and restored from the
//! usage ledger at start; a request whose budget is used up is refused before any compute.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// When a budget's period resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// At 00:00 UTC.
    Day,
    /// At 00:00 UTC on the 1st.
    Month,
}

/// One `[[budgets]]` entry of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The tenant (an API key's name, or `anonymous`).
    pub tenant: String,
    /// One project of the tenant; the whole tenant when absent.
    #[serde(default)]
    pub project: Option<String>,
    /// `day` or `month` (UTC).
    pub period: Period,
    /// Most US dollars per period.
    #[serde(default)]
    pub usd: Option<f64>,
    /// Most kWh per period.
    #[serde(default)]
    pub kwh: Option<f64>,
    /// Most grams of CO2e per period.
    #[serde(default)]
    pub gco2e: Option<f64>,
    /// The share of a limit past which responses carry `x-budget-warning` and the server logs
    /// (once per period). Default 0.8.
    #[serde(default = "default_soft")]
    pub soft_fraction: f64,
}

fn default_soft() -> f64 {
    0.8
}

impl BudgetConfig {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        let limits = [self.usd, self.kwh, self.gco2e];
        if limits.iter().all(Option::is_none) {
            return Err(format!(
                "the budget of `{}` sets no limit: give usd, kwh or gco2e",
                self.tenant
            ));
        }
        if limits
            .iter()
            .flatten()
            .any(|l| !(l.is_finite() && *l > 0.0))
        {
            return Err(format!(
                "the limits of `{}`'s budget must be positive",
                self.tenant
            ));
        }
        if !(self.soft_fraction > 0.0 && self.soft_fraction <= 1.0) {
            return Err("soft_fraction must be in (0, 1]".into());
        }
        Ok(())
    }

    /// The name it goes by in messages: `team-a` or `team-a/chat`, with its period.
    pub fn name(&self) -> String {
        let who = match &self.project {
            Some(p) => format!("{}/{p}", self.tenant),
            None => self.tenant.clone(),
        };
        let period = match self.period {
            Period::Day => "daily",
            Period::Month => "monthly",
        };
        format!("{period} budget of {who}")
    }

    fn applies(&self, tenant: &str, project: &str) -> bool {
        self.tenant == tenant && self.project.as_deref().is_none_or(|p| p == project)
    }
}

/// Spending of one period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    /// US dollars.
    pub usd: f64,
    /// Joules.
    pub joules: f64,
    /// Grams of CO2e.
    pub gco2e: f64,
}

const JOULES_PER_KWH: f64 = 3.6e6;

/// Where a request stands against its budgets.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// No budget applies.
    Unbudgeted,
    /// Within budget: the tightest one's remaining share (0..1) and what it is, and when its
    /// period ends (Unix ms); `warn` past the soft fraction.
    Within {
        /// The remaining amount, as text with its unit (`3.2 usd`).
        remaining: String,
        /// The period's end, Unix ms.
        period_end_ms: i64,
        /// Past the soft fraction.
        warn: bool,
    },
    /// A budget is used up: what it is, how much was used, when it resets.
    Exceeded {
        /// The budget's name.
        budget: String,
        /// What was used against which limit (`10.02 of 10 usd`).
        used: String,
        /// The period's end, Unix ms.
        period_end_ms: i64,
    },
}

struct Entry {
    config: BudgetConfig,
    period_start_ms: i64,
    spent: Spent,
    warned: bool,
}

impl Entry {
    /// Each limit (when set), what was spent against it this period, and its unit.
    fn used(&self) -> [(Option<f64>, f64, &'static str); 3] {
        let (c, s) = (&self.config, &self.spent);
        [
            (c.usd, s.usd, "usd"),
            (c.kwh, s.joules / JOULES_PER_KWH, "kwh"),
            (c.gco2e, s.gco2e, "gco2e"),
        ]
    }
}

/// The budgets and what was spent against them this period.
pub struct Budgets {
    entries: Mutex<Vec<Entry>>,
}

impl Budgets {
    /// The budgets of `configs`, with what was already spent this period (`spent_since(config,
    /// period start)`, from the ledger).
    pub fn new(
        configs: &[BudgetConfig],
        now_ms: i64,
        spent_since: impl Fn(&BudgetConfig, i64) -> Spent,
    ) -> Self {
        let entries = configs
            .iter()
            .map(|c| {
                let start = period_start(c.period, now_ms);
                Entry {
                    spent: spent_since(c, start),
                    config: c.clone(),
                    period_start_ms: start,
                    warned: false,
                }
            })
            .collect();
        Self {
            entries: Mutex::new(entries),
        }
    }

    /// Whether any budget is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.lock().map_or(true, |e| e.is_empty())
    }

    /// Counts a finished request's cost against the budgets of its tenant and project.
    pub fn spend(&self, tenant: &str, project: &str, now_ms: i64, s: Spent) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        for e in entries
            .iter_mut()
            .filter(|e| e.config.applies(tenant, project))
        {
            roll(e, now_ms);
            e.spent.usd += s.usd;
            e.spent.joules += s.joules;
            e.spent.gco2e += s.gco2e;
        }
    }

    /// Counts a recorded request's cost against the budgets of its tenant and project.
    pub fn spend_record(&self, r: &super::ledger::UsageRecord) {
        self.spend(
            &r.tenant,
            &r.project,
            r.ts_ms,
            Spent {
                usd: r.cost_usd,
                joules: r.joules,
                gco2e: r.co2e_grams,
            },
        );
    }

    /// Where a request of `tenant` charged to `project` stands, now.
    pub fn standing(&self, tenant: &str, project: &str, now_ms: i64) -> Standing {
        let Ok(mut entries) = self.entries.lock() else {
            return Standing::Unbudgeted;
        };
        let mut best: Option<(f64, Standing)> = None;
        for e in entries
            .iter_mut()
            .filter(|e| e.config.applies(tenant, project))
        {
            roll(e, now_ms);
            let end = period_end(e.config.period, e.period_start_ms);
            let c = &e.config;
            for (limit, spent, unit) in e.used() {
                let Some(limit) = limit else { continue };
                if spent >= limit {
                    return Standing::Exceeded {
                        budget: c.name(),
                        used: format!("{spent:.6} of {limit} {unit}"),
                        period_end_ms: end,
                    };
                }
                let share = (limit - spent) / limit;
                let warn = 1.0 - share >= c.soft_fraction;
                if warn && !e.warned {
                    e.warned = true;
                    tracing::warn!(
                        budget = %c.name(),
                        used = spent,
                        limit,
                        unit,
                        "budget past its soft threshold"
                    );
                }
                if best.as_ref().is_none_or(|(b, _)| share < *b) {
                    best = Some((
                        share,
                        Standing::Within {
                            remaining: format!("{:.6} {unit}", limit - spent),
                            period_end_ms: end,
                            warn,
                        },
                    ));
                }
            }
        }
        best.map_or(Standing::Unbudgeted, |(_, s)| s)
    }
}

/// One limit of a budget and what was used against it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LimitStatus {
    /// `usd`, `kwh` or `gco2e`.
    pub unit: &'static str,
    /// The limit per period.
    pub limit: f64,
    /// Used this period.
    pub used: f64,
    /// `used / limit`.
    pub fraction: f64,
}

/// Where a budget stands this period (`GET /v1/budgets`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetStatus {
    /// Its name (`daily budget of team-a/chat`).
    pub name: String,
    /// The tenant.
    pub tenant: String,
    /// The project, when the budget is one project's.
    pub project: Option<String>,
    /// `day` or `month`.
    pub period: Period,
    /// The period's start, RFC 3339 UTC.
    pub period_start: String,
    /// The period's end (when it resets), RFC 3339 UTC.
    pub period_end: String,
    /// Each limit.
    pub limits: Vec<LimitStatus>,
    /// The share past which responses warn.
    pub soft_fraction: f64,
    /// `ok`, `warning` (past the soft fraction) or `exceeded` (requests are refused).
    pub state: &'static str,
}

impl Budgets {
    /// Every budget's standing now (only `tenant`'s when given).
    pub fn statuses(&self, now_ms: i64, tenant: Option<&str>) -> Vec<BudgetStatus> {
        let Ok(mut entries) = self.entries.lock() else {
            return Vec::new();
        };
        entries
            .iter_mut()
            .filter(|e| tenant.is_none_or(|t| e.config.tenant == t))
            .map(|e| {
                roll(e, now_ms);
                let c = &e.config;
                let limits: Vec<LimitStatus> = e
                    .used()
                    .into_iter()
                    .filter_map(|(limit, used, unit)| {
                        limit.map(|limit| LimitStatus {
                            unit,
                            limit,
                            used,
                            fraction: used / limit,
                        })
                    })
                    .collect();
                let worst = limits.iter().map(|l| l.fraction).fold(0.0, f64::max);
                BudgetStatus {
                    name: c.name(),
                    tenant: c.tenant.clone(),
                    project: c.project.clone(),
                    period: c.period,
                    period_start: rfc3339(e.period_start_ms),
                    period_end: rfc3339(period_end(c.period, e.period_start_ms)),
                    limits,
                    soft_fraction: c.soft_fraction,
                    state: if worst >= 1.0 {
                        "exceeded"
                    } else if worst >= c.soft_fraction {
                        "warning"
                    } else {
                        "ok"
                    },
                }
            })
            .collect()
    }
}

/// Starts a new period when the current one is over.
fn roll(e: &mut Entry, now_ms: i64) {
    if now_ms >= period_end(e.config.period, e.period_start_ms) {
        e.period_start_ms = period_start(e.config.period, now_ms);
        e.spent = Spent::default();
        e.warned = false;
    }
}

const DAY_MS: i64 = 86_400_000;

/// `ms` (Unix) as RFC 3339 UTC, to the second: `2026-01-15T00:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Days since 1970-01-01 as (year, month, day) (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// The start of the period containing `now_ms`, Unix ms.
pub fn period_start(period: Period, now_ms: i64) -> i64 {
    let day = now_ms.div_euclid(DAY_MS);
    match period {
        Period::Day => day * DAY_MS,
        Period::Month => {
            let (y, m, _) = civil_from_days(day);
            days_from_civil(y, m, 1) * DAY_MS
        }
    }
}

/// The end of the period starting at `start_ms`, Unix ms.
pub fn period_end(period: Period, start_ms: i64) -> i64 {
    match period {
        Period::Day => start_ms + DAY_MS,
        Period::Month => {
            let (y, m, _) = civil_from_days(start_ms.div_euclid(DAY_MS));
            let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            days_from_civil(y, m, 1) * DAY_MS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_15: i64 = 1_768_435_200_000; // 2026-01-15T00:00:00Z

    fn budget(project: Option<&str>, usd: Option<f64>, kwh: Option<f64>) -> BudgetConfig {
        BudgetConfig {
            tenant: "team-a".into(),
            project: project.map(str::to_string),
            period: Period::Day,
            usd,
            kwh,
            gco2e: None,
            soft_fraction: 0.8,
        }
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        assert_eq!(period_start(Period::Day, JAN_15 + 5), JAN_15);
        assert_eq!(period_end(Period::Day, JAN_15), JAN_15 + DAY_MS);
        let jan_1 = 1_767_225_600_000;
        assert_eq!(period_start(Period::Month, JAN_15), jan_1);
        assert_eq!(period_end(Period::Month, jan_1), jan_1 + 31 * DAY_MS);
        let dec_1 = 1_764_547_200_000; // 2025-12-01
        assert_eq!(
            period_end(Period::Month, dec_1),
            jan_1,
            "December rolls into the next year"
        );
        for day in [-1000, 0, 59, 60, 10_000, 20_454, 30_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn spending_up_to_the_limit_refuses_and_a_new_period_resets() {
        let b = Budgets::new(&[budget(None, Some(1.0), None)], JAN_15, |_, _| Spent {
            usd: 0.5,
            ..Default::default()
        });
        match b.standing("team-a", "default", JAN_15) {
            Standing::Within {
                remaining,
                warn,
                period_end_ms,
            } => {
                assert_eq!(remaining, "0.500000 usd");
                assert!(!warn);
                assert_eq!(period_end_ms, JAN_15 + DAY_MS);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            b.standing("team-b", "default", JAN_15),
            Standing::Unbudgeted
        );
        b.spend(
            "team-a",
            "x",
            JAN_15,
            Spent {
                usd: 0.35,
                ..Default::default()
            },
        );
        assert!(matches!(
            b.standing("team-a", "x", JAN_15),
            Standing::Within { warn: true, .. }
        ));
        b.spend(
            "team-a",
            "x",
            JAN_15,
            Spent {
                usd: 0.2,
                ..Default::default()
            },
        );
        match b.standing("team-a", "x", JAN_15) {
            Standing::Exceeded { budget, used, .. } => {
                assert_eq!(budget, "daily budget of team-a");
                assert!(used.ends_with("of 1 usd"), "{used}");
            }
            other => panic!("{other:?}"),
        }
        // The next day starts from zero.
        assert!(matches!(
            b.standing("team-a", "x", JAN_15 + DAY_MS),
            Standing::Within { warn: false, .. }
        ));
    }

    #[test]
    fn project_budgets_apply_to_their_project_and_the_tightest_limit_shows() {
        let b = Budgets::new(
            &[
                budget(Some("chat"), Some(10.0), Some(1.0)),
                budget(None, Some(100.0), None),
            ],
            JAN_15,
            |_, _| Spent::default(),
        );
        b.spend(
            "team-a",
            "chat",
            JAN_15,
            Spent {
                usd: 1.0,
                joules: 0.9 * 3.6e6,
                gco2e: 0.0,
            },
        );
        match b.standing("team-a", "chat", JAN_15) {
            Standing::Within {
                remaining, warn, ..
            } => {
                assert!(remaining.ends_with("kwh"), "{remaining}");
                assert!(warn);
            }
            other => panic!("{other:?}"),
        }
        // Another project is held only by the tenant's budget.
        match b.standing("team-a", "search", JAN_15) {
            Standing::Within { remaining, .. } => assert_eq!(remaining, "99.000000 usd"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn times_print_as_rfc3339() {
        assert_eq!(rfc3339(JAN_15), "2026-01-15T00:00:00Z");
        assert_eq!(rfc3339(JAN_15 + 3_723_000), "2026-01-15T01:02:03Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn budgets_without_limits_are_refused() {
        assert!(budget(None, None, None).check().is_err());
        assert!(budget(None, Some(-1.0), None).check().is_err());
        assert!(budget(None, Some(1.0), None).check().is_ok());
    }
}
