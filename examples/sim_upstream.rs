//! The simulated OpenAI-style provider as a standalone server, for the load bench:
//! `cargo run --release --example sim_upstream -- 127.0.0.1:18080`.

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bind: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into())
        .parse()?;
    let server = sloguard::sim::spawn_provider(bind, sloguard::sim::ProviderSim::default()).await?;
    println!("simulated provider on http://{}", server.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
