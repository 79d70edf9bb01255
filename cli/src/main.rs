//! `gwadm`: the operator's command-line tool.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = gwadm::Cli::parse();
    if let Err(e) = gwadm::run(cli).await {
        for line in e.to_string().lines() {
            eprintln!("error: {line}");
        }
        std::process::exit(1);
    }
}
