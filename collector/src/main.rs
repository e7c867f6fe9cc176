//! The `pum-collector` binary: parses the command line and runs the chosen mode.

use std::process::ExitCode;

use clap::Parser;
use pum_collector::cli::{Cli, Command, HttpArgs, ServeArgs, SourceKind};
use pum_collector::server::{self, HttpLimits};
use pum_collector::standalone::{self, Settings};
use pum_shared::Ingest;
use pum_shared::http::Cors;

/// mimalloc: each push allocates and frees many small objects, and glibc's allocator spent a
/// sixth of the server's time on them (measured with the load benchmark, benches/load.sh).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PUM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pum-collector: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::CheckConfig(args) => {
            let list = args.config.load()?;
            args.limits.check(&list)?;
            for m in list.metrics() {
                let labels: Vec<String> = m
                    .labels
                    .iter()
                    .map(|l| format!("{}({})", l.name, l.allowed_values.len()))
                    .collect();
                println!("{:<10} {} {}", m.kind.as_str(), m.name, labels.join(" "));
            }
            println!("ok: {} metrics", list.len());
            Ok(())
        }
        Command::Serve(args) => serve(args),
        Command::Standalone(args) => {
            let allowlist = args.config.load()?;
            let limits = args.limits.check(&allowlist)?;
            let settings = Settings {
                app: pum_shared::app::Settings {
                    ingest: Ingest::new(allowlist, limits),
                    cors: Cors::parse(&args.allowed_origins),
                    rate_limit: args.rate.limit().map_err(anyhow::Error::msg)?,
                },
                data_dir: args.data_dir.clone(),
                sync_interval: args.sync_interval,
                metrics_token: args.metrics.metrics_token.clone(),
                http: http_limits(&args.http),
                client_ip_header: args.rate.client_ip_header.clone(),
            };
            runtime()?.block_on(async move {
                let ingest = bind(args.ingest_listen, "--ingest-listen").await?;
                let metrics = bind(args.metrics.metrics_listen, "--metrics-listen").await?;
                // These lines are the interface for people and scripts alike: keep their shape.
                println!("pum: ingest listening on http://{}", ingest.local_addr()?);
                println!(
                    "pum: metrics listening on http://{}/metrics",
                    metrics.local_addr()?
                );
                println!("pum: demo page at http://{}/", ingest.local_addr()?);
                standalone::run(settings, ingest, metrics, shutdown_signal()).await
            })
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let allowlist = args.config.load_given()?;
    let settings = pum_collector::serve::ServeSettings {
        allowlist,
        refresh: args.refresh,
        metrics_token: args.metrics.metrics_token.clone(),
        http: http_limits(&args.http),
    };
    runtime()?.block_on(async move {
        let listener = bind(args.metrics.metrics_listen, "--metrics-listen").await?;
        println!(
            "pum: metrics listening on http://{}/metrics",
            listener.local_addr()?
        );
        match args.source {
            SourceKind::Cloudflare => {
                let source = pum_collector::sources::cloudflare::CloudflareSource::new(
                    args.url.as_deref().unwrap_or_default(),
                    args.token.as_deref().unwrap_or_default(),
                )?;
                source.check().await?;
                pum_collector::serve::run(source, settings, listener, shutdown_signal()).await
            }
            #[cfg(feature = "dynamodb")]
            SourceKind::Dynamodb => {
                let table = args.table.as_deref().unwrap_or_default();
                let source = pum_collector::sources::dynamodb::DynamoDbSource::connect(
                    table,
                    args.region.as_deref(),
                    args.endpoint_url.as_deref(),
                )
                .await?;
                pum_collector::serve::run(source, settings, listener, shutdown_signal()).await
            }
            #[cfg(not(feature = "dynamodb"))]
            SourceKind::Dynamodb => {
                let _ = (settings, listener);
                anyhow::bail!("--source dynamodb needs the collector's `dynamodb` feature")
            }
        }
    })
}

/// The HTTP limits of the flags, with the open-file limit they are sized from logged.
fn http_limits(args: &HttpArgs) -> HttpLimits {
    let fd_limit = server::fd_limit();
    let limits = args.limits(fd_limit);
    tracing::info!(
        open_file_limit = fd_limit.map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
        max_connections = limits.max_connections,
        header_timeout = ?limits.header_timeout,
        body_timeout = ?limits.body_timeout,
        idle_timeout = ?limits.idle_timeout,
        http2 = limits.http2,
        "HTTP limits"
    );
    if let Some(fds) = fd_limit
        && limits.max_connections as u64 + 128 > fds
    {
        tracing::warn!(
            "--max-connections {} leaves too few of the {fds} open files for the store and /metrics: raise the limit (ulimit -n) or lower the bound",
            limits.max_connections
        );
    }
    limits
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Binds a listener; the error names the flag that set the address.
async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("{flag} {addr}: {e}"))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
