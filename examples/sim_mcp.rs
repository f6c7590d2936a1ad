//! The simulated MCP server as a standalone server, for the benches:
//! `cargo run --release --example sim_mcp -- 127.0.0.1:18280`. Its `summarize` tool answers at
//! once: as JSON to a client that takes JSON, over SSE (a progress event, then the result) to
//! one that takes only SSE.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18280".into())
        .parse()?;
    let server = sloguard::sim::spawn_mcp(bind, sloguard::sim::McpSim::default()).await?;
    println!("simulated MCP server on http://{}", server.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
