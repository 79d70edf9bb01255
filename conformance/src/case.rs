//! The suite's case files (`cases/<ShortName>.json`, described in its README) as types: a test and its
//! steps, every check, request and action a serde variant. Whatever the types do not know — an unknown
//! check or action, an unknown field, a Patch that names no mutation — is an error naming the file and
//! the field: the harness never guesses a step from its prose.

use serde::de::{DeserializeOwned, Error as _, IgnoredAny};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// One test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(rename = "ShortName")]
    pub short_name: String,
    #[serde(rename = "Description", default)]
    pub description: String,
    #[serde(rename = "Features")]
    pub features: Vec<String>,
    /// The manifests applied before the steps, relative to the suite.
    #[serde(rename = "Manifests", default)]
    pub manifests: Vec<String>,
    #[serde(default)]
    pub status_checks: Vec<Step<Check>>,
    #[serde(default)]
    pub cases: Vec<Step<Case>>,
    #[serde(default)]
    pub actions: Vec<Step<Action>>,
    #[serde(default)]
    pub other_checks: Vec<Step<OtherCheck>>,
    // For people, or restated by other fields: read by nothing.
    #[serde(rename = "FeatureConstants", default)]
    _feature_constants: IgnoredAny,
    #[serde(rename = "manifestFiles", default)]
    _manifest_files: IgnoredAny,
    #[serde(rename = "Slow", default)]
    _slow: IgnoredAny,
    #[serde(rename = "Parallel", default)]
    _parallel: IgnoredAny,
    #[serde(rename = "source", default)]
    _source: IgnoredAny,
    #[serde(rename = "baseManifests", default)]
    _base_manifests: IgnoredAny,
    #[serde(rename = "profiles", default)]
    _profiles: IgnoredAny,
    #[serde(rename = "counts", default)]
    _counts: IgnoredAny,
    #[serde(rename = "notes", default)]
    _notes: IgnoredAny,
}

impl CaseFile {
    pub fn load(file: &Path) -> Result<CaseFile, String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        parse(&text).map_err(|e| format!("{}: {e}", file.display()))
    }

    /// The steps in the order the Go test runs them (the four lists merged by `seq`).
    pub fn steps(&self) -> Vec<StepRef<'_>> {
        fn refs<'a, T>(
            list: &'a [Step<T>],
            body: fn(&'a T) -> StepBody<'a>,
        ) -> impl Iterator<Item = StepRef<'a>> {
            list.iter().map(move |s| StepRef {
                seq: s.seq,
                subtest: s.subtest.as_deref(),
                body: body(&s.body),
            })
        }
        let mut all: Vec<StepRef<'_>> = refs(&self.status_checks, StepBody::Check)
            .chain(refs(&self.cases, StepBody::Case))
            .chain(refs(&self.actions, StepBody::Action))
            .chain(refs(&self.other_checks, StepBody::Other))
            .collect();
        all.sort_by_key(|s| s.seq);
        all
    }
}

/// Parses a case file's text; `Err` names the field (`status_checks[3].parents[0].controllerName: ...`).
pub fn parse(text: &str) -> Result<CaseFile, String> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// One entry of a step list: its place in the test, the `t.Run` it belongs to, and what it does.
#[derive(Debug)]
pub struct Step<T> {
    pub seq: u64,
    pub subtest: Option<String>,
    pub body: T,
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Step<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::<String, Value>::deserialize(d)?;
        let seq = map
            .remove("seq")
            .ok_or_else(|| D::Error::missing_field("seq"))?
            .as_u64()
            .ok_or_else(|| D::Error::custom("seq: not a positive integer"))?;
        let subtest = match map.remove("subtest") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(D::Error::custom("subtest: not a string")),
        };
        // The Go helper a check came from: for people.
        map.remove("helper");
        let body = serde_path_to_error::deserialize(Value::Object(map)).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                D::Error::custom(e.inner())
            } else {
                D::Error::custom(format!("{path}: {}", e.inner()))
            }
        })?;
        Ok(Step { seq, subtest, body })
    }
}

/// A step of any list.
#[derive(Debug, Clone, Copy)]
pub enum StepBody<'a> {
    Check(&'a Check),
    Case(&'a Case),
    Action(&'a Action),
    Other(&'a OtherCheck),
}

#[derive(Debug, Clone, Copy)]
pub struct StepRef<'a> {
    pub seq: u64,
    pub subtest: Option<&'a str>,
    pub body: StepBody<'a>,
}

/// The object a step is about.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// A condition as the helpers compare them: an empty status or reason matches any.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectName {
    pub namespace: String,
    pub name: String,
}

/// An expected entry of a route's `status.parents`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentStatus {
    #[serde(rename = "parentRef")]
    pub parent_ref: ParentRef,
    /// `$CONTROLLER_NAME` stands for the suite's controller.
    #[serde(rename = "controllerName")]
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    #[serde(rename = "sectionName")]
    pub section_name: Option<String>,
    pub port: Option<u16>,
}

/// An expected entry of a Gateway's `status.listeners`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerStatus {
    pub name: String,
    #[serde(rename = "supportedKinds", default)]
    pub supported_kinds: Vec<RouteKind>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(rename = "attachedRoutes")]
    pub attached_routes: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteKind {
    pub group: Option<String>,
    pub kind: String,
}

/// The addresses a StatusAddresses check names, by the role they play in the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AddressRole {
    #[serde(rename = "<usable address value>")]
    Usable,
    #[serde(rename = "<unusable address value>")]
    Unusable,
    /// The value of the manifest's address of the deliberately unsupported type.
    #[serde(rename = "<invalid address value>")]
    Invalid,
}

/// A status assertion (the README's "Status checks").
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "check", deny_unknown_fields)]
pub enum Check {
    NamespacesReady {
        namespaces: Vec<String>,
    },
    GatewayHasAddress {
        resource: Resource,
        #[serde(rename = "listenerForPort")]
        listener_for_port: Option<Value>,
    },
    RouteParents {
        resource: Resource,
        #[serde(rename = "namespaceRequired", default)]
        namespace_required: bool,
        parents: Vec<ParentStatus>,
    },
    AllListenersHaveConditions {
        resource: Resource,
        conditions: Vec<Condition>,
    },
    RouteCondition {
        resource: Resource,
        #[serde(rename = "parentGateway")]
        parent_gateway: ObjectName,
        condition: Condition,
    },
    RouteNoAcceptedParents {
        resource: Resource,
    },
    GatewayZeroRoutes {
        resource: Resource,
    },
    GatewayListenersStatus {
        resource: Resource,
        listeners: Vec<ListenerStatus>,
    },
    GatewayCondition {
        resource: Resource,
        condition: Condition,
    },
    GatewayLatestConditions {
        resource: Resource,
    },
    RouteLatestConditions {
        resource: Resource,
    },
    GatewayClassLatestConditions {
        resource: Resource,
    },
    GatewayClassAccepted {
        resource: Resource,
        condition: Condition,
        #[serde(rename = "alsoRequiresLatestObservedGeneration", default)]
        also_requires_latest_observed_generation: bool,
    },
    GenerationChanged {
        resource: Resource,
    },
    SpecAddresses {
        resource: Resource,
        count: usize,
        /// What each address is (for people).
        #[serde(default)]
        roles: Vec<String>,
    },
    StatusAddresses {
        resource: Resource,
        #[serde(rename = "mustContain", default)]
        must_contain: Vec<AddressRole>,
        #[serde(rename = "mustNotContain", default)]
        must_not_contain: Vec<AddressRole>,
        #[serde(rename = "typeMustEqualUsableAddressType", default)]
        type_must_equal_usable_address_type: bool,
    },
    SpecListenerCount {
        resource: Resource,
        count: usize,
    },
    RouteHostnameCount {
        resource: Resource,
        count: usize,
    },
}

/// Where a case's request goes.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
pub enum Target {
    /// The Gateway's first status address, the port of the named listener (or of the first one).
    Gateway {
        namespace: String,
        name: String,
        listener: Option<String>,
    },
    /// From inside the first Pod matching the selector.
    MeshPod {
        namespace: String,
        selector: String,
        how: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClientKind {
    #[serde(rename = "http")]
    Http,
    #[serde(rename = "https")]
    Https,
    #[serde(rename = "h2c-prior-knowledge")]
    H2cPriorKnowledge,
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "mesh")]
    Mesh,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(rename = "serverName")]
    pub server_name: String,
    /// Its `tls.crt`/`tls.key` are presented as the client certificate and `tls.crt` is the only
    /// trusted root.
    #[serde(rename = "certSecret")]
    pub cert_secret: ObjectName,
    #[serde(rename = "clientUsage")]
    pub client_usage: Option<String>,
}

/// A host the Go test computes at run time: its Go source, and how to compute it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoExpr {
    #[serde(rename = "$go_expr")]
    pub go_expr: String,
    #[serde(rename = "$runtime")]
    pub runtime: ComputedHost,
}

/// The IP of the first Pod a selector matches (bracketed when IPv6, if asked), with a port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputedHost {
    #[serde(rename = "podIPOf")]
    pub pod_ip_of: PodSelector,
    #[serde(rename = "ipv6Brackets", default)]
    pub ipv6_brackets: bool,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSelector {
    pub namespace: String,
    pub selector: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum HostSpec {
    Literal(String),
    Computed(GoExpr),
}

/// `http.Request` of the Go suite.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(rename = "Host")]
    pub host: Option<HostSpec>,
    #[serde(rename = "Method", default)]
    pub method: String,
    #[serde(rename = "Path", default)]
    pub path: String,
    #[serde(rename = "Headers", default)]
    pub headers: BTreeMap<String, String>,
    #[serde(rename = "UnfollowRedirect", default)]
    pub unfollow_redirect: bool,
    #[serde(rename = "Protocol", default)]
    pub protocol: String,
}

impl Request {
    /// The literal Host of the request, if it sets one.
    pub fn literal_host(&self) -> Result<Option<&str>, String> {
        match &self.host {
            None => Ok(None),
            Some(HostSpec::Literal(h)) if h.is_empty() => Ok(None),
            Some(HostSpec::Literal(h)) => Ok(Some(h)),
            Some(HostSpec::Computed(e)) => Err(format!(
                "the request's Host is computed by the Go test ({}), which this harness cannot evaluate",
                e.go_expr
            )),
        }
    }

    pub fn method(&self) -> &str {
        if self.method.is_empty() {
            "GET"
        } else {
            &self.method
        }
    }

    pub fn path(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }
}

/// `http.ExpectedRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedRequest {
    #[serde(rename = "Host", default)]
    pub host: String,
    #[serde(rename = "Method", default)]
    pub method: String,
    #[serde(rename = "Path", default)]
    pub path: String,
    #[serde(rename = "Headers", default)]
    pub headers: BTreeMap<String, String>,
    #[serde(rename = "AbsentHeaders", default)]
    pub absent_headers: Vec<String>,
}

/// `roundtripper.RedirectRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectRequest {
    #[serde(rename = "Scheme", default)]
    pub scheme: String,
    #[serde(rename = "Host", default)]
    pub host: String,
    #[serde(rename = "Port", default)]
    pub port: String,
    #[serde(rename = "Path", default)]
    pub path: String,
}

/// `http.Response` (HTTP cases) or `grpc.Response` (gRPC cases).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    #[serde(rename = "StatusCode", default)]
    pub status_code: u16,
    #[serde(rename = "Headers", default)]
    pub headers: BTreeMap<String, String>,
    #[serde(rename = "AbsentHeaders", default)]
    pub absent_headers: Vec<String>,
    #[serde(rename = "Code")]
    pub code: Option<String>,
    #[serde(rename = "CodeNumber")]
    pub code_number: Option<u32>,
}

impl Response {
    /// The expected HTTP status (0 means 200).
    pub fn status(&self) -> u16 {
        if self.status_code == 0 {
            200
        } else {
            self.status_code
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRef {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Namespace")]
    pub namespace: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethod {
    pub package: String,
    pub service: String,
    pub method: String,
    #[serde(rename = "fullyQualifiedMethod")]
    pub fully_qualified_method: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMetadata {
    #[serde(rename = "Authority", default)]
    pub authority: String,
    #[serde(rename = "Metadata", default)]
    pub metadata: BTreeMap<String, String>,
}

/// A request and what its answer must be (the README's "Cases").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub client: ClientKind,
    pub target: Target,
    pub tls: Option<Tls>,
    #[serde(rename = "TestCaseName")]
    pub test_case_name: Option<String>,
    #[serde(rename = "Request", default)]
    pub request: Request,
    #[serde(rename = "ExpectedRequest")]
    pub expected_request: Option<ExpectedRequest>,
    #[serde(rename = "RedirectRequest")]
    pub redirect_request: Option<RedirectRequest>,
    #[serde(rename = "BackendSetResponseHeaders", default)]
    pub backend_set_response_headers: BTreeMap<String, String>,
    #[serde(rename = "Response", default)]
    pub response: Response,
    #[serde(rename = "Backend", default)]
    pub backend: String,
    #[serde(rename = "Namespace", default)]
    pub namespace: String,
    #[serde(rename = "MirroredTo", default)]
    pub mirrored_to: Vec<MirrorRef>,
    #[serde(rename = "ExpectMirroredRequest", default)]
    pub expect_mirrored_request: bool,
    pub grpc: Option<GrpcMethod>,
    #[serde(rename = "EchoRequest")]
    pub echo_request: Option<Value>,
    #[serde(rename = "EchoTwoRequest")]
    pub echo_two_request: Option<Value>,
    #[serde(rename = "EchoThreeRequest")]
    pub echo_three_request: Option<Value>,
    #[serde(rename = "RequestMetadata")]
    pub request_metadata: Option<RequestMetadata>,
}

impl Case {
    /// The GrpcEcho method a gRPC case calls: the one of `EchoRequest`, `EchoTwoRequest`,
    /// `EchoThreeRequest` that is set (exactly one must be), which `grpc.method` must agree with.
    pub fn grpc_method(&self) -> Result<&'static str, String> {
        let set: Vec<&'static str> = [
            ("Echo", &self.echo_request),
            ("EchoTwo", &self.echo_two_request),
            ("EchoThree", &self.echo_three_request),
        ]
        .into_iter()
        .filter(|(_, r)| r.is_some())
        .map(|(m, _)| m)
        .collect();
        let [method] = set[..] else {
            return Err(format!(
                "a gRPC case sets {} of EchoRequest, EchoTwoRequest, EchoThreeRequest; exactly one is needed",
                set.len()
            ));
        };
        match &self.grpc {
            Some(g) if g.method != method => Err(format!(
                "the case's grpc.method {} is not the method of its request ({method})",
                g.method
            )),
            _ => Ok(method),
        }
    }
}

/// A mutation (the README's "Actions").
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", deny_unknown_fields)]
pub enum Action {
    RecordGeneration {
        resource: Resource,
        /// The Go variable it is kept in (for people).
        #[serde(rename = "as")]
        label: Option<String>,
    },
    Patch(Patch),
    Delete {
        resource: Resource,
    },
    /// Fill EndpointSlices with the addresses of a Deployment's pods.
    SetupEndpointSlices {
        namespace: String,
        #[serde(rename = "endpointSlices")]
        endpoint_slices: Vec<String>,
        /// The Deployment whose pods fill the slices; when absent, the one the description names
        /// ("... Deployment <name> ...").
        deployment: Option<String>,
        #[serde(default)]
        description: String,
    },
}

impl Action {
    /// The Deployment of a SetupEndpointSlices action: its `deployment`, else the word after
    /// "Deployment " in its description (the only place the case format names it).
    pub fn deployment(&self) -> Result<String, String> {
        match self {
            Action::SetupEndpointSlices {
                deployment: Some(d),
                ..
            } => Ok(d.clone()),
            Action::SetupEndpointSlices { description, .. } => description
                .split_once("Deployment ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(|d| d.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    format!(
                        "SetupEndpointSlices: no `deployment`, and none named in {description:?}"
                    )
                }),
            _ => Err("not a SetupEndpointSlices action".into()),
        }
    }
}

/// A Patch action: exactly the mutations its structured fields state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patch {
    pub resource: Resource,
    #[serde(rename = "patchType")]
    pub patch_type: Option<String>,
    /// For people: the fields say what to change.
    #[serde(default)]
    pub description: String,
    /// `{"dotted.path[i].field": value}`
    #[serde(default)]
    pub set: BTreeMap<String, Value>,
    #[serde(rename = "appendListener")]
    pub append_listener: Option<Value>,
    #[serde(rename = "keepListenersNamed")]
    pub keep_listeners_named: Option<Vec<String>>,
    #[serde(rename = "removeAddressAt")]
    pub remove_address_at: Option<usize>,
    #[serde(rename = "removeUnusableAddress", default)]
    pub remove_unusable_address: bool,
}

/// A WebSocket frame's payload.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "lowercase")]
pub enum Payload {
    Text(String),
    Binary(Vec<u8>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub send: Payload,
    #[serde(rename = "expectEcho", default)]
    pub expect_echo: bool,
}

/// Traffic checks outside the request tables (the README's "other_checks").
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "check", deny_unknown_fields)]
pub enum OtherCheck {
    WebSocketEcho {
        target: Target,
        /// For people: the harness connects to the target's address and path `/ws`.
        url: String,
        origin: String,
        frames: Vec<Frame>,
        /// For people: `http.AwaitConvergence(...)`, which the harness applies.
        #[serde(default)]
        convergence: String,
        #[serde(rename = "backendHint", default)]
        backend_hint: String,
    },
    WeightedDistribution {
        target: Target,
        request: Request,
        #[serde(rename = "totalRequests")]
        total_requests: usize,
        #[serde(rename = "concurrentRequests")]
        concurrent_requests: usize,
        #[serde(rename = "tolerancePercentage")]
        tolerance_percentage: f64,
        #[serde(rename = "expectedWeights")]
        expected_weights: BTreeMap<String, f64>,
        /// For people: the rules the harness applies.
        #[serde(default)]
        rules: Vec<String>,
    },
    #[serde(rename = "UDPDNSQuery")]
    UdpDnsQuery {
        target: Target,
        query: Value,
        expectation: String,
        polling: Value,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(steps: &str) -> String {
        format!(
            r#"{{"ShortName": "T", "Features": ["Gateway"], "Manifests": [], "source": {{}}, "counts": {{}}, {steps}}}"#
        )
    }

    #[test]
    fn every_shared_case_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/gateway-api-v1.1/conformance/cases");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            panic!(
                "{} not found: the shared suite must be beside the repository",
                dir.display()
            );
        };
        let mut n = 0;
        for e in entries {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                let c = CaseFile::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!c.steps().is_empty(), "{}", p.display());
                n += 1;
            }
        }
        assert!(n > 50, "only {n} case files in {}", dir.display());
    }

    #[test]
    fn unknown_fields_and_steps_are_errors_that_name_them() {
        let e = parse(&file(
            r#""actions": [{"seq": 1, "action": "Patch", "resource": {"kind": "Gateway", "name": "g"}, "removeListener": "http"}]"#,
        ))
        .unwrap_err();
        assert!(e.starts_with("actions[0]: "), "{e}");
        assert!(e.contains("removeListener"), "{e}");
        let e = parse(&file(
            r#""status_checks": [{"seq": 1, "check": "RotateCertificates", "resource": {"kind": "Gateway", "name": "g"}}]"#,
        ))
        .unwrap_err();
        assert!(
            e.contains("status_checks[0]") && e.contains("RotateCertificates"),
            "{e}"
        );
        let e = parse(&file(
            r#""cases": [{"seq": 2, "name": "c", "client": "http", "target": {"kind": "Gateway", "namespace": "n", "name": "g", "listener": null}, "Request": {"Path": "/", "Hedaers": {}}}]"#,
        ))
        .unwrap_err();
        assert!(
            e.contains("cases[0]") && e.contains("Request.Hedaers"),
            "{e}"
        );
        let e = parse(&file(r#""Surprise": 1"#)).unwrap_err();
        assert!(e.contains("Surprise"), "{e}");
    }

    #[test]
    fn steps_run_in_seq_order_and_deployments_are_named() {
        let c = parse(&file(
            r#""status_checks": [{"seq": 3, "check": "GatewayLatestConditions", "resource": {"kind": "Gateway", "name": "g"}}],
               "actions": [{"seq": 1, "action": "SetupEndpointSlices", "namespace": "n", "endpointSlices": ["s"],
                            "description": "List Pods matching Deployment infra-backend-v1 selector; then ..."},
                           {"seq": 2, "action": "Delete", "resource": {"kind": "Gateway", "name": "g"}}]"#,
        ))
        .unwrap();
        let seqs: Vec<u64> = c.steps().iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(c.actions[0].body.deployment().unwrap(), "infra-backend-v1");
        assert!(c.actions[1].body.deployment().is_err());
    }
}
