//! What a Kubernetes API request addresses: discovery, OpenAPI, or a resource (a collection, one
//! object, or its subresource, possibly as a watch). Pure.

use gw_model::kinds::{self, KindInfo};

/// One request's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Version,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: every named group.
    Groups,
    /// `/apis/GROUP`.
    Group(String),
    /// `/api/v1` or `/apis/GROUP/VERSION`: the resources of one group version.
    GroupVersion {
        group: String,
        version: String,
    },
    /// `/openapi/v2`.
    OpenApiV2,
    /// `/openapi/v3`: the index of group versions.
    OpenApiV3Index,
    /// `/openapi/v3/api/v1` or `/openapi/v3/apis/GROUP/VERSION`.
    OpenApiV3 {
        group: String,
        version: String,
    },
    Resource(ResourcePath),
}

/// A resource path, resolved to a kind gw serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub info: &'static KindInfo,
    pub version: String,
    /// The namespace in the path (`None`: every namespace, or a cluster-scoped kind).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// `status`.
    pub subresource: Option<String>,
    /// The legacy `/watch/` form.
    pub watch: bool,
}

/// Why a path addresses nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFound {
    /// No such path at all.
    Path,
    /// A group version gw does not serve, or a resource not in it.
    Resource(String),
}

pub fn parse(path: &str) -> Result<Target, NotFound> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    match segs.as_slice() {
        ["version"] => Ok(Target::Version),
        ["api"] => Ok(Target::CoreVersions),
        ["apis"] => Ok(Target::Groups),
        ["openapi", "v2"] => Ok(Target::OpenApiV2),
        ["openapi", "v3"] => Ok(Target::OpenApiV3Index),
        ["openapi", "v3", "api", version] => Ok(Target::OpenApiV3 {
            group: String::new(),
            version: version.to_string(),
        }),
        ["openapi", "v3", "apis", group, version] => Ok(Target::OpenApiV3 {
            group: group.to_string(),
            version: version.to_string(),
        }),
        ["api", version, rest @ ..] => resource_or_version("", version, rest),
        ["apis", group] => {
            if kinds::KINDS
                .iter()
                .any(|k| k.group == *group && !group.is_empty())
            {
                Ok(Target::Group(group.to_string()))
            } else {
                Err(NotFound::Resource(format!(
                    "the server could not find the requested resource (group {group:?})"
                )))
            }
        }
        ["apis", group, version, rest @ ..] => resource_or_version(group, version, rest),
        _ => Err(NotFound::Path),
    }
}

fn served(group: &str, version: &str) -> bool {
    kinds::KINDS
        .iter()
        .any(|k| k.group == group && k.serves(version))
}

fn resource_or_version(group: &str, version: &str, rest: &[&str]) -> Result<Target, NotFound> {
    if !served(group, version) {
        return Err(NotFound::Resource(format!(
            "the server could not find the requested resource ({})",
            kinds::api_version(group, version)
        )));
    }
    if rest.is_empty() {
        return Ok(Target::GroupVersion {
            group: group.to_string(),
            version: version.to_string(),
        });
    }
    let (watch, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    // namespaces/NS/PLURAL[/NAME[/SUB]] addresses a namespaced resource; namespaces[/NAME[/SUB]] the
    // Namespace objects themselves.
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, subresource) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(NotFound::Path),
    };
    let info = kinds::KINDS
        .iter()
        .find(|k| k.group == group && k.plural == plural && k.serves(version))
        .ok_or_else(|| {
            NotFound::Resource(format!(
                "the server could not find the requested resource ({plural}.{})",
                kinds::api_version(group, version)
            ))
        })?;
    if namespace.is_some() && !info.namespaced {
        return Err(NotFound::Path);
    }
    match subresource.as_deref() {
        None => {}
        Some("status") if info.status_subresource => {}
        Some(other) => {
            return Err(NotFound::Resource(format!(
                "{plural} has no subresource {other:?}"
            )));
        }
    }
    Ok(Target::Resource(ResourcePath {
        info,
        version: version.to_string(),
        namespace,
        name,
        subresource,
        watch,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(path: &str) -> ResourcePath {
        match parse(path) {
            Ok(Target::Resource(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn resource_paths() {
        let r = res("/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/store/status");
        assert_eq!(r.info.kind, "HTTPRoute");
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("shop"), Some("store"), Some("status"))
        );
        let r = res("/apis/gateway.networking.k8s.io/v1beta1/httproutes");
        assert_eq!(
            (r.namespace, r.name, r.version.as_str()),
            (None, None, "v1beta1")
        );
        let r = res("/api/v1/namespaces/shop");
        assert_eq!(
            (r.info.kind, r.name.as_deref()),
            ("Namespace", Some("shop"))
        );
        let r = res("/api/v1/namespaces");
        assert_eq!((r.info.kind, r.name), ("Namespace", None));
        let r = res("/api/v1/watch/namespaces/shop/services");
        assert!(r.watch && r.info.kind == "Service" && r.namespace.as_deref() == Some("shop"));
        let r = res("/apis/gateway.networking.k8s.io/v1/gatewayclasses/gw/status");
        assert_eq!(
            (r.info.kind, r.subresource.as_deref()),
            ("GatewayClass", Some("status"))
        );
    }

    #[test]
    fn discovery_paths_and_misses() {
        assert_eq!(parse("/api"), Ok(Target::CoreVersions));
        assert_eq!(
            parse("/apis/gateway.networking.k8s.io"),
            Ok(Target::Group("gateway.networking.k8s.io".into()))
        );
        assert_eq!(
            parse("/api/v1"),
            Ok(Target::GroupVersion {
                group: String::new(),
                version: "v1".into()
            })
        );
        assert!(matches!(
            parse("/apis/apps/v1/deployments"),
            Err(NotFound::Resource(_))
        ));
        assert!(matches!(
            parse("/api/v1/persistentvolumes"),
            Err(NotFound::Resource(_))
        ));
        assert!(matches!(
            parse("/api/v1/namespaces/x/configmaps/a/b/c"),
            Err(NotFound::Path)
        ));
        assert!(matches!(
            parse("/api/v1/namespaces/x/configmaps/a/status"),
            Err(NotFound::Resource(_))
        ));
        assert!(matches!(parse("/nope"), Err(NotFound::Path)));
    }
}
