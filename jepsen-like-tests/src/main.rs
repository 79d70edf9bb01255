//! `gw-jepsen`: fault-injection runs against a real gw store cluster.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gw-jepsen",
    about = "Fault injection against a real gw store cluster, with checkers"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One run: workload under faults, then the checkers; exit 0 only when the run is valid.
    Run(gw_jepsen::run::RunArgs),
}

#[tokio::main]
async fn main() {
    let Cmd::Run(args) = Cli::parse().command;
    let out = args.out.clone();
    match gw_jepsen::run::run(args).await {
        Ok(v) => {
            let results = std::fs::read_to_string(out.join("results.json")).unwrap_or_default();
            let summary: serde_json::Value = serde_json::from_str(&results).unwrap_or_default();
            println!(
                "valid: {} — {} operations; results in {}",
                summary["valid"],
                summary["ops"],
                out.join("results.json").display()
            );
            for (name, c) in summary["checkers"].as_object().into_iter().flatten() {
                println!("  {name}: {}", c["valid"]);
                if c["valid"] == "false" {
                    // CI keeps only what is printed: say why, not just that.
                    let why = c["details"].to_string();
                    let cut = why.char_indices().nth(4000).map_or(why.len(), |(i, _)| i);
                    println!("    details: {}", &why[..cut]);
                }
            }
            std::process::exit(if v == gw_jepsen::checker::Validity::True {
                0
            } else {
                1
            });
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
