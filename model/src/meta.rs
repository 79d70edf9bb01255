//! Object metadata: what a document may set, how names, labels and annotations are validated, and the
//! metadata the store maintains (`uid`, `generation`, `resourceVersion`, `creationTimestamp`).

use crate::validate::{
    Path, RE_DNS_LABEL, RE_DNS_SUBDOMAIN, RE_DNS1035_LABEL, RE_LABEL_NAME, Validator,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Metadata as a document may carry it. System fields that `gwadm get -o yaml` prints are accepted and
/// ignored (so that its output can be applied again), except `resourceVersion`, which is a precondition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InputMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When set, the write only succeeds if the stored object has exactly this resourceVersion.
    #[serde(default)]
    pub resource_version: Option<String>,
    // Accepted and ignored: maintained by the store.
    #[serde(default, rename = "uid")]
    pub _uid: Option<serde_json::Value>,
    #[serde(default, rename = "generation")]
    pub _generation: Option<serde_json::Value>,
    #[serde(default, rename = "creationTimestamp")]
    pub _creation_timestamp: Option<serde_json::Value>,
    /// Who owns which fields (server-side apply); kept as given, maintained by the Kubernetes API.
    #[serde(default)]
    pub managed_fields: Option<Vec<serde_json::Value>>,
    #[serde(default, rename = "selfLink")]
    pub _self_link: Option<serde_json::Value>,
    /// What must happen before the object may go: a delete only marks it until the list is empty.
    #[serde(default)]
    pub finalizers: Vec<String>,
    #[serde(default, rename = "deletionTimestamp")]
    pub _deletion_timestamp: Option<serde_json::Value>,
    #[serde(default, rename = "deletionGracePeriodSeconds")]
    pub _deletion_grace_period_seconds: Option<serde_json::Value>,
    #[serde(default, rename = "ownerReferences")]
    pub _owner_references: Option<serde_json::Value>,
}

/// Metadata as stored and served.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// The revision of the object's last change, as a decimal string (Kubernetes convention).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub creation_timestamp: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// How an object's name is constrained (Kubernetes differs by kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain, at most 253 characters (most kinds).
    Subdomain,
    /// DNS-1123 label, at most 63 characters (Namespace).
    Label,
    /// DNS-1035 label, at most 63 characters (Service).
    Label1035,
}

pub fn validate_name(v: &mut Validator, path: &Path, name: &str, rule: NameRule) {
    if name.is_empty() {
        v.error(path, "Required value: name is required");
        return;
    }
    match rule {
        NameRule::Subdomain => v.string(path, name, 1, 253, &RE_DNS_SUBDOMAIN),
        NameRule::Label => v.string(path, name, 1, 63, &RE_DNS_LABEL),
        NameRule::Label1035 => v.string(path, name, 1, 63, &RE_DNS1035_LABEL),
    }
}

/// Validates a qualified key (`prefix/name` or `name`), as labels and annotations use them.
fn validate_qualified_key(v: &mut Validator, path: &Path, key: &str) {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && (p.is_empty() || p.len() > 253 || !RE_DNS_SUBDOMAIN.is_match(p))
    {
        v.invalid(
            path,
            key,
            "prefix part must be a DNS-1123 subdomain of at most 253 characters",
        );
    }
    if name.is_empty() || name.len() > 63 || !RE_LABEL_NAME.is_match(name) {
        v.invalid(
            path,
            key,
            "name part must consist of alphanumeric characters, '-', '_' or '.', must start and end with an alphanumeric character, and be at most 63 characters",
        );
    }
}

pub fn validate_labels(v: &mut Validator, path: &Path, labels: &BTreeMap<String, String>) {
    for (k, val) in labels {
        let p = path.key(k);
        validate_qualified_key(v, &p, k);
        if !val.is_empty() && (val.len() > 63 || !RE_LABEL_NAME.is_match(val)) {
            v.invalid(
                &p,
                val,
                "a label value must be empty or consist of alphanumeric characters, '-', '_' or '.', start and end with an alphanumeric character, and be at most 63 characters",
            );
        }
    }
}

/// Finalizers are qualified names (`example.com/cleanup`), each at most once.
pub fn validate_finalizers(v: &mut Validator, path: &Path, finalizers: &[String]) {
    for (i, f) in finalizers.iter().enumerate() {
        let p = path.index(i);
        validate_qualified_key(v, &p, f);
        if finalizers[..i].contains(f) {
            v.error(&p, format!("Duplicate value: {f:?}"));
        }
    }
}

/// Total size limit of all annotations, as the Kubernetes API server enforces it.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

pub fn validate_annotations(
    v: &mut Validator,
    path: &Path,
    annotations: &BTreeMap<String, String>,
) {
    let mut total = 0;
    for (k, val) in annotations {
        validate_qualified_key(v, &path.key(k), k);
        total += k.len() + val.len();
    }
    if total > ANNOTATIONS_MAX_BYTES {
        v.error(
            path,
            format!("Too long: must have at most {ANNOTATIONS_MAX_BYTES} bytes"),
        );
    }
}

/// Selects objects by their labels (`matchLabels` AND `matchExpressions`), as Kubernetes defines it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

impl LabelSelector {
    pub fn validate(&self, v: &mut Validator, path: &Path) {
        validate_labels(v, &path.field("matchLabels"), &self.match_labels);
        for (i, e) in self.match_expressions.iter().enumerate() {
            let p = path.field("matchExpressions").index(i);
            validate_qualified_key(v, &p.field("key"), &e.key);
            match e.operator.as_str() {
                "In" | "NotIn" => {
                    if e.values.is_empty() {
                        v.error(&p.field("values"), "Required value: must be specified when `operator` is 'In' or 'NotIn'");
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !e.values.is_empty() {
                        v.error(&p.field("values"), "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'");
                    }
                }
                other => v.error(
                    &p.field("operator"),
                    format!("Unsupported value: {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""),
                ),
            }
        }
    }

    /// Whether `labels` satisfies the selector. An empty selector matches everything.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let val = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => val.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => val.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => val.is_some(),
                    "DoesNotExist" => val.is_none(),
                    _ => false,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_semantics() {
        let sel = LabelSelector {
            match_labels: labels(&[("env", "prod")]),
            match_expressions: vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: vec!["web".into(), "api".into()],
            }],
        };
        assert!(sel.matches(&labels(&[("env", "prod"), ("tier", "web")])));
        assert!(!sel.matches(&labels(&[("env", "prod")])));
        assert!(!sel.matches(&labels(&[("env", "dev"), ("tier", "web")])));
        assert!(LabelSelector::default().matches(&labels(&[])));
    }

    #[test]
    fn names_and_labels_are_checked() {
        let mut v = Validator::new();
        validate_name(
            &mut v,
            &Path::root("metadata.name"),
            "Bad_Name",
            NameRule::Subdomain,
        );
        validate_name(
            &mut v,
            &Path::root("metadata.name"),
            "ok.name-1",
            NameRule::Subdomain,
        );
        validate_name(
            &mut v,
            &Path::root("metadata.name"),
            "1svc",
            NameRule::Label1035,
        );
        validate_labels(
            &mut v,
            &Path::root("metadata.labels"),
            &labels(&[("a/b/c", "x"), ("ok", "-bad")]),
        );
        let errs = v.into_errors();
        assert_eq!(errs.len(), 4, "{errs:?}");
    }
}

/// Formats milliseconds since the Unix epoch as an RFC 3339 UTC timestamp with second precision, the
/// form Kubernetes uses for `creationTimestamp` and `lastTransitionTime`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// `rfc3339` with milliseconds (`YYYY-MM-DDTHH:MM:SS.mmmZ`), as logs write it.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let whole = rfc3339(unix_ms);
    format!("{}.{:03}Z", &whole[..whole.len() - 1], unix_ms % 1000)
}

/// Parses the timestamps `rfc3339` writes (`YYYY-MM-DDTHH:MM:SSZ`) into milliseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'Z'
    {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days since the epoch from a civil date (inverse of the algorithm in `rfc3339`).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn parses_what_it_formats() {
        for ms in [0u64, 951_782_400_000, 1_795_708_930_000, 4_102_444_799_000] {
            assert_eq!(super::parse_rfc3339(&super::rfc3339(ms)), Some(ms));
        }
        assert_eq!(super::parse_rfc3339("2026-13-01T00:00:00Z"), None);
        assert_eq!(super::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_708_930_999), "2026-11-26T16:02:10Z");
    }
}
