//! Field-level validation: a path builder and an error collector whose messages follow the shape of the
//! Kubernetes API server's (`spec.rules[0].backendRefs: Too many: 17: must have at most 16 items`).

use regex::Regex;
use std::fmt;
use std::sync::LazyLock;

/// One problem with one field of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted JSON path, e.g. `spec.rules[0].backendRefs`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A JSON path under construction. Cheap to clone; paths are short.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    /// The path of a top-level field.
    pub fn root(name: &str) -> Self {
        Path(name.to_string())
    }
    /// `self.name`
    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Path(name.to_string())
        } else {
            Path(format!("{}.{name}", self.0))
        }
    }
    /// `self[i]`
    pub fn index(&self, i: usize) -> Self {
        Path(format!("{}[{i}]", self.0))
    }
    /// `self[key]` for maps.
    pub fn key(&self, k: &str) -> Self {
        Path(format!("{}[{k}]", self.0))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Collects field errors while a document is walked.
#[derive(Debug, Default)]
pub struct Validator {
    errors: Vec<FieldError>,
}

/// DNS-1123 subdomain, as the Gateway API `Hostname`-less names and `SectionName` use it.
pub const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// DNS-1123 label (namespaces).
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

macro_rules! regex {
    ($name:ident, $re:expr) => {
        pub(crate) static $name: LazyLock<Regex> =
            LazyLock::new(|| Regex::new($re).expect("static regex"));
    };
}
regex!(RE_DNS_SUBDOMAIN, DNS_SUBDOMAIN);
regex!(RE_DNS_LABEL, DNS_LABEL);
regex!(RE_DNS1035_LABEL, r"^[a-z]([-a-z0-9]*[a-z0-9])?$");
regex!(
    RE_HOSTNAME,
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
);
regex!(
    RE_GROUP,
    r"^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
);
regex!(RE_KIND, r"^[a-zA-Z]([-a-zA-Z0-9]*[a-zA-Z0-9])?$");
regex!(RE_HEADER_NAME, r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$");
regex!(
    RE_CONTROLLER_NAME,
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$"
);
regex!(RE_LABEL_NAME, r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$");
regex!(
    RE_ADDRESS_TYPE,
    r"^Hostname|IPAddress|NamedAddress|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9/\-._~%!$&'()*+,;=:]+$"
);
regex!(
    RE_PROTOCOL,
    r"^[a-zA-Z0-9]([-a-zSA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]+$"
);
regex!(
    RE_PATH_CHARS,
    r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$"
);
regex!(
    RE_GRPC_SERVICE,
    r"^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$"
);
regex!(RE_GRPC_METHOD, r"^[A-Za-z_][A-Za-z_0-9]*$");

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn into_errors(self) -> Vec<FieldError> {
        self.errors
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Records an arbitrary error at `path`.
    pub fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.0.clone(),
            message: message.into(),
        });
    }

    /// `Invalid value: <value>: <why>`
    pub fn invalid(&mut self, path: &Path, value: impl fmt::Debug, why: impl fmt::Display) {
        self.error(path, format!("Invalid value: {value:?}: {why}"));
    }

    /// A CEL rule from the CRD: records `message` at `path` when `ok` is false.
    pub fn rule(&mut self, path: &Path, ok: bool, message: &str) {
        if !ok {
            self.error(path, format!("Invalid value: {message}"));
        }
    }

    pub fn required(&mut self, path: &Path) {
        self.error(path, "Required value");
    }

    /// Checks string length bounds (in characters, as OpenAPI counts them).
    pub fn len(&mut self, path: &Path, s: &str, min: usize, max: usize) -> bool {
        let n = s.chars().count();
        if n < min {
            if min == 1 {
                self.error(path, "Required value: must not be empty");
            } else {
                self.invalid(path, s, format!("must be at least {min} characters"));
            }
            false
        } else if n > max {
            self.error(
                path,
                format!("Too long: may not be longer than {max} (got {n} characters)"),
            );
            false
        } else {
            true
        }
    }

    pub fn pattern(&mut self, path: &Path, s: &str, re: &Regex) -> bool {
        if re.is_match(s) {
            true
        } else {
            self.invalid(
                path,
                s,
                format!("must match the regular expression '{}'", re.as_str()),
            );
            false
        }
    }

    /// Length and pattern in one call.
    pub fn string(&mut self, path: &Path, s: &str, min: usize, max: usize, re: &Regex) {
        if self.len(path, s, min, max) {
            self.pattern(path, s, re);
        }
    }

    pub fn max_items(&mut self, path: &Path, len: usize, max: usize) {
        if len > max {
            self.error(
                path,
                format!("Too many: {len}: must have at most {max} items"),
            );
        }
    }

    pub fn min_items(&mut self, path: &Path, len: usize, min: usize) {
        if len < min {
            self.error(
                path,
                format!(
                    "Required value: must have at least {min} item{}",
                    if min == 1 { "" } else { "s" }
                ),
            );
        }
    }

    pub fn range(&mut self, path: &Path, v: i64, min: i64, max: i64) {
        if v < min {
            self.invalid(path, v, format!("must be greater than or equal to {min}"));
        } else if v > max {
            self.invalid(path, v, format!("must be less than or equal to {max}"));
        }
    }

    /// `x-kubernetes-list-type: map`: the key must be unique within the list.
    pub fn unique_keys<'a>(&mut self, path: &Path, keys: impl IntoIterator<Item = &'a str>) {
        let mut seen = std::collections::HashSet::new();
        for (i, k) in keys.into_iter().enumerate() {
            if !seen.insert(k) {
                self.error(&path.index(i), format!("Duplicate value: {k:?}"));
            }
        }
    }

    // Shared string formats of the Gateway API.

    pub fn group(&mut self, path: &Path, s: &str) {
        self.string(path, s, 0, 253, &RE_GROUP);
    }
    pub fn kind(&mut self, path: &Path, s: &str) {
        self.string(path, s, 1, 63, &RE_KIND);
    }
    pub fn object_name(&mut self, path: &Path, s: &str) {
        self.len(path, s, 1, 253);
    }
    pub fn namespace(&mut self, path: &Path, s: &str) {
        self.string(path, s, 1, 63, &RE_DNS_LABEL);
    }
    pub fn section_name(&mut self, path: &Path, s: &str) {
        self.string(path, s, 1, 253, &RE_DNS_SUBDOMAIN);
    }
    pub fn hostname(&mut self, path: &Path, s: &str) {
        self.string(path, s, 1, 253, &RE_HOSTNAME);
    }
    pub fn precise_hostname(&mut self, path: &Path, s: &str) {
        self.string(path, s, 1, 253, &RE_DNS_SUBDOMAIN);
    }
    pub fn port(&mut self, path: &Path, p: i64) {
        self.range(path, p, 1, 65535);
    }
    pub fn controller_name(&mut self, path: &Path, s: &str) {
        self.string(path, s, 1, 253, &RE_CONTROLLER_NAME);
    }
    pub fn header_name(&mut self, path: &Path, s: &str) {
        self.string(path, s, 1, 256, &RE_HEADER_NAME);
    }
}
