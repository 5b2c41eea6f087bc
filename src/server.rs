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

use crate::api::{router, AppState};
use crate::config::{Config, ConfigError, ServerConfig};
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
}

/// A bound, not yet serving, server. Models load in the background once [`Server::run`] starts,
/// so `/health` answers at once and `/ready` turns 200 when every model is loaded.
pub struct Server {
    listener: TcpListener,
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
        let addr = format!("{}:{}", config.server.host, config.server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self {
            listener,
            entries,
            state: AppState::new(config.limits.clone()),
            config: config.clone(),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
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
            entries,
            state,
            config,
        } = self;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("listening on http://{addr}");
        }
        let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(state.clone());
        let grace = config.server.shutdown_grace();
        let draining = state.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown => tracing::info!(
                    grace_s = grace.as_secs_f64(),
                    "shutdown requested: not ready, finishing in-flight requests"
                ),
                _ = fail_rx => {}
            }
            draining.begin_drain();
        };
        let closing = state.clone();
        let grace_over = async move {
            tokio::time::sleep(grace).await;
            tracing::info!("grace period over: ending open streams");
            closing.end_streams();
            tokio::time::sleep(STREAMS_END_WITHIN).await;
        };
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
                let _ = fail_tx.send(());
                let _ = serving.await;
                return Err(e.into());
            }
            Err(join) => {
                let _ = fail_tx.send(());
                let _ = serving.await;
                return Err(ServeError::Io(std::io::Error::other(format!(
                    "model loading panicked: {join}"
                ))));
            }
        }
        let drained = serving
            .await
            .map_err(|e| std::io::Error::other(format!("server task failed: {e}")))?;
        // The last handle to the models: dropping it joins the compute threads, which end as
        // soon as the sequences of the connections just closed are dropped.
        let _ = tokio::task::spawn_blocking(move || drop(state)).await;
        tracing::info!(connections_cut = drained.cut, "stopped");
        Ok(())
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
