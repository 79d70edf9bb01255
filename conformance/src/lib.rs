//! gw-conformance: the Gateway API conformance harness behind `gwadm conformance run`. It replays the
//! upstream v1.1 suite — its manifests, and its tests' steps as the case files describe them (typed by
//! `case`) — against a fresh gw, and writes a ConformanceReport. The tests run are exactly the case
//! files found; which of them gw should pass follows from the features it claims
//! (`features::SUPPORTED`).

#![allow(clippy::disallowed_methods)] // a test tool: reads clocks freely; no decision code of gw lives here

pub mod case;
pub mod env;
pub mod faults;
pub mod features;
pub mod http;
pub mod report;
pub mod steps;

use anyhow::{Context, anyhow, bail};
use case::{CaseFile, Condition};
use env::Env;
use features::{PROFILES, Profile};
use gw_model::ObjectKey;
use gw_model::kinds::GATEWAY_GROUP;
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
    /// Store members (3 or more for the kill and partition faults).
    #[arg(long, default_value_t = 1)]
    pub members: u64,
    /// Faults while the tests run, in turn (comma-separated): kill (a member, the leader every other
    /// time), partition (a member cut off from the others), node-restart (the gateway node). Needs
    /// root for partitions. The report says which ran.
    #[arg(long, value_delimiter = ',')]
    pub faults: Vec<String>,
    /// Seconds between faults, and how long a kill or partition is held.
    #[arg(long, default_value_t = 8)]
    pub fault_interval: u64,
    #[arg(long, default_value_t = 3)]
    pub fault_hold: u64,
    /// Environment of the gateway node (KEY=VALUE), for the harness's own fault-injection self-test.
    #[arg(long, hide = true)]
    pub node_env: Vec<String>,
}

/// A test as its case file describes it.
struct Test {
    file: PathBuf,
    case: CaseFile,
}

fn load_tests(dir: &Path) -> anyhow::Result<Vec<Test>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{}: no case files (*.json)", dir.display());
    }
    files
        .into_iter()
        .map(|file| {
            let case = CaseFile::load(&file).map_err(|e| anyhow!(e))?;
            Ok(Test { file, case })
        })
        .collect()
}

/// The Gateway API version and channel of the suite's CRD bundle.
fn bundle_facts(suite: &Path) -> anyhow::Result<(String, String)> {
    let path = suite.join("../crds/experimental-install.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let annotation = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("gateway.networking.k8s.io/{name}:"))
            })
            .map(|v| v.trim().trim_matches('"').to_string())
            .ok_or_else(|| anyhow!("{}: no {name} annotation", path.display()))
    };
    Ok((annotation("bundle-version")?, annotation("channel")?))
}

async fn run_test(env: &mut Env, suite: &Path, t: &Test) -> (Outcome, usize) {
    let mut applied = Vec::new();
    let mut outcome = Outcome::Passed;
    let mut steps = 0;
    for m in &t.case.manifests {
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
        for s in t.case.steps() {
            if let Err(e) = run.step(s).await {
                outcome = Outcome::Failed(format!("{}: {}", e.step, e.why));
                break;
            }
        }
        steps = run.steps;
        if steps == 0 {
            outcome = Outcome::Failed(format!(
                "{}: the case has no step to execute",
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

fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--node-env {p:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// Starts gw, sets up the suite's base, then runs every selected test; fails if any test failed.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let profiles: Vec<&Profile> = args
        .profiles
        .iter()
        .map(|n| {
            PROFILES
                .iter()
                .find(|p| p.name.eq_ignore_ascii_case(n))
                .ok_or_else(|| anyhow!("unknown profile {n:?}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let (version, channel) = bundle_facts(&args.suite)?;
    let tests = load_tests(
        &args
            .cases
            .clone()
            .unwrap_or_else(|| args.suite.join("cases")),
    )?;
    let secrets_spec: Value = {
        let p = args.suite.join("base/programmatic-secrets.json");
        let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
        serde_json::from_str(&text).with_context(|| p.display().to_string())?
    };

    let fault_kinds: Vec<faults::Fault> = args
        .faults
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| f.parse())
        .collect::<Result<_, String>>()
        .map_err(|e| anyhow!(e))?;
    if fault_kinds.iter().any(|f| *f != faults::Fault::NodeRestart) && args.members < 3 {
        bail!("--faults kill and partition need --members 3 or more");
    }
    let started = Instant::now();
    // A mesh profile: a mesh node too, and the suite's mesh base manifests.
    let mesh = profiles.iter().any(|p| p.core.contains(&"Mesh"));
    let mut env = Env::start(
        args.data_dir.clone(),
        &args.gateway_class,
        &parse_env(&args.node_env)?,
        args.members,
        mesh,
    )
    .await?;
    eprintln!("gw started in {}", env.dir.display());
    setup(&mut env, &args.suite, &secrets_spec, mesh)
        .await
        .map_err(|e| anyhow!("suite setup: {e}"))?;
    eprintln!(
        "base manifests ready after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (interval, hold) = (
        std::time::Duration::from_secs(args.fault_interval),
        std::time::Duration::from_secs(args.fault_hold),
    );
    let injector = tokio::spawn(faults::inject(
        faults::Targets {
            cluster: env.cluster.clone(),
            node: env.node.clone(),
        },
        fault_kinds.clone(),
        interval,
        hold,
        stop.clone(),
    ));
    let mut results = Vec::new();
    for t in &tests {
        let (name, features) = (&t.case.short_name, &t.case.features);
        if !args.run.is_empty() && !args.run.iter().any(|r| name.contains(r.as_str())) {
            continue;
        }
        let unprofiled = PROFILES.iter().all(|p| !p.covers(features));
        let selected =
            profiles.iter().any(|p| p.covers(features)) || (args.unprofiled && unprofiled);
        if !selected {
            continue;
        }
        let begun = Instant::now();
        let (outcome, steps) = if features::supported(features) {
            run_test(&mut env, &args.suite, t).await
        } else {
            let missing: Vec<&str> = features
                .iter()
                .map(String::as_str)
                .filter(|f| !features::supported(&[f.to_string()]))
                .collect();
            (Outcome::Skipped(format!("needs {}", missing.join(", "))), 0)
        };
        let r = TestResult {
            name: name.clone(),
            features: features.clone(),
            outcome,
            steps,
            seconds: begun.elapsed().as_secs_f64(),
        };
        println!("{}", report::summary_line(&r));
        results.push(r);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let injected = injector
        .await
        .map_err(|e| anyhow!("the fault injector: {e}"))?
        .map_err(|e| anyhow!("the fault injector: {e}"))?;
    for f in &injected {
        println!(
            "fault at {:.0}s: {}{}",
            f.at_s,
            f.what,
            if f.took_effect {
                ""
            } else {
                " (did not take effect)"
            }
        );
    }
    let under_faults = (!fault_kinds.is_empty())
        .then(|| faults::describe(&injected, args.members, interval, hold));
    if let Some(d) = &under_faults {
        println!("{d}");
    }
    if results.is_empty() {
        bail!("no test matched the profiles and --run filter");
    }

    let facts = RunFacts {
        gateway_api_version: version,
        channel,
        mode: "default".into(),
        date: gw_model::meta::rfc3339(gw_client::clock::now_ms()),
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
        let mut yaml = serde_saphyr::to_string(&rep).context("report")?;
        if let Some(d) = &under_faults {
            yaml = format!("# {d}\n{yaml}");
        }
        std::fs::write(path, yaml).with_context(|| path.display().to_string())?;
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
        bail!("conformance tests failed: {}", failed.join(", "))
    }
}

/// What the suite does before its tests: its GatewayClass accepted, the base manifests applied, the
/// TLS Secrets created, the base Gateways ready.
async fn setup(env: &mut Env, suite: &Path, secrets: &Value, mesh: bool) -> Result<(), String> {
    env.create_gateway_class()
        .await
        .map_err(|e| e.to_string())?;
    let accepted = Condition {
        kind: "Accepted".into(),
        status: "True".into(),
        reason: String::new(),
    };
    let class = ObjectKey::new(GATEWAY_GROUP, "GatewayClass", "", &env.class);
    steps::Run::new(env)
        .await_condition(&class, &accepted, steps::GATEWAYCLASS_ACCEPTED, false)
        .await
        .map_err(|e| format!("GatewayClass {}: {e}", class.name))?;
    // Created before the base manifests (the suite creates them right after): their pods mount them,
    // and a kubelet would wait for them; the harness starts pods at once.
    env.create_programmatic_secrets(secrets).await?;
    env.apply_file(&suite.join("base/manifests.yaml")).await?;
    if mesh {
        env.apply_file(&suite.join("base/mesh-manifests.yaml"))
            .await?;
    }
    let namespaces: Vec<String> = secrets["readiness_after_setup"]["gateway_namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(str::to_string))
        .collect();
    steps::Run::new(env)
        .namespaces_ready(&namespaces)
        .await
        .map_err(|e| format!("base Gateways not ready: {e}"))
}
