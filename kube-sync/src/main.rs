//! `gw-kube-sync`: the agent of one Kubernetes cluster (see the library).

use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,h2=warn,hyper=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = gw_kube_sync::run(gw_kube_sync::Args::parse()).await {
        eprintln!("gw-kube-sync: {e:#}");
        std::process::exit(1);
    }
}
