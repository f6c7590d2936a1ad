//! The simulated provider as a standalone server, for the load benches:
//! `cargo run --release --example sim_upstream -- 127.0.0.1:18080`.
//! `SIM_FIRST_CHUNK_MS`, `SIM_CHUNK_MS` and `SIM_CHUNKS` shape its streamed completions.

use std::net::SocketAddr;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into())
        .parse()?;
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let mut sim = sloguard::sim::ProviderSim::default();
    if let Some(ms) = env("SIM_FIRST_CHUNK_MS") {
        sim.first_chunk_delay = Duration::from_millis(ms);
    }
    if let Some(ms) = env("SIM_CHUNK_MS") {
        sim.chunk_delay = Duration::from_millis(ms);
    }
    if let Some(n) = env("SIM_CHUNKS") {
        sim.chunks = n as usize;
    }
    let server = sloguard::sim::spawn_provider(bind, sim).await?;
    println!("simulated provider on http://{}", server.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
