//! Rendering objects for people and scripts: tables with kind-specific columns, YAML, JSON.

use gw_model::meta::parse_rfc3339;
use gw_model::registry::KubeSyncReport;
use serde_json::Value;

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

/// How a list is printed as it is read, page by page: JSON and YAML one object at a time (nothing held
/// but the object being printed), a table once every row is in (its columns need every width).
pub struct ListPrinter {
    format: Format,
    /// JSON: a bare array instead of a kubectl-style `List`.
    bare_array: bool,
    show_namespace: bool,
    printed: usize,
    rows: Vec<Value>,
    out: std::io::BufWriter<std::io::Stdout>,
    /// The first write that failed (e.g. a closed pipe): nothing more is written.
    failed: Option<std::io::Error>,
}

impl ListPrinter {
    pub fn new(format: Format, show_namespace: bool, bare_array: bool) -> ListPrinter {
        ListPrinter {
            format,
            bare_array,
            show_namespace,
            printed: 0,
            rows: Vec::new(),
            out: std::io::BufWriter::new(std::io::stdout()),
            failed: None,
        }
    }

    pub fn push(&mut self, object: Value) {
        if self.failed.is_none()
            && let Err(e) = self.write(object)
        {
            self.failed = Some(e);
        }
    }

    fn write(&mut self, object: Value) -> std::io::Result<()> {
        use std::io::Write;
        let first = self.printed == 0;
        self.printed += 1;
        match self.format {
            Format::Table => {
                self.rows.push(object);
                Ok(())
            }
            Format::Yaml => {
                if !first {
                    self.out.write_all(b"---\n")?;
                }
                self.out.write_all(yaml(&object).as_bytes())
            }
            Format::Json => {
                let open = match (first, self.bare_array) {
                    (false, _) => ",\n",
                    (true, true) => "[\n",
                    (true, false) => {
                        "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\",\n  \"items\": [\n"
                    }
                };
                let indent = if self.bare_array { "  " } else { "    " };
                let body = serde_json::to_string_pretty(&object).unwrap_or_default();
                self.out.write_all(open.as_bytes())?;
                for (i, line) in body.lines().enumerate() {
                    if i > 0 {
                        self.out.write_all(b"\n")?;
                    }
                    self.out.write_all(indent.as_bytes())?;
                    self.out.write_all(line.as_bytes())?;
                }
                Ok(())
            }
        }
    }

    /// Ends the list; how many objects it had.
    pub fn finish(mut self) -> std::io::Result<usize> {
        use std::io::Write;
        if let Some(e) = self.failed {
            return Err(e);
        }
        let end = match (self.format, self.bare_array, self.printed) {
            (Format::Table, _, 0) => String::new(),
            (Format::Table, ..) => table(&self.rows, self.show_namespace),
            (Format::Yaml, ..) => String::new(),
            (Format::Json, true, 0) => "[]\n".into(),
            (Format::Json, true, _) => "\n]\n".into(),
            (Format::Json, false, 0) => {
                "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\",\n  \"items\": []\n}\n".into()
            }
            (Format::Json, false, _) => "\n  ]\n}\n".into(),
        };
        self.out.write_all(end.as_bytes())?;
        self.out.flush()?;
        Ok(self.printed)
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

/// The kube sync agents' reports (`KubeSyncReport` objects): CLUSTER, REGION, LAST CONTACT (how long
/// ago), WATCHING (the store member its status watch is on), CONFLICTS (how many), then each conflict
/// on its own line.
pub fn clusters(reports: &[Value]) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut out = format!(
        "{:<20} {:<14} {:<14} {:<22} {}\n",
        "CLUSTER", "REGION", "LAST CONTACT", "WATCHING", "CONFLICTS"
    );
    for (cluster, r) in reports.iter().filter_map(KubeSyncReport::from_object) {
        out.push_str(&format!(
            "{:<20} {:<14} {:<14} {:<22} {}\n",
            cluster,
            dash(&r.region),
            ago(r.last_contact_ms),
            dash(&r.watching),
            r.conflicts.len()
        ));
        for c in r.conflicts {
            out.push_str(&format!("  refused {c}\n"));
        }
    }
    out
}

/// How long ago a timestamp was, the way kubectl abbreviates it.
pub fn age(timestamp: &str) -> String {
    match parse_rfc3339(timestamp) {
        Some(then) => ago(then),
        None => "<unknown>".into(),
    }
}

/// How long ago a time (ms since the epoch) was, as `age` says it.
pub fn ago(then_ms: u64) -> String {
    let s = gw_client::clock::now_ms().saturating_sub(then_ms) / 1000;
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
        "HTTPRoute" | "GRPCRoute" | "TLSRoute" => &["HOSTNAMES"],
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
        "HTTPRoute" | "GRPCRoute" | "TLSRoute" => vec![join_strings(&o["spec"]["hostnames"])],
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
    columns_of(&rows)
}

/// Rows (the header first) as aligned columns.
pub fn columns_of<R: AsRef<[String]>>(rows: &[R]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let widths: Vec<usize> = (0..first.as_ref().len())
        .map(|c| {
            rows.iter()
                .map(|r| r.as_ref().get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .as_ref()
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}
