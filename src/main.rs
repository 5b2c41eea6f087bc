//! The `wattserve` command line: `wattserve serve ...`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wattserve::bench::BenchError;
use wattserve::config::{Config, Overrides};
use wattserve::{ServeError, Server};

#[derive(Parser)]
#[command(
    name = "wattserve",
    version,
    about = "An inference server that tells you what every request costs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the models of the model repository over an OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Load-test a server (at --url, or one started in-process) and report throughput and latency.
    Bench(Box<wattserve::bench::BenchArgs>),
    /// The total cost of ownership of serving models, from `wattserve bench --json` reports:
    /// machines at the latency objective, energy, CO2e and cost over the years.
    Tco(Box<wattserve::tco::TcoArgs>),
    /// Input drift monitoring: make a reference from inputs the model was validated on.
    #[command(subcommand)]
    Drift(DriftCommand),
}

#[derive(Subcommand)]
enum DriftCommand {
    /// Embed the inputs of a JSONL file with a model and write the features drift monitoring
    /// compares live inputs with (`drift.reference_dir/<model>.json`).
    Reference(Box<wattserve::drift::reference::ReferenceArgs>),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Config file (TOML). Default: ./wattserve.toml when it exists.
    #[arg(long, env = "WATTSERVE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Bench(args) => bench(&args),
        Command::Tco(args) => tco(&args),
        Command::Drift(DriftCommand::Reference(args)) => drift_reference(&args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WATTSERVE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::load(args.config.as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    set_compute_threads(config.runtime.threads);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = Server::bind(&config).await?;
        server.run(shutdown_signal()).await
    });
    // Blocking tasks still running (a tokenization of a request just cut) must not hold the
    // exit beyond the shutdown deadline.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (ServeError::Config(_) | ServeError::Load(_) | ServeError::Keys(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &wattserve::bench::BenchArgs) -> ExitCode {
    set_compute_threads(args.threads.unwrap_or(0));
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(wattserve::bench::run(args)) {
        Ok(report) => {
            print!("{}", wattserve::bench::report::table(&report));
            if let Some(path) = &args.json {
                let written = serde_json::to_string_pretty(&report)
                    .map_err(|e| e.to_string())
                    .and_then(|s| std::fs::write(path, s).map_err(|e| e.to_string()));
                if let Err(e) = written {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if let Some(path) = &args.html {
                if let Err(e) = std::fs::write(path, wattserve::bench::html::page(&report)) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(
            e @ (BenchError::Usage(_)
            | BenchError::Serve(ServeError::Config(_) | ServeError::Load(_))),
        ) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn drift_reference(args: &wattserve::drift::reference::ReferenceArgs) -> ExitCode {
    set_compute_threads(0);
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(wattserve::drift::reference::run(args)) {
        Ok(n) => {
            println!(
                "wrote {} ({n} inputs of {})",
                args.out.display(),
                args.inputs.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ wattserve::drift::reference::ReferenceError::Usage(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tco(args: &wattserve::tco::TcoArgs) -> ExitCode {
    let live = match &args.traffic_from {
        None => None,
        Some(url) => {
            let Some(runtime) = runtime() else {
                return ExitCode::FAILURE;
            };
            match runtime.block_on(wattserve::tco::live_traffic(
                url,
                args.api_key.as_deref(),
                args.traffic_days,
            )) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let report = match wattserve::tco::run(args, live.as_ref()) {
        Ok(r) => r,
        Err(e @ wattserve::tco::TcoError::Usage(_)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", wattserve::tco::output::markdown(&report));
    let json = match serde_json::to_string_pretty(&report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: cannot write the report as JSON: {e}");
            return ExitCode::FAILURE;
        }
    };
    let files = [
        (&args.csv, wattserve::tco::output::csv(&report)),
        (&args.json, json),
        (&args.html, wattserve::tco::html::page(&report)),
    ];
    for (path, text) in files {
        if let Some(path) = path {
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// candle's CPU kernels size their pools from `RAYON_NUM_THREADS`; set it before any pool or
/// other thread exists. 0 means candle's default (one thread per physical core), written out
/// all the same: without the variable, candle's CPU matmul re-counts the cores by reading
/// `/proc/cpuinfo` on every call (thousands of reads per second under load).
fn set_compute_threads(threads: usize) {
    let threads = if threads > 0 {
        threads
    } else {
        candle_core::utils::get_num_threads()
    };
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            None
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
