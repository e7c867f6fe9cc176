//! `pum-hello`: the load benchmark's baseline, a hello-world HTTP server on the same stack as
//! pum (axum over hyper on a multi-thread tokio runtime) that answers every request `204 No
//! Content`.
//!
//! It reads the body only as far as HTTP needs (the frames are dropped as they arrive, nothing is
//! buffered or parsed), so that the connection stays usable for the next keep-alive request. What
//! pum spends beyond this server's CPU is the cost of pum itself: body buffering, parsing,
//! validation, aggregation, the store write and the JSON answer.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use clap::Parser;
use http_body_util::BodyExt;

/// A hello-world server that answers 204 to everything.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Drains the body without keeping it, then answers 204.
async fn hello(body: Body) -> StatusCode {
    let mut body = body;
    while let Some(Ok(_frame)) = body.frame().await {}
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    // The orchestrator waits for this line: keep its shape.
    println!("hello listening on http://{}", listener.local_addr()?);
    axum::serve(listener, Router::new().fallback(hello)).await?;
    Ok(())
}
