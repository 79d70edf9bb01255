//! The conformance harness judges for real: with a deliberately broken gateway node (Exact path
//! matches served as prefixes) the run fails, naming the test and the request; with the same node
//! unbroken the same test passes.

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
    let out = Command::new(env!("CARGO_BIN_EXE_gwadm"))
        .args([
            "conformance",
            "run",
            "--run",
            "HTTPRouteExactPathMatching",
            "--suite",
        ])
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
    let (ok, out) = run(&["--node-env", "GW_FAULT_EXACT_AS_PREFIX=true"]);
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

    let (ok, out) = run(&[]);
    assert!(ok, "unbroken, the same test passes:\n{out}");
    assert!(out.contains("PASS  HTTPRouteExactPathMatching"), "{out}");
}
