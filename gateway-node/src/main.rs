//! `gw-node`: a gateway node.

use clap::Parser;
use gw_node::node::{NodeConfig, run};

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,hyper=warn,tower=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = NodeConfig::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("gw-node: {e}");
        std::process::exit(2);
    }
    // One worker: a current-thread runtime (no work-stealing, no cross-thread wake-ups).
    let mut rt = match cfg.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = rt.enable_all().build().expect("tokio runtime");
    if let Err(e) = rt.block_on(run(cfg)) {
        eprintln!("gw-node: {e:#}");
        std::process::exit(1);
    }
}
