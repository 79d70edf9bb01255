//! `gw-api-server`: one member of the gw config store.

use clap::Parser;
use gw_api_server::Server;
use gw_api_server::config::ServerConfig;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,h2=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = ServerConfig::parse();
    let result = async {
        let server = Server::start(config).await?;
        tracing::info!(addr = %server.local_addr, id = server.node.id, "gw-api-server listening");
        server.run_until_signal().await
    }
    .await;
    if let Err(e) = result {
        eprintln!("gw-api-server: {e:#}");
        std::process::exit(1);
    }
}
