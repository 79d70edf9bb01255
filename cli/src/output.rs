//! Rendering objects for people and scripts: tables with kind-specific columns, YAML, JSON.

use gw_model::meta::parse_rfc3339;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// YAML of one object (block style, as kubectl prints it).
pub fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n{v}"))
}

/// Several objects: YAML documents separated by `---`, or a kubectl-style JSON `List`.
pub fn render_many(objects: &[Value], format: Format, show_namespace: bool) -> String {
    match format {
        Format::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
            serde_json::to_string_pretty(&list).unwrap_or_default() + "\n"
        }
        Format::Yaml => objects.iter().map(yaml).collect::<Vec<_>>().join("---\n"),
        Format::Table => table(objects, show_namespace),
    }
}

pub fn render_one(object: &Value, format: Format, show_namespace: bool) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(object).unwrap_or_default() + "\n",
        Format::Yaml => yaml(object),
        Format::Table => table(std::slice::from_ref(object), show_namespace),
    }
}

/// The Kubernetes cluster an object was carried from ("" if none: an operator's).
pub fn origin(o: &Value) -> &str {
    o["metadata"]["labels"][gw_model::kinds::ORIGIN_LABEL]
        .as_str()
        .unwrap_or("")
}

/// The kube sync agents' reports (ConfigMaps `gw-system/kube-sync-CLUSTER`): CLUSTER, REGION, LAST
/// CONTACT (how long ago), CONFLICTS (how many), then each conflict on its own line.
pub fn clusters(config_maps: &[Value]) -> String {
    let mut out = format!(
        "{:<20} {:<14} {:<14} {}\n",
        "CLUSTER", "REGION", "LAST CONTACT", "CONFLICTS"
    );
    let reports = config_maps.iter().filter(|c| {
        c["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("kube-sync-"))
    });
    for r in reports {
        let data = &r["data"];
        let conflicts: Vec<String> = data["conflicts"]
            .as_str()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<20} {:<14} {:<14} {}\n",
            data["cluster"].as_str().unwrap_or("?"),
            match data["region"].as_str() {
                None | Some("") => "-",
                Some(r) => r,
            },
            age(data["lastContact"].as_str().unwrap_or("")),
            conflicts.len()
        ));
        for c in conflicts {
            out.push_str(&format!("  refused {c}\n"));
        }
    }
    out
}

/// How long ago a timestamp was, the way kubectl abbreviates it.
pub fn age(timestamp: &str) -> String {
    let Some(then) = parse_rfc3339(timestamp) else {
        return "<unknown>".into();
    };
    let s = gw_client::clock::now_ms().saturating_sub(then) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn condition(obj: &Value, t: &str) -> String {
    obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == t))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_string()
}

fn join_strings(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "*".into())
}

/// Kind-specific columns (after NAME, before AGE).
fn columns(kind: &str) -> &'static [&'static str] {
    match kind {
        "GatewayClass" => &["CONTROLLER", "ACCEPTED"],
        "Gateway" => &["CLASS", "ADDRESS", "PROGRAMMED"],
        "HTTPRoute" | "GRPCRoute" => &["HOSTNAMES"],
        "Service" => &["TYPE", "PORTS"],
        "EndpointSlice" => &["ADDRESSTYPE", "ENDPOINTS"],
        _ => &[],
    }
}

fn cells(kind: &str, o: &Value) -> Vec<String> {
    match kind {
        "GatewayClass" => vec![
            o["spec"]["controllerName"].as_str().unwrap_or("").into(),
            condition(o, "Accepted"),
        ],
        "Gateway" => vec![
            o["spec"]["gatewayClassName"].as_str().unwrap_or("").into(),
            o["status"]["addresses"][0]["value"]
                .as_str()
                .unwrap_or("")
                .into(),
            condition(o, "Programmed"),
        ],
        "HTTPRoute" | "GRPCRoute" => vec![join_strings(&o["spec"]["hostnames"])],
        "Service" => vec![
            o["spec"]["type"].as_str().unwrap_or("ClusterIP").into(),
            o["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| p["port"].to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ],
        "EndpointSlice" => vec![
            o["addressType"].as_str().unwrap_or("").into(),
            o["endpoints"]
                .as_array()
                .map(|es| {
                    es.iter()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        ],
        _ => vec![],
    }
}

fn table(objects: &[Value], show_namespace: bool) -> String {
    if objects.is_empty() {
        return String::new();
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec![];
    if show_namespace {
        header.push("NAMESPACE".to_string());
    }
    let kinds: std::collections::BTreeSet<&str> =
        objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    let single_kind = (kinds.len() == 1).then(|| *kinds.iter().next().expect("one kind"));
    if single_kind.is_none() {
        header.push("KIND".into());
    }
    header.push("NAME".into());
    let extra = single_kind.map(columns).unwrap_or(&[]);
    header.extend(extra.iter().map(|s| s.to_string()));
    header.extend(["ORIGIN", "RESOURCEVERSION", "AGE"].map(String::from));
    rows.push(header);
    for o in objects {
        let m = &o["metadata"];
        let mut row = vec![];
        if show_namespace {
            row.push(m["namespace"].as_str().unwrap_or("").to_string());
        }
        if single_kind.is_none() {
            row.push(o["kind"].as_str().unwrap_or("").to_string());
        }
        row.push(m["name"].as_str().unwrap_or("").to_string());
        if let Some(k) = single_kind {
            row.extend(cells(k, o));
        }
        row.push(match origin(o) {
            "" => "-".to_string(),
            cluster => cluster.to_string(),
        });
        row.push(m["resourceVersion"].as_str().unwrap_or("").to_string());
        row.push(age(m["creationTimestamp"].as_str().unwrap_or("")));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}
