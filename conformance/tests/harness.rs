//! The conformance harness judges for real: with a deliberately broken gateway node (Exact path
//! matches served as prefixes) the run fails, naming the test and the request; with the same node
//! unbroken the same test passes. And a case file it cannot read is refused before anything runs, with
//! the file and the field named.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use std::path::PathBuf;
use std::process::Command;

/// The shared suite beside the repository (or `GW_CONFORMANCE_SUITE`).
fn suite() -> PathBuf {
    std::env::var_os("GW_CONFORMANCE_SUITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/gateway-api-v1.1/conformance")
        })
}

fn run(extra: &[&str]) -> (bool, String) {
    let out = Command::new(gw_testkit::procs::bin("gwadm").unwrap())
        .args(["conformance", "run", "--suite"])
        .arg(suite())
        .args(extra)
        .output()
        .expect("running gwadm");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_broken_node_fails_the_test_naming_the_request() {
    let only = ["--run", "HTTPRouteExactPathMatching"];
    let (ok, out) = run(&[&only[..], &["--node-env", "GW_FAULT_EXACT_AS_PREFIX=true"]].concat());
    assert!(!ok, "the run must fail:\n{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("FAIL  HTTPRouteExactPathMatching"))
        .unwrap_or_else(|| panic!("no FAIL line for the test:\n{out}"));
    assert!(
        line.contains("GET http://")
            && line.contains("/one/example")
            && line.contains("expected status 404, got 200"),
        "the failure names the request and what differed: {line}"
    );

    let (ok, out) = run(&only);
    assert!(ok, "unbroken, the same test passes:\n{out}");
    assert!(out.contains("PASS  HTTPRouteExactPathMatching"), "{out}");
}

/// A Patch with a field the case format does not define: the run stops before starting gw, naming the
/// file, the step and the field.
#[test]
fn an_unknown_action_field_is_refused_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(suite().join("cases/GatewayObservedGenerationBump.json")).unwrap();
    let mut case: serde_json::Value = serde_json::from_str(&original).unwrap();
    let patch = case["actions"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["action"] == "Patch")
        .expect("the case has a Patch");
    patch["renameListener"] = serde_json::json!({"from": "http", "to": "web"});
    let file = dir.path().join("GatewayObservedGenerationBump.json");
    std::fs::write(&file, case.to_string()).unwrap();
    let (ok, out) = run(&["--cases", dir.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(file.to_str().unwrap())
            && out.contains("actions[")
            && out.contains("renameListener"),
        "the error names the file, the step and the field:\n{out}"
    );
    assert!(!out.contains("gw started"), "nothing ran:\n{out}");
}
