//! The usage ledger: one record per finished request (who, which model, what it cost), written
//! off the request path by a thread of its own in batches, so that no request waits on disk.
//!
//! Requests hand their record to [`Ledger::record`] (a channel send); the writer thread appends
//! whatever has arrived every `usage.flush_interval_ms` (and at once when asked to, before a
//! query, so that a client reads its own writes), and drains everything on shutdown. A crash
//! loses at most the records of the last flush interval. The store is a [`UsageStore`], SQLite
//! by default ([`super::sqlite_store::SqliteStore`]), so that a shared database can replace it.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// One finished request.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    /// When it finished, Unix milliseconds.
    pub ts_ms: i64,
    /// Its `x-request-id`.
    pub request_id: String,
    /// The API key's name (`anonymous` without keys).
    pub tenant: String,
    /// The project it was charged to (`default` when none was named).
    pub project: String,
    /// The served model (`unknown` when it named none that is served).
    pub model: String,
    /// The model's precision (`-` when unknown).
    pub precision: String,
    /// The endpoint label (`embeddings`, `v2_infer`, ...).
    pub endpoint: String,
    /// The HTTP status it was answered with (gRPC: the status its code stands for).
    pub status: u16,
    /// Tokens read (prompts, embedding inputs).
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Joules attributed to it (0 when it computed nothing or was not metered).
    pub joules: f64,
    /// How the joules were measured (`estimate`, `rapl`, ...; `none` when not metered).
    pub energy_source: String,
    /// Grams of CO2e.
    pub co2e_grams: f64,
    /// US dollars: `cost_energy_usd + cost_hardware_usd`.
    pub cost_usd: f64,
    /// The part of `cost_usd` paid for electricity (kWh × PUE × tariff).
    pub cost_energy_usd: f64,
    /// The part of `cost_usd` paid for the device's time (`cost.hardware_usd_per_hour`).
    pub cost_hardware_usd: f64,
    /// From arrival to the last byte of the answer, milliseconds.
    pub duration_ms: f64,
    /// The largest batch it was part of (0 when it computed nothing).
    pub batch_size: u32,
    /// Inputs (or completions) answered from the response cache.
    pub cache_hits: u64,
}

/// What a usage query asks: a time range and the dimensions to group by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// From this Unix time, milliseconds, inclusive.
    pub from_ms: i64,
    /// Until this Unix time, milliseconds, exclusive.
    pub to_ms: i64,
    /// Dimensions to group by, in order.
    pub group_by: Vec<Dimension>,
    /// Only this tenant's records, when set.
    pub tenant: Option<String>,
    /// Only this project's records, when set.
    pub project: Option<String>,
}

/// A dimension usage can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// The API key's name.
    Tenant,
    /// The project.
    Project,
    /// The model.
    Model,
    /// The precision.
    Precision,
    /// The endpoint.
    Endpoint,
    /// The UTC day, `YYYY-MM-DD`.
    Day,
    /// The UTC hour, `YYYY-MM-DDTHH:00:00Z`.
    Hour,
}

impl Dimension {
    /// Every dimension, in the order of [`Dimension::name`]s in errors.
    pub const ALL: [Dimension; 7] = [
        Dimension::Tenant,
        Dimension::Project,
        Dimension::Model,
        Dimension::Precision,
        Dimension::Endpoint,
        Dimension::Day,
        Dimension::Hour,
    ];

    /// Its name in `group_by` and in the answer.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Tenant => "tenant",
            Dimension::Project => "project",
            Dimension::Model => "model",
            Dimension::Precision => "precision",
            Dimension::Endpoint => "endpoint",
            Dimension::Day => "day",
            Dimension::Hour => "hour",
        }
    }

    /// The dimension called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// Totals of one group of records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageTotals {
    /// The group's value of each `group_by` dimension, in order.
    #[serde(skip)]
    pub key: Vec<String>,
    /// Requests.
    pub requests: u64,
    /// Requests answered with a 4xx or 5xx status.
    pub errors: u64,
    /// Tokens read.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
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
    /// Inputs (or completions) answered from the response cache.
    pub cache_hits: u64,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed.
    #[error("usage store: {0}")]
    Store(String),
    /// The writer thread is gone.
    #[error("the usage ledger's writer has stopped")]
    Stopped,
}

/// Where records are kept: SQLite by default; a shared database for a fleet later.
pub trait UsageStore: Send {
    /// Appends `records` (one transaction).
    fn append(&mut self, records: &[UsageRecord]) -> Result<(), LedgerError>;
    /// Deletes the request records and rollup rows older than `cutoffs` says; returns how
    /// many rows went.
    fn prune(&mut self, cutoffs: &Cutoffs) -> Result<u64, LedgerError>;
}

/// How long each kind of row is kept (`None`: for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// The request records (`usage.retention_days`).
    pub requests: Option<Duration>,
    /// The hourly sums (`usage.hourly_retention_days`).
    pub hourly: Option<Duration>,
    /// The daily sums (`usage.daily_retention_days`).
    pub daily: Option<Duration>,
}

/// The times before which rows go, Unix ms (`None`: keep them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    /// Request records that finished before this.
    pub requests: Option<i64>,
    /// Hourly sums of hours that started before this.
    pub hourly: Option<i64>,
    /// Daily sums of days that started before this.
    pub daily: Option<i64>,
}

impl Retention {
    /// The cutoffs at `now_ms`.
    pub fn cutoffs(&self, now_ms: i64) -> Cutoffs {
        let at = |keep: Option<Duration>| keep.map(|k| now_ms - k.as_millis() as i64);
        Cutoffs {
            requests: at(self.requests),
            hourly: at(self.hourly),
            daily: at(self.daily),
        }
    }

    /// Whether anything is ever deleted.
    pub fn prunes(&self) -> bool {
        self.requests.is_some() || self.hourly.is_some() || self.daily.is_some()
    }
}

/// The ledger's settings.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// How often the writer appends what has arrived.
    pub flush_interval: Duration,
    /// How long rows are kept (checked once an hour).
    pub retention: Retention,
}

enum Msg {
    Record(Box<UsageRecord>),
    Flush(std::sync::mpsc::SyncSender<bool>),
}

/// The handle requests record through; cloning it shares the writer.
#[derive(Clone)]
pub struct Ledger {
    tx: Sender<Msg>,
}

/// Owns the writer thread: [`LedgerWriter::close`] drains it (the server calls it on shutdown).
pub struct LedgerWriter {
    thread: Option<JoinHandle<()>>,
}

impl Ledger {
    /// Starts the writer thread over `store`.
    pub fn start(
        store: Box<dyn UsageStore>,
        settings: LedgerSettings,
    ) -> std::io::Result<(Ledger, LedgerWriter)> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wattserve-ledger".into())
            .spawn(move || write_loop(store, rx, settings))?;
        Ok((
            Ledger { tx },
            LedgerWriter {
                thread: Some(thread),
            },
        ))
    }

    /// Hands a record to the writer (never blocks; lost only if the writer has stopped).
    pub fn record(&self, record: UsageRecord) {
        if self.tx.send(Msg::Record(Box::new(record))).is_err() {
            tracing::error!("usage ledger: the writer has stopped; a record is lost");
        }
    }

    /// Asks the writer to append what it holds, and waits until it has (blocking: call it off
    /// the async workers). An error when the store refused them (they wait for the next flush):
    /// a reader would otherwise see less than was recorded.
    pub fn flush(&self) -> Result<(), LedgerError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Flush(tx))
            .map_err(|_| LedgerError::Stopped)?;
        match rx.recv() {
            Ok(true) => Ok(()),
            Ok(false) => Err(LedgerError::Store(
                "the usage store refused the latest records (they are kept and retried); retry shortly"
                    .into(),
            )),
            Err(_) => Err(LedgerError::Stopped),
        }
    }
}

impl LedgerWriter {
    /// Waits for the writer to append everything sent so far and stop (once every [`Ledger`]
    /// handle is dropped).
    pub fn close(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const PRUNE_EVERY: Duration = Duration::from_secs(3600);

fn write_loop(mut store: Box<dyn UsageStore>, rx: Receiver<Msg>, settings: LedgerSettings) {
    let mut pending: Vec<UsageRecord> = Vec::new();
    let mut next_flush = Instant::now() + settings.flush_interval;
    let mut next_prune = Instant::now();
    let mut waiting: Vec<std::sync::mpsc::SyncSender<bool>> = Vec::new();
    loop {
        let timeout = next_flush.saturating_duration_since(Instant::now());
        let closed = match rx.recv_timeout(timeout) {
            Ok(Msg::Record(r)) => {
                pending.push(*r);
                false
            }
            Ok(Msg::Flush(done)) => {
                waiting.push(done);
                next_flush = Instant::now();
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if closed || Instant::now() >= next_flush {
            if !pending.is_empty() {
                match store.append(&pending) {
                    Ok(()) => pending.clear(),
                    // Kept for the next flush; a store that keeps failing grows the backlog,
                    // which the log says once per flush.
                    Err(e) => tracing::error!(records = pending.len(), "usage ledger: {e}"),
                }
            }
            let written = pending.is_empty();
            for done in waiting.drain(..) {
                let _ = done.send(written);
            }
            next_flush = Instant::now() + settings.flush_interval;
        }
        if settings.retention.prunes() && Instant::now() >= next_prune {
            if let Err(e) = store.prune(&settings.retention.cutoffs(now_ms())) {
                tracing::error!("usage ledger retention: {e}");
            }
            next_prune = Instant::now() + PRUNE_EVERY;
        }
        if closed {
            return;
        }
    }
}

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A store in memory that can be told to fail.
    #[derive(Clone, Default)]
    struct Memory {
        rows: Arc<Mutex<Vec<UsageRecord>>>,
        fail: Arc<Mutex<bool>>,
    }

    impl UsageStore for Memory {
        fn append(&mut self, records: &[UsageRecord]) -> Result<(), LedgerError> {
            if *self.fail.lock().unwrap() {
                return Err(LedgerError::Store("disk full".into()));
            }
            self.rows.lock().unwrap().extend_from_slice(records);
            Ok(())
        }
        fn prune(&mut self, cutoffs: &Cutoffs) -> Result<u64, LedgerError> {
            let mut rows = self.rows.lock().unwrap();
            let n = rows.len();
            let before = cutoffs.requests.unwrap_or(i64::MIN);
            rows.retain(|r| r.ts_ms >= before);
            Ok((n - rows.len()) as u64)
        }
    }

    pub(crate) fn record(i: i64) -> UsageRecord {
        UsageRecord {
            ts_ms: now_ms() + i,
            request_id: format!("r{i}"),
            tenant: "t".into(),
            project: "default".into(),
            model: "m".into(),
            precision: "f32".into(),
            endpoint: "embeddings".into(),
            status: 200,
            prompt_tokens: 3,
            completion_tokens: 0,
            joules: 0.5,
            energy_source: "estimate".into(),
            co2e_grams: 0.1,
            cost_usd: 0.01,
            cost_energy_usd: 0.004,
            cost_hardware_usd: 0.006,
            duration_ms: 2.0,
            batch_size: 1,
            cache_hits: 0,
        }
    }

    fn settings(flush_ms: u64) -> LedgerSettings {
        LedgerSettings {
            flush_interval: Duration::from_millis(flush_ms),
            retention: Retention::default(),
        }
    }

    #[test]
    fn records_are_written_in_batches_and_a_flush_waits_for_them() {
        let mem = Memory::default();
        // A long interval: only the explicit flush writes.
        let (ledger, writer) = Ledger::start(Box::new(mem.clone()), settings(60_000)).unwrap();
        for i in 0..5 {
            ledger.record(record(i));
        }
        assert!(
            mem.rows.lock().unwrap().is_empty(),
            "nothing written before a flush"
        );
        ledger.flush().unwrap();
        assert_eq!(mem.rows.lock().unwrap().len(), 5);
        ledger.record(record(5));
        drop(ledger);
        writer.close();
        assert_eq!(mem.rows.lock().unwrap().len(), 6, "closing drains the rest");
    }

    #[test]
    fn the_interval_flushes_on_its_own_and_a_failing_store_keeps_the_records() {
        let mem = Memory::default();
        *mem.fail.lock().unwrap() = true;
        let (ledger, writer) = Ledger::start(Box::new(mem.clone()), settings(10)).unwrap();
        ledger.record(record(0));
        assert!(ledger.flush().is_err(), "a flush the store refused says so");
        std::thread::sleep(Duration::from_millis(50));
        assert!(mem.rows.lock().unwrap().is_empty());
        *mem.fail.lock().unwrap() = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        while mem.rows.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the kept record was never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(ledger);
        writer.close();
        assert_eq!(mem.rows.lock().unwrap().len(), 1);
    }

    #[test]
    fn dimensions_parse_by_name() {
        for d in Dimension::ALL {
            assert_eq!(Dimension::parse(d.name()), Some(d));
        }
        assert_eq!(Dimension::parse("zone"), None);
    }
}
