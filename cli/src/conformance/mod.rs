//! `gwadm conformance run`: replays the Gateway API v1.1 conformance suite — its manifests, and its
//! tests' checks as the case files describe them — against a fresh gw, and writes a ConformanceReport.
//! The tests run are exactly the case files found; which of them gw should pass follows from the
//! features it claims (`features::SUPPORTED`).

pub mod env;
pub mod features;
pub mod http;
pub mod report;
pub mod steps;

use env::Env;
use features::{PROFILES, Profile};
use gw_node::store_client::ClientError;
use report::{Outcome, RunFacts, TestResult};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The suite: a directory laid out like the upstream `conformance/` at v1.1.0 (`base/`, `tests/`,
    /// `cases/`), e.g. ../shared/gateway-api-v1.1/conformance. Its CRD bundle (`../crds/`) gives the
    /// report's Gateway API version and channel.
    #[arg(long)]
    pub suite: PathBuf,
    /// The case files (`<ShortName>.json`) to run; default SUITE/cases.
    #[arg(long)]
    pub cases: Option<PathBuf>,
    /// Conformance profiles to run (GATEWAY-HTTP, GATEWAY-TLS, GATEWAY-GRPC, MESH-HTTP, MESH-GRPC).
    #[arg(long, value_delimiter = ',', default_value = "GATEWAY-HTTP")]
    pub profiles: Vec<String>,
    /// Write the ConformanceReport (YAML) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also run the tests that count toward no profile (at v1.1: backend h2c, WebSocket, destination port
    /// matching, ...): they appear in the summary and decide the exit status, but not in the report.
    #[arg(long)]
    pub unprofiled: bool,
    /// Only the tests whose name contains one of these (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub run: Vec<String>,
    /// Keep the run's files (store, node log) here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The GatewayClass the run creates and the gateway node serves.
    #[arg(long, default_value = "gw-conformance")]
    pub gateway_class: String,
    /// Environment of the gateway node (KEY=VALUE), for the harness's own fault-injection self-test.
    #[arg(long, hide = true)]
    pub node_env: Vec<String>,
}

/// A test as its case file describes it.
struct Test {
    file: PathBuf,
    case: Value,
    name: String,
    features: Vec<String>,
}

fn load_tests(dir: &Path) -> Result<Vec<Test>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no case files (*.json)", dir.display()));
    }
    files
        .into_iter()
        .map(|file| {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let case: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not JSON: {e}", file.display()))?;
            let name = case["ShortName"]
                .as_str()
                .ok_or_else(|| format!("{}: no ShortName", file.display()))?
                .to_string();
            let features = case["Features"]
                .as_array()
                .ok_or_else(|| format!("{}: no Features", file.display()))?
                .iter()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            Ok(Test {
                file,
                case,
                name,
                features,
            })
        })
        .collect()
}

/// The Gateway API version and channel of the suite's CRD bundle.
fn bundle_facts(suite: &Path) -> Result<(String, String), String> {
    let path = suite.join("../crds/experimental-install.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let annotation = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("gateway.networking.k8s.io/{name}:"))
            })
            .map(|v| v.trim().trim_matches('"').to_string())
            .ok_or_else(|| format!("{}: no {name} annotation", path.display()))
    };
    Ok((annotation("bundle-version")?, annotation("channel")?))
}

/// The steps of a test in execution order.
fn steps_of(case: &Value) -> Vec<Value> {
    let mut all: Vec<Value> = ["status_checks", "cases", "actions", "other_checks"]
        .iter()
        .flat_map(|k| case[*k].as_array().cloned().unwrap_or_default())
        .collect();
    all.sort_by_key(|s| s["seq"].as_u64().unwrap_or(u64::MAX));
    all
}

async fn run_test(env: &mut Env, suite: &Path, t: &Test) -> (Outcome, usize) {
    let mut applied = Vec::new();
    let mut outcome = Outcome::Passed;
    let mut steps = 0;
    for m in t.case["Manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
    {
        match env.apply_file(&suite.join(m)).await {
            Ok(a) => applied.push(a),
            Err(e) => {
                outcome = Outcome::Failed(format!("applying {m}: {e}"));
                break;
            }
        }
    }
    if outcome == Outcome::Passed {
        let mut run = steps::Run::new(env);
        for s in steps_of(&t.case) {
            if let Err(e) = run.step(&s).await {
                outcome = Outcome::Failed(format!("{}: {}", e.step, e.why));
                break;
            }
        }
        steps = run.steps;
        if steps == 0 {
            outcome = Outcome::Failed(format!(
                "{}: the harness found no step to execute",
                t.file.display()
            ));
        }
    }
    for a in applied.into_iter().rev() {
        if let Err(e) = env.cleanup(a).await
            && outcome == Outcome::Passed
        {
            outcome = Outcome::Failed(e);
        }
    }
    (outcome, steps)
}

fn parse_env(pairs: &[String]) -> Result<Vec<(String, String)>, ClientError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ClientError::Usage(format!("--node-env {p:?}: expected KEY=VALUE")))
        })
        .collect()
}

/// Starts gw, sets up the suite's base, then runs every selected test; fails if any test failed.
pub async fn run(args: RunArgs) -> Result<(), ClientError> {
    let usage = ClientError::Usage;
    let profiles: Vec<&Profile> = args
        .profiles
        .iter()
        .map(|n| {
            PROFILES
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(n))
                .ok_or_else(|| usage(format!("unknown profile {n:?}")))
        })
        .collect::<Result<_, _>>()?;
    let (version, channel) = bundle_facts(&args.suite).map_err(usage)?;
    let tests = load_tests(
        &args
            .cases
            .clone()
            .unwrap_or_else(|| args.suite.join("cases")),
    )
    .map_err(usage)?;
    let secrets_spec: Value = {
        let p = args.suite.join("base/programmatic-secrets.json");
        let text =
            std::fs::read_to_string(&p).map_err(|e| usage(format!("{}: {e}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| usage(format!("{}: {e}", p.display())))?
    };

    let started = Instant::now();
    let mut env = Env::start(
        args.data_dir.clone(),
        &args.gateway_class,
        &parse_env(&args.node_env)?,
    )
    .await?;
    eprintln!("gw started in {}", env.dir.display());
    setup(&mut env, &args.suite, &secrets_spec)
        .await
        .map_err(|e| usage(format!("suite setup: {e}")))?;
    eprintln!(
        "base manifests ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    for t in &tests {
        if !args.run.is_empty() && !args.run.iter().any(|r| t.name.contains(r.as_str())) {
            continue;
        }
        let unprofiled = PROFILES.iter().all(|p| !p.covers(&t.features));
        let selected =
            profiles.iter().any(|p| p.covers(&t.features)) || (args.unprofiled && unprofiled);
        if !selected {
            continue;
        }
        let begun = Instant::now();
        let (outcome, steps) = if features::supported(&t.features) {
            run_test(&mut env, &args.suite, t).await
        } else {
            let missing: Vec<&str> = t
                .features
                .iter()
                .map(String::as_str)
                .filter(|f| !features::supported(&[f.to_string()]))
                .collect();
            (Outcome::Skipped(format!("needs {}", missing.join(", "))), 0)
        };
        let r = TestResult {
            name: t.name.clone(),
            features: t.features.clone(),
            outcome,
            steps,
            seconds: begun.elapsed().as_secs_f64(),
        };
        println!("{}", report::summary_line(&r));
        results.push(r);
    }
    if results.is_empty() {
        return Err(usage(
            "no test matched the profiles and --run filter".into(),
        ));
    }

    let facts = RunFacts {
        gateway_api_version: version,
        channel,
        mode: "default".into(),
        date: gw_model::meta::rfc3339(gw_node::node::now_ms()),
    };
    let rep = report::report(&profiles, &results, &facts);
    for p in rep["profiles"].as_array().into_iter().flatten() {
        println!(
            "{}: {}",
            p["name"].as_str().unwrap_or(""),
            p["summary"].as_str().unwrap_or("")
        );
    }
    if let Some(path) = &args.report {
        let yaml = serde_saphyr::to_string(&rep).map_err(|e| usage(format!("report: {e}")))?;
        std::fs::write(path, yaml).map_err(|e| usage(format!("{}: {e}", path.display())))?;
        println!("report written to {}", path.display());
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .map(|r| r.name.as_str())
        .collect();
    println!(
        "{} tests in {:.0}s: {} passed, {} skipped, {} failed",
        results.len(),
        started.elapsed().as_secs_f64(),
        results
            .iter()
            .filter(|r| r.outcome == Outcome::Passed)
            .count(),
        results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Skipped(_)))
            .count(),
        failed.len()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(usage(format!(
            "conformance tests failed: {}",
            failed.join(", ")
        )))
    }
}

/// What the suite does before its tests: its GatewayClass accepted, the base manifests applied, the
/// TLS Secrets created, the base Gateways ready.
async fn setup(env: &mut Env, suite: &Path, secrets: &Value) -> Result<(), String> {
    env.create_gateway_class()
        .await
        .map_err(|e| e.to_string())?;
    let class = serde_json::json!({"check": "GatewayClassAccepted", "resource": {"kind": "GatewayClass", "name": env.class},
                                   "condition": {"type": "Accepted", "status": "True"}});
    let mut run = steps::Run::new(env);
    run.step(&class)
        .await
        .map_err(|e| format!("{}: {}", e.step, e.why))?;
    env.apply_file(&suite.join("base/manifests.yaml")).await?;
    env.create_programmatic_secrets(secrets).await?;
    let ready = serde_json::json!({"check": "NamespacesReady", "namespaces": secrets["readiness_after_setup"]["gateway_namespaces"]});
    steps::Run::new(env)
        .step(&ready)
        .await
        .map_err(|e| format!("{}: {}", e.step, e.why))
}
