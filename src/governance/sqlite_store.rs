//! The default usage store: one SQLite file (WAL, so that queries read while the writer
//! appends), one table of requests, indexed by time.

use std::path::Path;

use rusqlite::{params, Connection};

use super::ledger::{Dimension, LedgerError, UsageQuery, UsageRecord, UsageStore, UsageTotals};

const SCHEMA: &str = "
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
    batch_size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
";

fn err(e: rusqlite::Error) -> LedgerError {
    LedgerError::Store(e.to_string())
}

/// Opens (creating if needed) the database at `path` in WAL mode with the schema.
fn open(path: &Path) -> Result<Connection, LedgerError> {
    let conn = Connection::open(path).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    // WAL + NORMAL: a committed flush survives a process crash; only an OS crash or power loss
    // can lose the last transactions.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
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
                     co2e_grams, cost_usd, duration_ms, batch_size)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(err)?;
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
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    fn prune(&mut self, before_ms: i64) -> Result<u64, LedgerError> {
        self.conn
            .execute("DELETE FROM requests WHERE ts_ms < ?1", [before_ms])
            .map(|n| n as u64)
            .map_err(err)
    }
}

/// The readers' side: queries on a connection of their own (WAL lets them run beside the
/// writer). Blocking: call it off the async workers.
pub struct SqliteReader {
    conn: std::sync::Mutex<Connection>,
}

/// The SQL expression of a dimension.
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

impl SqliteReader {
    /// Opens the store at `path` for reading.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Ok(Self {
            conn: std::sync::Mutex::new(open(path)?),
        })
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
        let sql = format!(
            "SELECT {select_keys} COUNT(*), SUM(status >= 400), SUM(prompt_tokens),
                    SUM(completion_tokens), SUM(joules), SUM(co2e_grams), SUM(cost_usd)
             FROM requests WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR tenant = ?3)
               AND (?4 IS NULL OR project = ?4){group}"
        );
        let conn = self
            .conn
            .lock()
            .map_err(|_| LedgerError::Store("the reader's lock is poisoned".into()))?;
        let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
        let n = keys.len();
        let rows = stmt
            .query_map(params![q.from_ms, q.to_ms, q.tenant, q.project], |row| {
                let mut key = Vec::with_capacity(n);
                for i in 0..n {
                    key.push(row.get::<_, String>(i)?);
                }
                Ok(UsageTotals {
                    key,
                    requests: row.get::<_, i64>(n)? as u64,
                    errors: row.get::<_, Option<i64>>(n + 1)?.unwrap_or(0) as u64,
                    prompt_tokens: row.get::<_, Option<i64>>(n + 2)?.unwrap_or(0) as u64,
                    completion_tokens: row.get::<_, Option<i64>>(n + 3)?.unwrap_or(0) as u64,
                    joules: row.get::<_, Option<f64>>(n + 4)?.unwrap_or(0.0),
                    co2e_grams: row.get::<_, Option<f64>>(n + 5)?.unwrap_or(0.0),
                    cost_usd: row.get::<_, Option<f64>>(n + 6)?.unwrap_or(0.0),
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
    /// How the energy was measured (the most frequent source when several).
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
        let conn = self
            .conn
            .lock()
            .map_err(|_| LedgerError::Store("the reader's lock is poisoned".into()))?;
        let mut stmt = conn
            .prepare_cached(
                "SELECT (ts_ms / 3600000) * 3600000 AS hour, tenant, project, model, precision,
                        MAX(energy_source), COUNT(*), SUM(prompt_tokens + completion_tokens),
                        SUM(joules), SUM(co2e_grams), SUM(cost_usd)
                 FROM requests
                 WHERE ts_ms >= ?1 AND ts_ms < ?2 AND (?3 IS NULL OR tenant = ?3)
                 GROUP BY hour, tenant, project, model, precision
                 ORDER BY hour, tenant, project, model, precision",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map(params![from_ms, to_ms, tenant], |r| {
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
            duration_ms: 1.0,
            batch_size: 1,
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
        // Retention.
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.prune(t0 + day).unwrap(), 2);
        assert_eq!(reader.totals(&all).unwrap()[0].requests, 1);
        assert!(now_ms() > t0);
    }
}
