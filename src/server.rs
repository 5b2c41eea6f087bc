//! Binding, serving and graceful shutdown: the piece `main` and the integration tests share.

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::api::{router, AppState};
use crate::config::{Config, ConfigError};
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
        let serving = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    tokio::select! {
                        _ = shutdown => tracing::info!("shutdown requested: finishing in-flight requests"),
                        _ = fail_rx => {}
                    }
                })
                .await
        });

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
        let result = serving
            .await
            .map_err(|e| std::io::Error::other(format!("server task failed: {e}")))?;
        // The last handle to the models: dropping it joins the compute threads.
        let _ = tokio::task::spawn_blocking(move || drop(state)).await;
        tracing::info!("stopped");
        result.map_err(ServeError::Io)
    }
}
