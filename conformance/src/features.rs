//! What gw claims, in one place, and the Gateway API v1.1 conformance profiles (re-stated from
//! `conformance/utils/suite/profiles.go` at v1.1.0): a test counts toward a profile when every feature it
//! needs is one of the profile's core or extended features, and is "extended" there when any is not core.

/// Features gw implements. A test needing anything else is skipped, never passed.
pub const SUPPORTED: &[&str] = &[
    "Gateway",
    "ReferenceGrant",
    "HTTPRoute",
    "TLSRoute",
    "GRPCRoute",
    "Mesh",
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "GatewayHTTPListenerIsolation",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRoutePortRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePathRedirect",
    "HTTPRouteHostRewrite",
    "HTTPRoutePathRewrite",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteParentRefPort",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
];

pub struct Profile {
    pub name: &'static str,
    /// The name its report carries (v1.1.0 reports MESH-GRPC under "MESH-HTTP", a known upstream bug).
    pub report_name: &'static str,
    pub core: &'static [&'static str],
    pub extended: &'static [&'static str],
}

const GATEWAY_EXTENDED: &[&str] = &[
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "GatewayHTTPListenerIsolation",
];
const GATEWAY_HTTP_EXTENDED: &[&str] = &[
    "GatewayPort8080",
    "GatewayStaticAddresses",
    "GatewayHTTPListenerIsolation",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRoutePortRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePathRedirect",
    "HTTPRouteHostRewrite",
    "HTTPRoutePathRewrite",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteParentRefPort",
    "HTTPRouteBackendRequestHeaderModification",
];
const MESH_HTTP_EXTENDED: &[&str] = &[
    "HTTPRouteQueryParamMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteResponseHeaderModification",
    "HTTPRoutePortRedirect",
    "HTTPRouteSchemeRedirect",
    "HTTPRoutePathRedirect",
    "HTTPRouteHostRewrite",
    "HTTPRoutePathRewrite",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestTimeout",
    "HTTPRouteBackendTimeout",
    "HTTPRouteParentRefPort",
    "HTTPRouteBackendRequestHeaderModification",
    "MeshClusterIPMatching",
    "MeshConsumerRoute",
];

/// The v1.1.0 profiles.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "GATEWAY-HTTP",
        report_name: "GATEWAY-HTTP",
        core: &["Gateway", "ReferenceGrant", "HTTPRoute"],
        extended: GATEWAY_HTTP_EXTENDED,
    },
    Profile {
        name: "GATEWAY-TLS",
        report_name: "GATEWAY-TLS",
        core: &["Gateway", "ReferenceGrant", "TLSRoute"],
        extended: GATEWAY_EXTENDED,
    },
    Profile {
        name: "GATEWAY-GRPC",
        report_name: "GATEWAY-GRPC",
        core: &["Gateway", "ReferenceGrant", "GRPCRoute"],
        extended: GATEWAY_EXTENDED,
    },
    Profile {
        name: "MESH-HTTP",
        report_name: "MESH-HTTP",
        core: &["Mesh", "HTTPRoute"],
        extended: MESH_HTTP_EXTENDED,
    },
    Profile {
        name: "MESH-GRPC",
        report_name: "MESH-HTTP",
        core: &["Mesh", "GRPCRoute"],
        extended: &["MeshClusterIPMatching", "MeshConsumerRoute"],
    },
];

impl Profile {
    /// Whether a test with these features counts toward this profile.
    pub fn covers(&self, features: &[String]) -> bool {
        features
            .iter()
            .all(|f| self.core.contains(&f.as_str()) || self.extended.contains(&f.as_str()))
    }

    /// Whether such a test is an extended test of this profile.
    pub fn is_extended(&self, features: &[String]) -> bool {
        features.iter().any(|f| !self.core.contains(&f.as_str()))
    }
}

pub fn supported(features: &[String]) -> bool {
    features.iter().all(|f| SUPPORTED.contains(&f.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn classification_follows_profiles_go() {
        let p = &PROFILES[0];
        assert!(
            p.covers(&f(&["Gateway", "HTTPRoute"]))
                && !p.is_extended(&f(&["Gateway", "HTTPRoute"]))
        );
        assert!(p.covers(&f(&["Gateway", "HTTPRoute", "HTTPRouteMethodMatching"])));
        assert!(p.is_extended(&f(&["Gateway", "HTTPRoute", "HTTPRouteMethodMatching"])));
        assert!(!p.covers(&f(&["Gateway", "TLSRoute"])));
        assert!(
            !p.covers(&f(&["Gateway", "HTTPRoute", "HTTPRouteBackendProtocolH2C"])),
            "H2C is in no profile at v1.1"
        );
        assert!(!supported(&f(&["Gateway", "UDPRoute"])));
    }
}
