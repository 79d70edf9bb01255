//! The ConformanceReport (gateway.networking.k8s.io/v1alpha1) as Gateway API v1.1 defines it, and the
//! human summary.

use crate::features::{Profile, SUPPORTED};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Skipped(String),
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub name: String,
    pub features: Vec<String>,
    pub outcome: Outcome,
    /// Checks, requests and actions executed.
    pub steps: usize,
    pub seconds: f64,
}

#[derive(Default)]
struct Tally {
    passed: u32,
    skipped: u32,
    failed: u32,
    skipped_tests: Vec<String>,
    failed_tests: Vec<String>,
}

impl Tally {
    fn add(&mut self, r: &TestResult) {
        match &r.outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed(_) => {
                self.failed += 1;
                self.failed_tests.push(r.name.clone());
            }
            Outcome::Skipped(_) => {
                self.skipped += 1;
                self.skipped_tests.push(r.name.clone());
            }
        }
    }

    fn result(&self) -> &'static str {
        if self.failed > 0 {
            "failure"
        } else if self.skipped > 0 {
            "partial"
        } else {
            "success"
        }
    }

    fn status(&self) -> Value {
        let mut s = json!({
            "result": self.result(),
            "statistics": {"Passed": self.passed, "Skipped": self.skipped, "Failed": self.failed},
        });
        if !self.skipped_tests.is_empty() {
            s["skippedTests"] = json!(self.skipped_tests);
        }
        if !self.failed_tests.is_empty() {
            s["failedTests"] = json!(self.failed_tests);
        }
        s
    }

    fn phrase(&self, what: &str) -> String {
        match self.result() {
            "failure" => format!("{what} tests failed with {} test failures.", self.failed),
            "partial" => format!(
                "{what} tests partially succeeded with {} test skips.",
                self.skipped
            ),
            _ => format!("{what} tests succeeded."),
        }
    }
}

/// Facts of the run the report states.
pub struct RunFacts {
    pub gateway_api_version: String,
    pub channel: String,
    pub mode: String,
    pub date: String,
}

/// Builds the report for the profiles run.
pub fn report(profiles: &[&Profile], results: &[TestResult], facts: &RunFacts) -> Value {
    let mut out = Vec::new();
    for p in profiles {
        let (mut core, mut ext) = (Tally::default(), Tally::default());
        for r in results.iter().filter(|r| p.covers(&r.features)) {
            if p.is_extended(&r.features) {
                ext.add(r)
            } else {
                core.add(r)
            }
        }
        let mut prof = json!({"name": p.report_name, "core": core.status()});
        let mut summary = core.phrase("Core");
        let mut supported: Vec<&str> = p
            .extended
            .iter()
            .copied()
            .filter(|f| SUPPORTED.contains(f))
            .collect();
        let mut unsupported: Vec<&str> = p
            .extended
            .iter()
            .copied()
            .filter(|f| !SUPPORTED.contains(f))
            .collect();
        supported.sort();
        unsupported.sort();
        if ext.passed + ext.failed + ext.skipped > 0 {
            let mut e = ext.status();
            if !supported.is_empty() {
                e["supportedFeatures"] = json!(supported);
            }
            if !unsupported.is_empty() {
                e["unsupportedFeatures"] = json!(unsupported);
            }
            prof["extended"] = e;
            summary = format!("{summary} {}", ext.phrase("Extended"));
        }
        prof["summary"] = json!(summary);
        out.push(prof);
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1alpha1",
        "kind": "ConformanceReport",
        "implementation": {
            "organization": "gw",
            "project": "gw",
            "url": "https://github.com/gw-dev/gw",
            "version": env!("CARGO_PKG_VERSION"),
            "contact": ["gw maintainers <gw@localhost>"],
        },
        "date": facts.date,
        "gatewayAPIVersion": facts.gateway_api_version,
        "gatewayAPIChannel": facts.channel,
        "mode": facts.mode,
        "profiles": out,
    })
}

/// One line per test: result, duration, and for a failure the first failing check.
pub fn summary_line(r: &TestResult) -> String {
    match &r.outcome {
        Outcome::Passed => format!(
            "PASS  {:<55} {:>6.1}s  ({} steps)",
            r.name, r.seconds, r.steps
        ),
        Outcome::Skipped(why) => format!("SKIP  {:<55}          {why}", r.name),
        Outcome::Failed(why) => format!("FAIL  {:<55} {:>6.1}s  {why}", r.name, r.seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::PROFILES;

    fn r(name: &str, features: &[&str], outcome: Outcome) -> TestResult {
        TestResult {
            name: name.into(),
            features: features.iter().map(|s| s.to_string()).collect(),
            outcome,
            steps: 1,
            seconds: 0.0,
        }
    }

    #[test]
    fn statistics_and_results() {
        let ps = PROFILES;
        let facts = RunFacts {
            gateway_api_version: "v1.1.0".into(),
            channel: "experimental".into(),
            mode: "default".into(),
            date: "2026-11-26T00:00:00Z".into(),
        };
        let results = vec![
            r("A", &["Gateway", "HTTPRoute"], Outcome::Passed),
            r(
                "B",
                &["Gateway", "HTTPRoute", "HTTPRouteMethodMatching"],
                Outcome::Passed,
            ),
            r(
                "C",
                &["Gateway", "HTTPRoute", "HTTPRouteQueryParamMatching"],
                Outcome::Failed("x".into()),
            ),
            r(
                "D",
                &["Gateway", "Mesh"],
                Outcome::Skipped("unsupported".into()),
            ),
        ];
        let rep = report(&[&ps[0]], &results, &facts);
        let p = &rep["profiles"][0];
        assert_eq!(p["core"]["result"], "success");
        assert_eq!(
            p["core"]["statistics"],
            json!({"Passed": 1, "Skipped": 0, "Failed": 0})
        );
        assert_eq!(p["extended"]["result"], "failure");
        assert_eq!(p["extended"]["failedTests"], json!(["C"]));
        assert_eq!(rep["kind"], "ConformanceReport");
        assert_eq!(rep["gatewayAPIChannel"], "experimental");
        assert!(
            p["summary"]
                .as_str()
                .unwrap()
                .starts_with("Core tests succeeded. Extended tests failed")
        );
    }
}
