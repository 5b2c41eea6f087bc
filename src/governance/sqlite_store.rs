//! The default usage store: one SQLite file (WAL, so that queries read while the writer
//! appends) holding the request records and their sums per UTC hour and per UTC day (the
//! rollups, updated in the same transaction as the records they sum). Queries read whole days
//! and hours from the rollups and only the edges of their range from the records
//! ([`super::rollup::plan`]), so a year's total costs a few hundred rows, and the rollups
//! outlive the records (`usage.retention_days` vs `usage.hourly_retention_days` and
//! `usage.daily_retention_days`).

use std::path::Path;

use rusqlite::{params, Connection, TransactionBehavior};

use super::ledger::{
    Cutoffs, Dimension, LedgerError, UsageQuery, UsageRecord, UsageStore, UsageTotals,
};
use super::rollup::{plan, Segment, Table, DAY_MS, HOUR_MS};

/// The schema's version (`PRAGMA user_version`): 2 added the cost split and the rollups, 3 the
/// response cache's hits.
const SCHEMA_VERSION: i64 = 3;

const REQUESTS: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    project TEXT NOT NULL,
    model TEXT NOT NULL,
    precision TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    joules REAL NOT NULL,
    energy_source TEXT NOT NULL,
    co2e_grams REAL NOT NULL,
    cost_usd REAL NOT NULL,
    duration_ms REAL NOT NULL,
    batch_size INTEGER NOT NULL,
    cost_energy_usd REAL,
    cost_hardware_usd REAL,
    cache_hits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
";

/// What a rollup row is keyed by (its bucket and the dimensions a query can group by).
const ROLLUP_KEY: &str = "bucket_ms, tenant, project, model, precision, endpoint, energy_source";

/// The sums a rollup row holds, in the order [`source_sql`] selects them.
const SUMS: [&str; 11] = [
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "joules",
    "co2e_grams",
    "cost_usd",
    "cost_energy_usd",
    "cost_hardware_usd",
    "duration_ms",
    "cache_hits",
];

/// The rollup table `name`.
fn rollup_schema(name: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {name} (
            bucket_ms INTEGER NOT NULL,
            tenant TEXT NOT NULL,
            project TEXT NOT NULL,
            model TEXT NOT NULL,
            precision TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            energy_source TEXT NOT NULL,
            requests INTEGER NOT NULL,
            errors INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            joules REAL NOT NULL,
            co2e_grams REAL NOT NULL,
            cost_usd REAL NOT NULL,
            cost_energy_usd REAL,
            cost_hardware_usd REAL,
            duration_ms REAL NOT NULL,
            cache_hits INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY ({ROLLUP_KEY})
        ) WITHOUT ROWID;"
    )
}

/// The upsert that adds one record (parameters: bucket, the six key columns, then the
/// record's contribution to each of [`SUMS`]) to rollup `name`.
fn rollup_upsert(name: &str) -> String {
    let sums = SUMS.join(", ");
    let placeholders = (1..=7 + SUMS.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let add = SUMS
        .iter()
        // NULL (a cost split of records from before it was kept) counts as nothing known.
        .map(|c| format!("{c} = IFNULL({c}, 0) + IFNULL(excluded.{c}, 0)"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {name} ({ROLLUP_KEY}, {sums}) VALUES ({placeholders})
         ON CONFLICT ({ROLLUP_KEY}) DO UPDATE SET {add}"
    )
}

/// Fills rollup `table` from the request records (a file from before the rollups existed).
fn rollup_backfill(table: Table) -> String {
    let bucket = table.bucket_ms().unwrap_or(HOUR_MS);
    format!(
        "DELETE FROM {name};
         INSERT INTO {name} ({ROLLUP_KEY}, {sums})
         SELECT (ts_ms / {bucket}) * {bucket}, tenant, project, model, precision, endpoint,
                energy_source, COUNT(*), SUM(status >= 400), SUM(prompt_tokens),
                SUM(completion_tokens), SUM(joules), SUM(co2e_grams), SUM(cost_usd),
                SUM(cost_energy_usd), SUM(cost_hardware_usd), SUM(duration_ms),
                SUM(cache_hits)
         FROM requests GROUP BY 1, 2, 3, 4, 5, 6, 7;",
        name = table.sql_name(),
        sums = SUMS.join(", "),
    )
}

fn err(e: rusqlite::Error) -> LedgerError {
    LedgerError::Store(e.to_string())
}

/// Opens (creating if needed) the database at `path` in WAL mode, and brings its schema to
/// [`SCHEMA_VERSION`] (in one transaction, so the writer and a reader opening at once agree).
fn open(path: &Path) -> Result<Connection, LedgerError> {
    let mut conn = Connection::open(path).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    // WAL + NORMAL: a committed flush survives a process crash; only an OS crash or power loss
    // can lose the last transactions.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version < SCHEMA_VERSION {
        tx.execute_batch(REQUESTS).map_err(err)?;
        // Columns later versions added; an older file's records keep their defaults (NULL for
        // the cost split: unknown, which sums leave out; 0 cache hits).
        let missing = |table: &str, column: &str| -> Result<bool, LedgerError> {
            tx.query_row(
                "SELECT COUNT(*) = 0 FROM pragma_table_info(?1) WHERE name = ?2",
                [table, column],
                |r| r.get::<_, bool>(0),
            )
            .map_err(err)
        };
        for (column, decl) in [
            ("cost_energy_usd", "REAL"),
            ("cost_hardware_usd", "REAL"),
            ("cache_hits", "INTEGER NOT NULL DEFAULT 0"),
        ] {
            if missing("requests", column)? {
                tx.execute_batch(&format!("ALTER TABLE requests ADD COLUMN {column} {decl}"))
                    .map_err(err)?;
            }
        }
        for table in [Table::Hourly, Table::Daily] {
            let name = table.sql_name();
            tx.execute_batch(&rollup_schema(name)).map_err(err)?;
            if missing(name, "cache_hits")? {
                tx.execute_batch(&format!(
                    "ALTER TABLE {name} ADD COLUMN cache_hits INTEGER NOT NULL DEFAULT 0"
                ))
                .map_err(err)?;
            }
            // Only a file from before the rollups is backfilled: a later one's rollups may
            // hold more than its records (kept longer).
            if version < 2 {
                tx.execute_batch(&rollup_backfill(table)).map_err(err)?;
            }
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(err)?;
    } else if version > SCHEMA_VERSION {
        return Err(LedgerError::Store(format!(
            "{} was written by a newer wattserve (schema {version}; this one knows {SCHEMA_VERSION})",
            path.display()
        )));
    }
    tx.commit().map_err(err)?;
    Ok(conn)
}

/// The writer's side.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens the store at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Ok(Self { conn: open(path)? })
    }
}

impl UsageStore for SqliteStore {
    fn append(&mut self, records: &[UsageRecord]) -> Result<(), LedgerError> {
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO requests (ts_ms, request_id, tenant, project, model, precision,
                     endpoint, status, prompt_tokens, completion_tokens, joules, energy_source,
                     co2e_grams, cost_usd, duration_ms, batch_size, cost_energy_usd,
                     cost_hardware_usd, cache_hits)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17, ?18, ?19)",
                )
                .map_err(err)?;
            let hourly_sql = rollup_upsert(Table::Hourly.sql_name());
            let daily_sql = rollup_upsert(Table::Daily.sql_name());
            let mut hourly = tx.prepare_cached(&hourly_sql).map_err(err)?;
            let mut daily = tx.prepare_cached(&daily_sql).map_err(err)?;
            for r in records {
                insert
                    .execute(params![
                        r.ts_ms,
                        r.request_id,
                        r.tenant,
                        r.project,
                        r.model,
                        r.precision,
                        r.endpoint,
                        r.status,
                        r.prompt_tokens as i64,
                        r.completion_tokens as i64,
                        r.joules,
                        r.energy_source,
                        r.co2e_grams,
                        r.cost_usd,
                        r.duration_ms,
                        r.batch_size,
                        r.cost_energy_usd,
                        r.cost_hardware_usd,
                        r.cache_hits as i64,
                    ])
                    .map_err(err)?;
                for (stmt, bucket) in [(&mut hourly, HOUR_MS), (&mut daily, DAY_MS)] {
                    stmt.execute(params![
                        r.ts_ms.div_euclid(bucket) * bucket,
                        r.tenant,
                        r.project,
                        r.model,
                        r.precision,
                        r.endpoint,
                        r.energy_source,
                        1,
                        i64::from(r.status >= 400),
                        r.prompt_tokens as i64,
                        r.completion_tokens as i64,
                        r.joules,
                        r.co2e_grams,
                        r.cost_usd,
                        r.cost_energy_usd,
                        r.cost_hardware_usd,
                        r.duration_ms,
                        r.cache_hits as i64,
                    ])
                    .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)
    }

    fn prune(&mut self, cutoffs: &Cutoffs) -> Result<u64, LedgerError> {
        let tx = self.conn.transaction().map_err(err)?;
        let mut n = 0;
        for (sql, before) in [
            ("DELETE FROM requests WHERE ts_ms < ?1", cutoffs.requests),
            (
                "DELETE FROM usage_hourly WHERE bucket_ms < ?1",
                cutoffs.hourly,
            ),
            (
                "DELETE FROM usage_daily WHERE bucket_ms < ?1",
                cutoffs.daily,
            ),
        ] {
            if let Some(before) = before {
                n += tx.execute(sql, [before]).map_err(err)? as u64;
            }
        }
        tx.commit().map_err(err)?;
        Ok(n)
    }
}

/// The readers' side: queries on a connection of their own (WAL lets them run beside the
/// writer). Blocking: call it off the async workers.
pub struct SqliteReader {
    conn: std::sync::Mutex<Connection>,
}

/// The SQL expression of a dimension (over the rows [`source_sql`] selects, whose `ts_ms` is a
/// record's time or a rollup bucket's start).
fn column(d: Dimension) -> &'static str {
    match d {
        Dimension::Tenant => "tenant",
        Dimension::Project => "project",
        Dimension::Model => "model",
        Dimension::Precision => "precision",
        Dimension::Endpoint => "endpoint",
        Dimension::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')",
        Dimension::Hour => "strftime('%Y-%m-%dT%H:00:00Z', ts_ms / 1000, 'unixepoch')",
    }
}

/// The rows of `[from_ms, to_ms)` as one table of (time, key columns, [`SUMS`]), read from the
/// request records and the rollups as [`plan`] splits the range.
fn source_sql(from_ms: i64, to_ms: i64, days: bool) -> String {
    let parts: Vec<String> = plan(from_ms, to_ms, days)
        .into_iter()
        .map(
            |Segment {
                 table,
                 from_ms,
                 to_ms,
             }| match table {
                Table::Requests => format!(
                    "SELECT ts_ms, tenant, project, model, precision, endpoint, energy_source,
                        1 AS requests, (status >= 400) AS errors, prompt_tokens,
                        completion_tokens, joules, co2e_grams, cost_usd, cost_energy_usd,
                        cost_hardware_usd, duration_ms, cache_hits
                 FROM requests WHERE ts_ms >= {from_ms} AND ts_ms < {to_ms}"
                ),
                rollup => format!(
                    "SELECT bucket_ms AS ts_ms, tenant, project, model, precision, endpoint,
                        energy_source, {sums}
                 FROM {name} WHERE bucket_ms >= {from_ms} AND bucket_ms < {to_ms}",
                    sums = SUMS.join(", "),
                    name = rollup.sql_name(),
                ),
            },
        )
        .collect();
    if parts.is_empty() {
        // An empty range: the right columns, no rows.
        return "SELECT ts_ms, tenant, project, model, precision, endpoint, energy_source,
                1 AS requests, 0 AS errors, prompt_tokens, completion_tokens, joules, co2e_grams,
                cost_usd, cost_energy_usd, cost_hardware_usd, duration_ms, cache_hits FROM requests
                WHERE 0"
            .to_string();
    }
    parts.join("\n UNION ALL ")
}

impl SqliteReader {
    /// Opens the store at `path` for reading.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Ok(Self {
            conn: std::sync::Mutex::new(open(path)?),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, LedgerError> {
        self.conn
            .lock()
            .map_err(|_| LedgerError::Store("the reader's lock is poisoned".into()))
    }

    /// Totals of the records `q` selects, one row per group (ordered by the group's values).
    pub fn totals(&self, q: &UsageQuery) -> Result<Vec<UsageTotals>, LedgerError> {
        let keys: Vec<&str> = q.group_by.iter().map(|d| column(*d)).collect();
        let select_keys = if keys.is_empty() {
            String::new()
        } else {
            format!("{}, ", keys.join(", "))
        };
        let group = if keys.is_empty() {
            String::new()
        } else {
            format!(
                " GROUP BY {k} ORDER BY {k}",
                k = (1..=keys.len())
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let days = !q.group_by.contains(&Dimension::Hour);
        let sql = format!(
            "SELECT {select_keys} SUM(requests), SUM(errors), SUM(prompt_tokens),
                    SUM(completion_tokens), SUM(joules), SUM(co2e_grams), SUM(cost_usd),
                    SUM(cost_energy_usd), SUM(cost_hardware_usd), SUM(cache_hits)
             FROM ({source})
             WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR project = ?2){group}",
            source = source_sql(q.from_ms, q.to_ms, days),
        );
        let conn = self.lock()?;
        let mut stmt = conn.prepare(&sql).map_err(err)?;
        let n = keys.len();
        let rows = stmt
            .query_map(params![q.tenant, q.project], |row| {
                let mut key = Vec::with_capacity(n);
                for i in 0..n {
                    key.push(row.get::<_, String>(i)?);
                }
                let int = |i: usize| {
                    row.get::<_, Option<i64>>(n + i)
                        .map(|v| v.unwrap_or(0) as u64)
                };
                let real = |i: usize| row.get::<_, Option<f64>>(n + i).map(|v| v.unwrap_or(0.0));
                Ok(UsageTotals {
                    key,
                    requests: int(0)?,
                    errors: int(1)?,
                    prompt_tokens: int(2)?,
                    completion_tokens: int(3)?,
                    joules: real(4)?,
                    co2e_grams: real(5)?,
                    cost_usd: real(6)?,
                    cost_energy_usd: real(7)?,
                    cost_hardware_usd: real(8)?,
                    cache_hits: int(9)?,
                })
            })
            .map_err(err)?;
        let out: Result<Vec<_>, _> = rows.collect();
        let mut out = out.map_err(err)?;
        // Without grouping, an empty range is one row of zeros rather than none.
        out.retain(|t| !(n > 0 && t.requests == 0));
        Ok(out)
    }
}

/// One row of a FOCUS export: a tenant's spending on one model and project in one UTC hour.
#[derive(Debug, Clone, PartialEq)]
pub struct HourlyCharge {
    /// The hour's start, Unix ms.
    pub hour_ms: i64,
    /// The API key's name.
    pub tenant: String,
    /// The project.
    pub project: String,
    /// The model.
    pub model: String,
    /// Its precision.
    pub precision: String,
    /// How the energy was measured (one model has one source; should a model's source change
    /// within the hour, the alphabetically last one).
    pub energy_source: String,
    /// Requests.
    pub requests: u64,
    /// Tokens read and generated.
    pub tokens: u64,
    /// Joules.
    pub joules: f64,
    /// Grams of CO2e.
    pub co2e_grams: f64,
    /// US dollars.
    pub cost_usd: f64,
    /// The part of `cost_usd` paid for electricity.
    pub cost_energy_usd: f64,
    /// The part of `cost_usd` paid for device time.
    pub cost_hardware_usd: f64,
}

impl SqliteReader {
    /// The spending in `[from_ms, to_ms)` per tenant, project, model and UTC hour (only
    /// `tenant`'s when given), in time order.
    pub fn hourly_charges(
        &self,
        from_ms: i64,
        to_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Vec<HourlyCharge>, LedgerError> {
        let sql = format!(
            "SELECT (ts_ms / {HOUR_MS}) * {HOUR_MS} AS hour, tenant, project, model, precision,
                    MAX(energy_source), SUM(requests), SUM(prompt_tokens + completion_tokens),
                    SUM(joules), SUM(co2e_grams), SUM(cost_usd), SUM(cost_energy_usd),
                    SUM(cost_hardware_usd)
             FROM ({source})
             WHERE (?1 IS NULL OR tenant = ?1)
             GROUP BY hour, tenant, project, model, precision
             ORDER BY hour, tenant, project, model, precision",
            source = source_sql(from_ms, to_ms, false),
        );
        let conn = self.lock()?;
        let mut stmt = conn.prepare(&sql).map_err(err)?;
        let rows = stmt
            .query_map(params![tenant], |r| {
                Ok(HourlyCharge {
                    hour_ms: r.get(0)?,
                    tenant: r.get(1)?,
                    project: r.get(2)?,
                    model: r.get(3)?,
                    precision: r.get(4)?,
                    energy_source: r.get(5)?,
                    requests: r.get::<_, i64>(6)? as u64,
                    tokens: r.get::<_, i64>(7)? as u64,
                    joules: r.get(8)?,
                    co2e_grams: r.get(9)?,
                    cost_usd: r.get(10)?,
                    cost_energy_usd: r.get::<_, Option<f64>>(11)?.unwrap_or(0.0),
                    cost_hardware_usd: r.get::<_, Option<f64>>(12)?.unwrap_or(0.0),
                })
            })
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::ledger::now_ms;
    use crate::governance::rollup::DAY_MS;

    fn rec(tenant: &str, model: &str, ts_ms: i64, joules: f64, status: u16) -> UsageRecord {
        UsageRecord {
            ts_ms,
            request_id: "r".into(),
            tenant: tenant.into(),
            project: "default".into(),
            model: model.into(),
            precision: "f32".into(),
            endpoint: "embeddings".into(),
            status,
            prompt_tokens: 10,
            completion_tokens: 2,
            joules,
            energy_source: "estimate".into(),
            co2e_grams: joules / 10.0,
            cost_usd: joules / 100.0,
            cost_energy_usd: joules / 400.0,
            cost_hardware_usd: joules / 100.0 - joules / 400.0,
            duration_ms: 1.0,
            batch_size: 1,
            cache_hits: 1,
        }
    }

    #[test]
    fn totals_group_scope_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite");
        let day = 86_400_000;
        let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        {
            let mut store = SqliteStore::open(&path).unwrap();
            store
                .append(&[
                    rec("a", "m1", t0, 1.0, 200),
                    rec("a", "m2", t0 + 1, 2.0, 500),
                    rec("b", "m1", t0 + day, 4.0, 200),
                ])
                .unwrap();
        }
        let reader = SqliteReader::open(&path).unwrap();
        let all = UsageQuery {
            from_ms: t0,
            to_ms: t0 + 2 * day,
            group_by: vec![],
            tenant: None,
            project: None,
        };
        let t = reader.totals(&all).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].requests, t[0].errors, t[0].joules), (3, 1, 7.0));
        assert_eq!((t[0].prompt_tokens, t[0].completion_tokens), (30, 6));
        let by = reader
            .totals(&UsageQuery {
                group_by: vec![Dimension::Tenant, Dimension::Day],
                ..all.clone()
            })
            .unwrap();
        let keys: Vec<Vec<String>> = by.iter().map(|t| t.key.clone()).collect();
        assert_eq!(keys, [["a", "2026-01-01"], ["b", "2026-01-02"]]);
        assert_eq!(by[0].joules, 3.0);
        let only_b = reader
            .totals(&UsageQuery {
                tenant: Some("b".into()),
                group_by: vec![Dimension::Model],
                ..all.clone()
            })
            .unwrap();
        assert_eq!(only_b.len(), 1);
        assert_eq!((only_b[0].key[0].as_str(), only_b[0].joules), ("m1", 4.0));
        let hour = reader
            .totals(&UsageQuery {
                group_by: vec![Dimension::Hour],
                to_ms: t0 + 1000,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(hour[0].key, ["2026-01-01T00:00:00Z"]);
        let empty = reader
            .totals(&UsageQuery {
                from_ms: 0,
                to_ms: 1,
                ..all.clone()
            })
            .unwrap();
        assert_eq!(empty[0].requests, 0);
        // Hourly charges for a FOCUS export.
        let hourly = reader.hourly_charges(t0, t0 + 2 * day, None).unwrap();
        assert_eq!(hourly.len(), 3);
        assert_eq!((hourly[0].hour_ms, hourly[0].tenant.as_str()), (t0, "a"));
        assert_eq!(hourly[0].tokens, 12);
        assert_eq!(
            reader
                .hourly_charges(t0, t0 + 2 * day, Some("b"))
                .unwrap()
                .len(),
            1
        );
        // Retention: the request records go, the rollups still answer whole hours and days.
        let mut store = SqliteStore::open(&path).unwrap();
        let records_only = Cutoffs {
            requests: Some(t0 + day),
            hourly: None,
            daily: None,
        };
        assert_eq!(store.prune(&records_only).unwrap(), 2);
        assert_eq!(reader.totals(&all).unwrap()[0].requests, 3);
        let partial_hour = UsageQuery {
            to_ms: t0 + 1000,
            ..all.clone()
        };
        assert_eq!(reader.totals(&partial_hour).unwrap()[0].requests, 0);
        let everything = Cutoffs {
            requests: Some(t0 + day),
            hourly: Some(t0 + day),
            daily: Some(t0 + day),
        };
        assert_eq!(
            store.prune(&everything).unwrap(),
            4,
            "2 hourly + 2 daily rows"
        );
        assert_eq!(reader.totals(&all).unwrap()[0].requests, 1);
        assert!(now_ms() > t0);
    }

    /// Sums the records in `[from, to)` of `tenant` by hand.
    fn brute(records: &[UsageRecord], from: i64, to: i64, tenant: Option<&str>) -> (u64, f64, f64) {
        records
            .iter()
            .filter(|r| r.ts_ms >= from && r.ts_ms < to && tenant.is_none_or(|t| r.tenant == t))
            .fold((0, 0.0, 0.0), |(n, j, e), r| {
                (n + 1, j + r.joules, e + r.cost_energy_usd)
            })
    }

    #[test]
    fn rollups_answer_exactly_what_the_records_would() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite");
        let t0 = 1_767_225_600_000;
        let mut rng = StdRng::seed_from_u64(11);
        let mut records = Vec::new();
        for _ in 0..600 {
            let tenant = ["a", "b", "c"][rng.random_range(0..3)];
            let model = ["m1", "m2"][rng.random_range(0..2)];
            // Joules in whole sixteenths: sums are exact in any order.
            let joules = f64::from(rng.random_range(0..64_u32)) / 16.0;
            let status = if rng.random_bool(0.1) { 500 } else { 200 };
            let ts = t0 + rng.random_range(0..4 * DAY_MS);
            records.push(rec(tenant, model, ts, joules, status));
        }
        let mut store = SqliteStore::open(&path).unwrap();
        for chunk in records.chunks(37) {
            store.append(chunk).unwrap();
        }
        let reader = SqliteReader::open(&path).unwrap();
        for i in 0..300 {
            let from = t0 + rng.random_range(-DAY_MS..4 * DAY_MS);
            let to = from + rng.random_range(0..5 * DAY_MS);
            let tenant = (i % 2 == 0).then(|| ["a", "b", "c"][i % 3].to_string());
            let group_by = match i % 3 {
                0 => vec![],
                1 => vec![Dimension::Day],
                _ => vec![Dimension::Hour],
            };
            let q = UsageQuery {
                from_ms: from,
                to_ms: to,
                group_by,
                tenant: tenant.clone(),
                project: None,
            };
            let totals = reader.totals(&q).unwrap();
            let requests: u64 = totals.iter().map(|t| t.requests).sum();
            let joules: f64 = totals.iter().map(|t| t.joules).sum();
            let energy_usd: f64 = totals.iter().map(|t| t.cost_energy_usd).sum();
            let (n, j, e) = brute(&records, from, to, tenant.as_deref());
            assert_eq!((requests, joules), (n, j), "{q:?}");
            let hits: u64 = totals.iter().map(|t| t.cache_hits).sum();
            assert_eq!(hits, n, "every test record has one cache hit");
            assert!((energy_usd - e).abs() <= 1e-9 * e.max(1.0), "{q:?}");
            let hourly = reader.hourly_charges(from, to, tenant.as_deref()).unwrap();
            assert_eq!(hourly.iter().map(|c| c.requests).sum::<u64>(), n);
            assert!(hourly.iter().all(|c| c.hour_ms % HOUR_MS == 0));
        }
    }

    #[test]
    fn a_file_from_before_the_rollups_is_migrated_and_backfilled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage.sqlite");
        let t0 = 1_767_225_600_000;
        {
            // Version 1: the request table without the cost split, no rollups.
            let conn = Connection::open(&path).unwrap();
            let v1 = REQUESTS.replace(
                ",\n    cost_energy_usd REAL,\n    cost_hardware_usd REAL",
                "",
            );
            assert!(!v1.contains("cost_energy_usd"));
            conn.execute_batch(&v1).unwrap();
            for (i, joules) in [1.0, 2.0, 4.0].iter().enumerate() {
                conn.execute(
                    "INSERT INTO requests (ts_ms, request_id, tenant, project, model, precision,
                     endpoint, status, prompt_tokens, completion_tokens, joules, energy_source,
                     co2e_grams, cost_usd, duration_ms, batch_size)
                     VALUES (?1, 'r', 'a', 'default', 'm', 'f32', 'embeddings', 200, 1, 0, ?2,
                     'estimate', 0, 0.5, 1, 1)",
                    params![t0 + i as i64 * DAY_MS, joules],
                )
                .unwrap();
            }
        }
        let mut store = SqliteStore::open(&path).unwrap();
        store.append(&[rec("a", "m", t0 + 10, 8.0, 200)]).unwrap();
        let reader = SqliteReader::open(&path).unwrap();
        let q = UsageQuery {
            from_ms: t0,
            to_ms: t0 + 3 * DAY_MS,
            group_by: vec![Dimension::Day],
            tenant: None,
            project: None,
        };
        let t = reader.totals(&q).unwrap();
        let joules: Vec<f64> = t.iter().map(|t| t.joules).collect();
        assert_eq!(
            joules,
            [9.0, 2.0, 4.0],
            "old records backfilled into the rollups"
        );
        // Old records have no split; the new one has.
        assert_eq!(t[0].cost_energy_usd, 8.0 / 400.0);
        assert_eq!(t[1].cost_energy_usd, 0.0);
        let version: i64 = reader
            .lock()
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Opening again neither fails nor backfills twice.
        drop(store);
        let _ = SqliteStore::open(&path).unwrap();
        assert_eq!(reader.totals(&q).unwrap()[0].joules, 9.0);
    }
}
