//! HTTPRoute (gateway.networking.k8s.io/v1), with the experimental channel's `timeouts` and
//! `sessionPersistence`, and every rule of the v1.1 CRD.

use crate::duration;
use crate::route::{
    BackendObjectReference, BackendRef, HeaderModifier, LocalObjectReference, ParentReference,
    RequestMirror, SessionPersistence, validate_duration, validate_hostnames, validate_parent_refs,
};
use crate::validate::{Path, RE_PATH_CHARS, Validator};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<ParentReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default = "default_rules")]
    pub rules: Vec<HttpRouteRule>,
}

fn default_rules() -> Vec<HttpRouteRule> {
    vec![HttpRouteRule {
        matches: default_matches(),
        filters: vec![],
        backend_refs: vec![],
        timeouts: None,
        session_persistence: None,
    }]
}

fn default_matches() -> Vec<HttpRouteMatch> {
    vec![HttpRouteMatch {
        path: HttpPathMatch::default(),
        headers: vec![],
        query_params: vec![],
        method: None,
    }]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    #[serde(default = "default_matches")]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<BackendRef<HttpRouteFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_persistence: Option<SessionPersistence>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpPathMatch {
    #[serde(default, rename = "type")]
    pub kind: PathMatchType,
    #[serde(default = "slash")]
    pub value: String,
}

fn slash() -> String {
    "/".to_string()
}

impl Default for HttpPathMatch {
    fn default() -> Self {
        HttpPathMatch {
            kind: PathMatchType::PathPrefix,
            value: slash(),
        }
    }
}

/// Exact or RegularExpression, for header and query parameter matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum StringMatchType {
    #[default]
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHeaderMatch {
    #[serde(default, rename = "type")]
    pub kind: StringMatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Delete => "DELETE",
            HttpMethod::Connect => "CONNECT",
            HttpMethod::Options => "OPTIONS",
            HttpMethod::Trace => "TRACE",
            HttpMethod::Patch => "PATCH",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    #[serde(default)]
    pub path: HttpPathMatch,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HttpHeaderMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum HttpRouteFilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestMirror,
    RequestRedirect,
    #[serde(rename = "URLRewrite")]
    UrlRewrite,
    ExtensionRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: HttpRouteFilterType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "urlRewrite"
    )]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_ref: Option<LocalObjectReference>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    Http,
    Https,
}

impl RedirectScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectScheme::Http => "http",
            RedirectScheme::Https => "https",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathModifier {
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

fn status_302() -> i64 {
    302
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<RedirectScheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default = "status_302")]
    pub status_code: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

impl HttpRouteSpec {
    pub fn validate(&self, v: &mut Validator, p: &Path) {
        validate_parent_refs(v, &p.field("parentRefs"), &self.parent_refs);
        validate_hostnames(v, &p.field("hostnames"), &self.hostnames);
        let rp = p.field("rules");
        v.max_items(&rp, self.rules.len(), 16);
        for (i, r) in self.rules.iter().enumerate() {
            r.validate(v, &rp.index(i));
        }
    }
}

impl HttpRouteRule {
    fn validate(&self, v: &mut Validator, p: &Path) {
        let mp = p.field("matches");
        v.max_items(&mp, self.matches.len(), 8);
        for (i, m) in self.matches.iter().enumerate() {
            m.validate(v, &mp.index(i));
        }
        validate_filters(v, &p.field("filters"), &self.filters);
        let bp = p.field("backendRefs");
        v.max_items(&bp, self.backend_refs.len(), 16);
        for (i, b) in self.backend_refs.iter().enumerate() {
            let bip = bp.index(i);
            b.validate_ref(v, &bip);
            validate_filters(v, &bip.field("filters"), &b.filters);
        }
        v.rule(
            p,
            self.backend_refs.is_empty()
                || self.filters.iter().all(|f| f.request_redirect.is_none()),
            "RequestRedirect filter must not be used together with backendRefs",
        );
        let single_prefix_match =
            self.matches.len() == 1 && self.matches[0].path.kind == PathMatchType::PathPrefix;
        let prefix_redirect = |fs: &[HttpRouteFilter]| {
            fs.iter()
                .filter(|f| {
                    f.request_redirect
                        .as_ref()
                        .and_then(|r| r.path.as_ref())
                        .is_some_and(is_prefix_replace)
                })
                .count()
                == 1
        };
        let prefix_rewrite = |fs: &[HttpRouteFilter]| {
            fs.iter()
                .filter(|f| {
                    f.url_rewrite
                        .as_ref()
                        .and_then(|r| r.path.as_ref())
                        .is_some_and(is_prefix_replace)
                })
                .count()
                == 1
        };
        v.rule(
            p,
            !prefix_redirect(&self.filters) || single_prefix_match,
            "When using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
        );
        v.rule(
            p,
            !prefix_rewrite(&self.filters) || single_prefix_match,
            "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
        );
        v.rule(
            p,
            self.backend_refs.iter().filter(|b| prefix_redirect(&b.filters)).count() != 1 || single_prefix_match,
            "Within backendRefs, when using RequestRedirect filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
        );
        v.rule(
            p,
            self.backend_refs.iter().filter(|b| prefix_rewrite(&b.filters)).count() != 1 || single_prefix_match,
            "Within backendRefs, When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
        );
        if let Some(t) = &self.timeouts {
            let tp = p.field("timeouts");
            validate_duration(v, &tp.field("request"), t.request.as_deref());
            validate_duration(v, &tp.field("backendRequest"), t.backend_request.as_deref());
            let req = t.request.as_deref().and_then(duration::parse);
            let backend = t.backend_request.as_deref().and_then(duration::parse);
            if let (Some(req), Some(backend)) = (req, backend) {
                v.rule(
                    &tp,
                    req.is_zero() || backend <= req,
                    "backendRequest timeout cannot be longer than request timeout",
                );
            }
        }
        if let Some(sp) = &self.session_persistence {
            sp.validate(v, &p.field("sessionPersistence"));
        }
    }
}

fn is_prefix_replace(m: &HttpPathModifier) -> bool {
    m.kind == PathModifierType::ReplacePrefixMatch && m.replace_prefix_match.is_some()
}

impl HttpRouteMatch {
    fn validate(&self, v: &mut Validator, p: &Path) {
        validate_path_match(v, &p.field("path"), &self.path);
        for (field, list, max_value) in [
            ("headers", &self.headers, 4096),
            ("queryParams", &self.query_params, 1024),
        ] {
            let lp = p.field(field);
            v.max_items(&lp, list.len(), 16);
            for (i, h) in list.iter().enumerate() {
                v.header_name(&lp.index(i).field("name"), &h.name);
                v.len(&lp.index(i).field("value"), &h.value, 1, max_value);
            }
            v.unique_keys(&lp, list.iter().map(|h| h.name.as_str()));
        }
    }
}

fn validate_path_match(v: &mut Validator, p: &Path, m: &HttpPathMatch) {
    let vp = p.field("value");
    if !v.len(&vp, &m.value, 0, 1024) || m.kind == PathMatchType::RegularExpression {
        return;
    }
    let s = m.value.as_str();
    let rules: [(bool, &str); 9] = [
        (
            s.starts_with('/'),
            "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.contains("//"),
            "must not contain '//' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.contains("/./"),
            "must not contain '/./' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.contains("/../"),
            "must not contain '/../' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.contains("%2f"),
            "must not contain '%2f' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.contains("%2F"),
            "must not contain '%2F' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.contains('#'),
            "must not contain '#' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.ends_with("/.."),
            "must not end with '/..' when type one of ['Exact', 'PathPrefix']",
        ),
        (
            !s.ends_with("/."),
            "must not end with '/.' when type one of ['Exact', 'PathPrefix']",
        ),
    ];
    for (ok, msg) in rules {
        v.rule(p, ok, msg);
    }
    v.rule(
        p,
        RE_PATH_CHARS.is_match(s),
        "must only contain valid characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$) for types ['Exact', 'PathPrefix']",
    );
}

/// Validates one filter list (rule-level or backendRef-level) with the CRD's list and item rules.
fn validate_filters(v: &mut Validator, p: &Path, filters: &[HttpRouteFilter]) {
    v.max_items(p, filters.len(), 16);
    let count = |t: HttpRouteFilterType| filters.iter().filter(|f| f.kind == t).count();
    v.rule(
        p,
        !(count(HttpRouteFilterType::RequestRedirect) > 0 && count(HttpRouteFilterType::UrlRewrite) > 0),
        "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both",
    );
    for (t, name) in [
        (
            HttpRouteFilterType::RequestHeaderModifier,
            "RequestHeaderModifier",
        ),
        (
            HttpRouteFilterType::ResponseHeaderModifier,
            "ResponseHeaderModifier",
        ),
        (HttpRouteFilterType::RequestRedirect, "RequestRedirect"),
        (HttpRouteFilterType::UrlRewrite, "URLRewrite"),
    ] {
        v.rule(
            p,
            count(t) <= 1,
            &format!("{name} filter cannot be repeated"),
        );
    }
    for (i, f) in filters.iter().enumerate() {
        f.validate(v, &p.index(i));
    }
}

impl HttpRouteFilter {
    fn validate(&self, v: &mut Validator, p: &Path) {
        use HttpRouteFilterType as T;
        let fields: [(T, bool, &str, &str); 6] = [
            (
                T::RequestHeaderModifier,
                self.request_header_modifier.is_some(),
                "requestHeaderModifier",
                "RequestHeaderModifier",
            ),
            (
                T::ResponseHeaderModifier,
                self.response_header_modifier.is_some(),
                "responseHeaderModifier",
                "ResponseHeaderModifier",
            ),
            (
                T::RequestMirror,
                self.request_mirror.is_some(),
                "requestMirror",
                "RequestMirror",
            ),
            (
                T::RequestRedirect,
                self.request_redirect.is_some(),
                "requestRedirect",
                "RequestRedirect",
            ),
            (
                T::UrlRewrite,
                self.url_rewrite.is_some(),
                "urlRewrite",
                "URLRewrite",
            ),
            (
                T::ExtensionRef,
                self.extension_ref.is_some(),
                "extensionRef",
                "ExtensionRef",
            ),
        ];
        for (t, present, field, name) in fields {
            v.rule(
                p,
                !(present && self.kind != t),
                &format!("filter.{field} must be nil if the filter.type is not {name}"),
            );
            v.rule(
                p,
                present || self.kind != t,
                &format!("filter.{field} must be specified for {name} filter.type"),
            );
        }
        if let Some(m) = &self.request_header_modifier {
            m.validate(v, &p.field("requestHeaderModifier"));
        }
        if let Some(m) = &self.response_header_modifier {
            m.validate(v, &p.field("responseHeaderModifier"));
        }
        if let Some(m) = &self.request_mirror {
            validate_mirror(v, &p.field("requestMirror"), &m.backend_ref);
        }
        if let Some(r) = &self.request_redirect {
            let rp = p.field("requestRedirect");
            if let Some(h) = &r.hostname {
                v.precise_hostname(&rp.field("hostname"), h);
            }
            if let Some(m) = &r.path {
                validate_path_modifier(v, &rp.field("path"), m);
            }
            if let Some(port) = r.port {
                v.port(&rp.field("port"), port);
            }
            if r.status_code != 301 && r.status_code != 302 {
                v.error(
                    &rp.field("statusCode"),
                    format!(
                        "Unsupported value: {}: supported values: \"301\", \"302\"",
                        r.status_code
                    ),
                );
            }
        }
        if let Some(r) = &self.url_rewrite {
            let rp = p.field("urlRewrite");
            if let Some(h) = &r.hostname {
                v.precise_hostname(&rp.field("hostname"), h);
            }
            if let Some(m) = &r.path {
                validate_path_modifier(v, &rp.field("path"), m);
            }
        }
        if let Some(e) = &self.extension_ref {
            e.validate(v, &p.field("extensionRef"));
        }
    }
}

pub(crate) fn validate_mirror(v: &mut Validator, p: &Path, b: &BackendObjectReference) {
    b.validate(v, &p.field("backendRef"));
}

fn validate_path_modifier(v: &mut Validator, p: &Path, m: &HttpPathModifier) {
    if let Some(s) = &m.replace_full_path {
        v.len(&p.field("replaceFullPath"), s, 0, 1024);
    }
    if let Some(s) = &m.replace_prefix_match {
        v.len(&p.field("replacePrefixMatch"), s, 0, 1024);
    }
    let full = m.kind == PathModifierType::ReplaceFullPath;
    let prefix = m.kind == PathModifierType::ReplacePrefixMatch;
    v.rule(
        p,
        !full || m.replace_full_path.is_some(),
        "replaceFullPath must be specified when type is set to 'ReplaceFullPath'",
    );
    v.rule(
        p,
        m.replace_full_path.is_none() || full,
        "type must be 'ReplaceFullPath' when replaceFullPath is set",
    );
    v.rule(
        p,
        !prefix || m.replace_prefix_match.is_some(),
        "replacePrefixMatch must be specified when type is set to 'ReplacePrefixMatch'",
    );
    v.rule(
        p,
        m.replace_prefix_match.is_none() || prefix,
        "type must be 'ReplacePrefixMatch' when replacePrefixMatch is set",
    );
}
