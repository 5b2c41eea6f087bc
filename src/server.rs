//! Binding, serving and graceful shutdown: the piece `main` and the integration tests share.
//!
//! Shutdown has a deadline. When the shutdown signal comes, `/ready` turns 503 at once, no new
//! connection is accepted, and requests in flight get `server.shutdown_grace_s` to finish; then
//! open streams end with a `shutting_down` error event, and whatever is still open a moment later
//! is closed. The compute threads stop after that, so the process ends within the grace period
//! plus about a second whatever its clients do.

mod listener;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;

pub use listener::{ConnectionLimits, Drained};

use crate::api::auth::Auth;
use crate::api::{router, AppState, UsageBackend};
use crate::config::{Config, ConfigError, ServerConfig};
use crate::governance::budgets::{BudgetConfig, Budgets, Spent};
use crate::governance::ledger::{now_ms, Ledger, LedgerError, LedgerWriter, UsageQuery};
use crate::governance::sqlite_store::{SqliteReader, SqliteStore};
use crate::governance::ApiKeys;
use crate::registry::{LoadError, Registry};
use crate::repository::{discover, ModelEntry};

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration or the model repository is invalid (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A model failed to load (exit code 2).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The API keys could not be loaded (exit code 2).
    #[error(transparent)]
    Keys(#[from] crate::governance::KeysError),
    /// A model's compute thread stopped while serving: the process exits (exit code 1) so that
    /// its supervisor restarts it, rather than serve on without the model.
    #[error("the compute thread of model(s) {0} stopped; exiting so that the server is restarted")]
    WorkerDied(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// host:port asked for.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// The usage ledger could not be opened.
    #[error(
        "cannot open the usage ledger {path}: {source} (usage.path, or usage.enabled = false)"
    )]
    Usage {
        /// The database file.
        path: std::path::PathBuf,
        /// Why.
        source: LedgerError,
    },
}

/// A bound, not yet serving, server. Models load in the background once [`Server::run`] starts,
/// so `/health` answers at once and `/ready` turns 200 when every model is loaded.
pub struct Server {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    grpc_listener: Option<TcpListener>,
    ledger_writer: Option<LedgerWriter>,
    entries: Vec<ModelEntry>,
    state: AppState,
    config: Config,
}

impl Server {
    /// Validates the model repository and binds `server.host:server.port`.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        let entries = discover(&config.server.models_dir, &config.server.models)?;
        Self::bind_entries(config, entries).await
    }

    /// Binds with an explicit list of models (e.g. the benchmark adds variants of a model);
    /// `server.precision`, when set, applies to all of them.
    pub async fn bind_entries(
        config: &Config,
        mut entries: Vec<ModelEntry>,
    ) -> Result<Self, ServeError> {
        if let Some(p) = config.server.precision {
            for e in &mut entries {
                e.spec.precision = p;
            }
        }
        crate::metrics::install();
        let auth = load_auth(config)?;
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let metrics_listener = bind_port(&config.server.host, config.server.metrics_port).await?;
        let grpc_listener = bind_port(&config.server.host, config.server.grpc_port).await?;
        let (usage, ledger_writer) = open_usage(config)?;
        if config.cache.max_bytes > 0 {
            tracing::info!(
                max_bytes = config.cache.max_bytes,
                shared = config.cache.shared,
                completions = config.cache.completions,
                "response cache"
            );
        } else {
            tracing::info!("response cache off (cache.max_bytes = 0)");
        }
        Ok(Self {
            listener,
            metrics_listener,
            grpc_listener,
            ledger_writer,
            entries,
            state: AppState::with_cache(
                config.limits.clone(),
                auth,
                usage,
                crate::cache::ResponseCache::new(&config.cache)
                    .map(|c| (c, config.energy.cpu_watts_per_core)),
            ),
            config: config.clone(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The metrics listener's address, when `server.metrics_port` is set.
    pub fn metrics_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.metrics_listener.as_ref().map(TcpListener::local_addr)
    }

    /// The gRPC listener's address, when `server.grpc_port` is set.
    pub fn grpc_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.grpc_listener.as_ref().map(TcpListener::local_addr)
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish,
    /// and stops the compute threads. Returns early with [`ServeError::Load`] if a model fails to
    /// load.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            listener,
            metrics_listener,
            grpc_listener,
            ledger_writer,
            entries,
            state,
            config,
        } = self;
        let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
        let metrics = metrics_listener.map(|l| {
            if let Ok(addr) = l.local_addr() {
                tracing::info!("metrics on http://{addr}/metrics");
            }
            let mut stopping = stopping_rx.clone();
            tokio::spawn(listener::serve(
                l,
                crate::api::metrics_router(),
                connection_limits(&config.server),
                async move {
                    let _ = stopping.wait_for(|s| *s).await;
                },
                tokio::time::sleep(Duration::from_secs(1)),
            ))
        });
        let grpc = grpc_listener.map(|l| {
            if let Ok(addr) = l.local_addr() {
                tracing::info!("gRPC (Open Inference Protocol) on {addr}");
            }
            let mut stopping = stopping_rx.clone();
            tokio::spawn(crate::api::grpc::serve(l, state.clone(), async move {
                let _ = stopping.wait_for(|s| *s).await;
            }))
        });
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("listening on http://{addr}");
        }
        // Stops the server without a signal: a model failed to load, or a compute thread died.
        let (fail_tx, mut fail_rx) = tokio::sync::mpsc::channel::<()>(2);
        let app = match cors(&config.server) {
            Some(layer) => router(state.clone()).layer(layer),
            None => router(state.clone()),
        };
        let grace = config.server.shutdown_grace();
        let draining = state.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown => tracing::info!(
                    grace_s = grace.as_secs_f64(),
                    "shutdown requested: not ready, finishing in-flight requests"
                ),
                _ = fail_rx.recv() => {}
            }
            draining.begin_drain();
            let _ = stopping_tx.send(true);
        };
        let closing = state.clone();
        let grace_over = async move {
            tokio::time::sleep(grace).await;
            tracing::info!("grace period over: ending open streams");
            closing.end_streams();
            tokio::time::sleep(STREAMS_END_WITHIN).await;
        };
        // The last minutes for `/v1/stats` and the console (stops with the state).
        state.stats_history().spawn_sampler();
        if config.drift.enabled {
            match crate::drift::Drift::start(&config.drift) {
                Ok(d) => {
                    crate::metrics::set_drift_threshold(config.drift.threshold);
                    state.set_drift(d);
                }
                Err(e) => tracing::warn!("drift monitoring off: cannot start its thread ({e})"),
            }
        }
        let serving = tokio::spawn(listener::serve(
            listener,
            app,
            connection_limits(&config.server),
            stop,
            grace_over,
        ));

        let loaded = tokio::task::spawn_blocking(move || Registry::load(&entries, &config)).await;
        match loaded {
            Ok(Ok(registry)) => {
                state.set_registry(registry);
                tracing::info!("ready");
            }
            Ok(Err(e)) => {
                let _ = fail_tx.send(()).await;
                let _ = serving.await;
                return Err(e.into());
            }
            Err(join) => {
                let _ = fail_tx.send(()).await;
                let _ = serving.await;
                return Err(ServeError::Io(std::io::Error::other(format!(
                    "model loading panicked: {join}"
                ))));
            }
        }
        let watchdog = tokio::spawn(watch_workers(state.clone(), fail_tx));
        let drained = serving
            .await
            .map_err(|e| std::io::Error::other(format!("server task failed: {e}")))?;
        watchdog.abort();
        if let Some(m) = metrics {
            let _ = m.await;
        }
        if let Some(g) = grpc {
            // Calls in flight had the grace period, as HTTP requests did; cut what is left.
            let abort = g.abort_handle();
            match tokio::time::timeout(STREAMS_END_WITHIN, g).await {
                Ok(Ok(Err(e))) => tracing::warn!("gRPC server: {e}"),
                Err(_) => abort.abort(),
                _ => {}
            }
        }
        let dead = state
            .registry()
            .map(|r| r.dead_models())
            .unwrap_or_default();
        // The last handle to the models: dropping it joins the compute threads, which end as
        // soon as the sequences of the connections just closed are dropped.
        let _ = tokio::task::spawn_blocking(move || drop(state)).await;
        // The records of the last requests are written before the process ends.
        if let Some(writer) = ledger_writer {
            let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        }
        tracing::info!(connections_cut = drained.cut, "stopped");
        if dead.is_empty() {
            Ok(())
        } else {
            Err(ServeError::WorkerDied(dead.join(", ")))
        }
    }
}

/// Opens the usage ledger (`usage.enabled`): the SQLite store, its writer thread and a reader.
fn open_usage(whole: &Config) -> Result<(Option<UsageBackend>, Option<LedgerWriter>), ServeError> {
    let config = &whole.usage;
    if !config.enabled {
        tracing::info!("usage ledger off (usage.enabled = false): /v1/usage answers 400");
        return Ok((None, None));
    }
    let fail = |source: LedgerError| ServeError::Usage {
        path: config.path.clone(),
        source,
    };
    let store = SqliteStore::open(&config.path).map_err(fail)?;
    let reader = SqliteReader::open(&config.path).map_err(fail)?;
    let (ledger, writer) = Ledger::start(Box::new(store), config.settings())
        .map_err(|e| fail(LedgerError::Store(e.to_string())))?;
    tracing::info!(
        path = %config.path.display(),
        flush_interval_ms = config.flush_interval_ms,
        "usage ledger"
    );
    let budgets = (!whole.budgets.is_empty()).then(|| {
        // What each budget has already spent this period, from the ledger.
        let spent = |b: &BudgetConfig, since: i64| {
            let q = UsageQuery {
                from_ms: since,
                to_ms: i64::MAX,
                group_by: Vec::new(),
                tenant: Some(b.tenant.clone()),
                project: b.project.clone(),
            };
            match reader.totals(&q) {
                Ok(t) => t.first().map_or(Spent::default(), |t| Spent {
                    usd: t.cost_usd,
                    joules: t.joules,
                    gco2e: t.co2e_grams,
                }),
                Err(e) => {
                    tracing::error!(budget = %b.name(), "cannot restore spending: {e}");
                    Spent::default()
                }
            }
        };
        std::sync::Arc::new(Budgets::new(&whole.budgets, now_ms(), spent))
    });
    Ok((
        Some(UsageBackend {
            ledger,
            reader: std::sync::Arc::new(reader),
            budgets,
        }),
        Some(writer),
    ))
}

/// Binds `host:port` when a port is set (the metrics and gRPC listeners).
async fn bind_port(host: &str, port: Option<u16>) -> Result<Option<TcpListener>, ServeError> {
    let Some(port) = port else {
        return Ok(None);
    };
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr)
        .await
        .map(Some)
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The API keys: `WATTSERVE_API_KEYS` when set, else `auth.keys_file`, else none (one loud
/// line when the server listens beyond loopback without them).
fn load_auth(config: &Config) -> Result<Auth, ServeError> {
    let keys = match std::env::var("WATTSERVE_API_KEYS") {
        Ok(v) if !v.trim().is_empty() => Some(ApiKeys::from_env_value(&v)?),
        _ => match &config.auth.keys_file {
            Some(path) => Some(ApiKeys::from_file(path)?),
            None => None,
        },
    };
    match &keys {
        Some(k) => tracing::info!(
            keys = k.len(),
            open_paths = ?config.auth.open_paths,
            "API keys required"
        ),
        None if !is_loopback(&config.server.host) => tracing::warn!(
            host = %config.server.host,
            "NO API KEYS: anyone who can reach this address can use the server; set \
             auth.keys_file or WATTSERVE_API_KEYS"
        ),
        None => {}
    }
    Ok(Auth::new(keys, config.auth.open_paths.clone()))
}

/// The CORS layer for `server.cors_allowed_origins`; `None` (no CORS headers at all) when the
/// list is empty. Origins were checked by the configuration.
fn cors(server: &ServerConfig) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if server.cors_allowed_origins.is_empty() {
        return None;
    }
    let origin = if server.cors_allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            server
                .cors_allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let exposed: Vec<HeaderName> = std::iter::once("x-request-id")
        .chain(crate::api::handler::SERVING_HEADERS)
        .chain(crate::api::usage::ENERGY_HEADERS)
        .map(HeaderName::from_static)
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers(exposed),
    )
}

/// Whether `host` only accepts connections from this machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How often the compute threads are checked.
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(500);

/// Checks the compute threads; when one has stopped, logs it and starts the shutdown (`/ready`
/// already answers 503 naming the model).
async fn watch_workers(state: AppState, stop: tokio::sync::mpsc::Sender<()>) {
    loop {
        tokio::time::sleep(WATCHDOG_INTERVAL).await;
        let dead = state
            .registry()
            .map(|r| r.dead_models())
            .unwrap_or_default();
        if !dead.is_empty() {
            tracing::error!(models = ?dead, "a compute thread stopped: shutting down to be restarted");
            let _ = stop.send(()).await;
            return;
        }
    }
}

/// How long open streams get to send their final event once the grace period is over.
const STREAMS_END_WITHIN: Duration = Duration::from_millis(500);

/// The connection layer's bounds from `[server]`.
fn connection_limits(server: &ServerConfig) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: server.header_read_timeout(),
        max_header_bytes: server.max_header_bytes,
        max_connections: server.max_connections,
    }
}
