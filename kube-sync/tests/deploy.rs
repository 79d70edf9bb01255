//! The install files under `deploy/` are what they claim to be: every Kubernetes manifest parses as
//! its k8s-openapi type with no field that type does not know (a misspelled or misplaced field would
//! be silently ignored by the API server), and every systemd unit's `ExecStart`, with its example
//! environment, is a command line the binary accepts.

use gw_testkit::procs::bin;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *.{ext} in {}", dir.display());
    out
}

/// `doc` through its k8s-openapi type and back.
fn round_trip(doc: &Value) -> Result<Value, String> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, rbac::v1 as rbac};
    fn via<T: serde::de::DeserializeOwned + serde::Serialize>(
        doc: &Value,
    ) -> Result<Value, String> {
        let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
        serde_json::to_value(typed).map_err(|e| e.to_string())
    }
    match (doc["apiVersion"].as_str(), doc["kind"].as_str()) {
        (Some("v1"), Some("Namespace")) => via::<core::Namespace>(doc),
        (Some("v1"), Some("Service")) => via::<core::Service>(doc),
        (Some("v1"), Some("ServiceAccount")) => via::<core::ServiceAccount>(doc),
        (Some("apps/v1"), Some("StatefulSet")) => via::<apps::StatefulSet>(doc),
        (Some("apps/v1"), Some("DaemonSet")) => via::<apps::DaemonSet>(doc),
        (Some("apps/v1"), Some("Deployment")) => via::<apps::Deployment>(doc),
        (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRole")) => {
            via::<rbac::ClusterRole>(doc)
        }
        (Some("rbac.authorization.k8s.io/v1"), Some("ClusterRoleBinding")) => {
            via::<rbac::ClusterRoleBinding>(doc)
        }
        (v, k) => Err(format!("no type known for apiVersion {v:?} kind {k:?}")),
    }
}

/// The paths of `original` that the round trip lost or changed (fields its type does not know).
fn lost(original: &Value, back: &Value, at: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                match b.get(k) {
                    Some(bv) => lost(v, bv, &format!("{at}.{k}"), out),
                    None => out.push(format!("{at}.{k}")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (v, bv)) in o.iter().zip(b).enumerate() {
                lost(v, bv, &format!("{at}[{i}]"), out);
            }
        }
        (o, b) if o == b => {}
        _ => out.push(at.to_string()),
    }
}

#[test]
fn kubernetes_manifests_use_only_fields_their_types_know() {
    let mut kinds = Vec::new();
    for file in files(&deploy_dir().join("kubernetes"), "yaml") {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.display().to_string();
        let docs = gw_model::parse_documents(&name, &text).unwrap();
        for d in docs {
            let where_ = format!("{name}: document {}", d.index);
            let back = round_trip(&d.value).unwrap_or_else(|e| panic!("{where_}: {e}"));
            let mut out = Vec::new();
            lost(&d.value, &back, "", &mut out);
            assert!(out.is_empty(), "{where_}: unknown fields {out:?}");
            kinds.push(d.value["kind"].as_str().unwrap().to_string());
        }
    }
    for k in ["StatefulSet", "DaemonSet", "Deployment", "ClusterRole"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in deploy/kubernetes");
    }
    // The checker itself: a misplaced field is caught.
    let bad: Value = serde_json::json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "x"}, "spec": {"ports": [{"port": 1, "targetport": 2}]}});
    let mut out = Vec::new();
    lost(&bad, &round_trip(&bad).unwrap(), "", &mut out);
    assert_eq!(out, vec![".spec.ports[0].targetport"]);
}

/// `KEY=VALUE` lines (comments and blanks skipped).
fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

#[test]
fn systemd_units_start_their_binaries_with_flags_they_accept() {
    let dir = deploy_dir().join("systemd");
    for unit in files(&dir, "service") {
        let text = std::fs::read_to_string(&unit).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{}: no {name}=", unit.display()))
                .to_string()
        };
        // /etc/gw/store.env is shipped as deploy/systemd/store.env.example.
        let env_name = Path::new(&field("EnvironmentFile"))
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let env = env_file(&dir.join(format!("{env_name}.example")));
        let mut line = field("ExecStart");
        for (k, v) in &env {
            line = line.replace(&format!("${{{k}}}"), v);
        }
        assert!(
            !line.contains("${"),
            "{}: unset variable in {line}",
            unit.display()
        );
        let mut words = line.split_whitespace();
        let program = words.next().unwrap();
        let name = program.strip_prefix("/usr/local/bin/").unwrap_or_else(|| {
            panic!(
                "{}: ExecStart runs {program}, not an installed gw binary",
                unit.display()
            )
        });
        let o = Command::new(bin(name).unwrap())
            .args(words)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {line} --help: {}",
            unit.display(),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
