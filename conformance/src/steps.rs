//! One conformance test's steps — status checks, requests, actions and other traffic checks, as typed
//! by `case` — executed the way `conformance/README.md` of the shared suite says the Go helpers judge
//! them: same conditions, same timeouts, same poll interval, same retry rules, and no more.

use crate::case::{
    Action, AddressRole, Case, Check, ClientKind, Condition, HostSpec, ListenerStatus, OtherCheck,
    ParentStatus, Patch, Payload, Resource, StepBody, StepRef, Target,
};
use crate::env::Env;
use crate::http::{self as h, Expect, Transport};
use gw_client::object_ref;
use gw_model::{ObjectKey, kinds};
use gw_testkit::grpc_echo;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_secs(1);
const NAMESPACES_READY: Duration = Duration::from_secs(300);
const GATEWAY_ADDRESS: Duration = Duration::from_secs(180);
const GATEWAY_CONDITION: Duration = Duration::from_secs(180);
pub const GATEWAYCLASS_ACCEPTED: Duration = Duration::from_secs(180);
const ROUTE_PARENTS: Duration = Duration::from_secs(60);
const ROUTE_CONDITION: Duration = Duration::from_secs(60);
const ROUTE_NO_PARENTS: Duration = Duration::from_secs(60);
const LISTENERS: Duration = Duration::from_secs(60);
const LATEST_GENERATION: Duration = Duration::from_secs(60);
const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
const REQUIRED_CONSECUTIVE_SUCCESSES: u32 = 3;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(60);
/// Tries of the weighted-distribution check (the Go test retries the whole distribution), `POLL`
/// apart.
const DISTRIBUTION_TRIES: usize = 10;

/// A step that failed: which one, and why.
pub struct StepError {
    pub step: String,
    pub why: String,
}

/// What one poll of a check concluded.
enum Poll {
    Done,
    /// Not yet: why (reported if the check times out).
    Retry(String),
    /// Failed outright, without waiting for the timeout.
    Fatal(String),
}

/// Polls `f` every second until it is done, fails, or `timeout` passes.
async fn poll<F, Fut>(env: &Env, timeout: Duration, mut f: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Poll, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        env.check_alive()?;
        let why = match f().await {
            Ok(Poll::Done) => return Ok(()),
            Ok(Poll::Fatal(why)) => return Err(why),
            Ok(Poll::Retry(why)) | Err(why) => why,
        };
        if Instant::now() + POLL > deadline {
            return Err(format!("not within {}s: {why}", timeout.as_secs()));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The store key of a step's resource (the kind resolved, a namespaced kind defaulting to "default").
fn key_of(r: &Resource) -> Result<ObjectKey, String> {
    let info = match &r.api_version {
        Some(av) => kinds::by_group_kind(kinds::split_api_version(av).0, &r.kind),
        None => kinds::resolve(&r.kind),
    }
    .ok_or_else(|| format!("kind {} is not one gw stores", r.kind))?;
    let ns = if info.namespaced {
        r.namespace.as_deref().unwrap_or("default")
    } else {
        ""
    };
    Ok(ObjectKey::new(info.group, info.kind, ns, &r.name))
}

fn generation(obj: &Value) -> i64 {
    obj["metadata"]["generation"].as_i64().unwrap_or(0)
}

/// Whether every condition has `observedGeneration == metadata.generation` (Go's
/// `ConditionsHaveLatestObservedGeneration`; an empty list does not qualify).
fn latest(obj: &Value, conditions: &Value) -> Result<(), String> {
    let list = conditions
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or("no conditions yet")?;
    let g = generation(obj);
    let stale: Vec<String> = list
        .iter()
        .filter(|c| c["observedGeneration"].as_i64() != Some(g))
        .map(|c| {
            format!(
                "{} (observedGeneration {})",
                c["type"].as_str().unwrap_or("?"),
                c["observedGeneration"]
            )
        })
        .collect();
    if stale.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "conditions not at generation {g}: {}",
            stale.join(", ")
        ))
    }
}

/// Whether `list` holds a condition like `want` (empty status or reason: any).
fn has_condition(list: &Value, want: &Condition) -> bool {
    list.as_array().into_iter().flatten().any(|c| {
        c["type"] == want.kind.as_str()
            && (want.status.is_empty() || c["status"] == want.status.as_str())
            && (want.reason.is_empty() || c["reason"] == want.reason.as_str())
    })
}

/// `Err` naming the first of `wants` that `list` lacks.
fn missing_condition(list: &Value, wants: &[Condition]) -> Result<(), String> {
    match wants.iter().find(|c| !has_condition(list, c)) {
        Some(c) => Err(format!(
            "lacks {} (has {})",
            describe_condition(c),
            show_conditions(list)
        )),
        None => Ok(()),
    }
}

fn describe_condition(c: &Condition) -> String {
    let any = |s: &str| {
        if s.is_empty() {
            "*".to_string()
        } else {
            s.to_string()
        }
    };
    format!("{}={}/{}", c.kind, any(&c.status), any(&c.reason))
}

fn show_conditions(list: &Value) -> String {
    let items: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={}/{}",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("?")
            )
        })
        .collect();
    format!("[{}]", items.join(" "))
}

fn describe(v: &Value) -> String {
    format!("{v}").chars().take(300).collect()
}

/// A test in progress: its environment and what its actions recorded.
pub struct Run<'a> {
    pub env: &'a mut Env,
    recorded: HashMap<ObjectKey, i64>,
    /// Values earlier steps found that later cases name as `$NAME`.
    vars: HashMap<&'static str, String>,
    pub steps: usize,
}

impl<'a> Run<'a> {
    pub fn new(env: &'a mut Env) -> Run<'a> {
        Run {
            env,
            recorded: HashMap::new(),
            vars: HashMap::new(),
            steps: 0,
        }
    }

    async fn fetch(&self, key: &ObjectKey) -> Result<Value, String> {
        self.env
            .client
            .get_object(key)
            .await
            .map_err(|e| format!("reading {key}: {e}"))?
            .ok_or_else(|| format!("{key} does not exist"))
    }

    /// Executes one step.
    pub async fn step(&mut self, s: StepRef<'_>) -> Result<(), StepError> {
        self.steps += 1;
        let r = match s.body {
            StepBody::Check(c) => self.check(c).await,
            StepBody::Case(c) => self.case(c).await,
            StepBody::Action(a) => self.action(a).await,
            StepBody::Other(o) => self.other(o).await,
        };
        r.map_err(|why| StepError {
            step: step_name(&s),
            why,
        })
    }

    pub async fn check(&mut self, check: &Check) -> Result<(), String> {
        match check {
            Check::NamespacesReady { namespaces } => self.namespaces_ready(namespaces).await,
            Check::GatewayHasAddress { resource, .. } => {
                self.await_gateway(
                    &key_of(resource)?,
                    GATEWAY_ADDRESS,
                    |gw| match gateway_address(gw) {
                        Some(_) => Poll::Done,
                        None => Poll::Retry(format!(
                            "status.addresses has no IPAddress or Hostname: {}",
                            describe(&gw["status"]["addresses"])
                        )),
                    },
                )
                .await
            }
            Check::RouteParents {
                resource,
                namespace_required,
                parents,
            } => {
                let key = key_of(resource)?;
                let controller = self.env.controller.clone();
                poll(self.env, ROUTE_PARENTS, || async {
                    let route = self.fetch(&key).await?;
                    Ok(
                        match route_parents_match(&route, parents, *namespace_required, &controller)
                        {
                            Ok(()) => Poll::Done,
                            Err(e) => Poll::Retry(e),
                        },
                    )
                })
                .await
            }
            Check::AllListenersHaveConditions {
                resource,
                conditions,
            } => {
                let key = key_of(resource)?;
                poll(self.env, LISTENERS, || async {
                    let gw = self.fetch(&key).await?;
                    for l in gw["status"]["listeners"].as_array().into_iter().flatten() {
                        if let Err(m) = missing_condition(&l["conditions"], conditions) {
                            return Ok(Poll::Retry(format!("listener {}: {m}", l["name"])));
                        }
                    }
                    Ok(Poll::Done)
                })
                .await
            }
            Check::RouteCondition {
                resource,
                parent_gateway,
                condition,
            } => {
                let key = key_of(resource)?;
                let (gw_ns, gw_name) = (&parent_gateway.namespace, &parent_gateway.name);
                poll(self.env, ROUTE_CONDITION, || async {
                    let route = self.fetch(&key).await?;
                    let parents = route["status"]["parents"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let mut found = false;
                    for p in &parents {
                        if let Err(e) = latest(&route, &p["conditions"]) {
                            return Ok(Poll::Retry(e));
                        }
                        let pr = &p["parentRef"];
                        if pr["name"] == gw_name.as_str()
                            && (pr["namespace"].is_null() || pr["namespace"] == gw_ns.as_str())
                            && has_condition(&p["conditions"], condition)
                        {
                            found = true;
                        }
                    }
                    Ok(if found {
                        Poll::Done
                    } else {
                        Poll::Retry(format!(
                            "no parent {gw_ns}/{gw_name} with {}; parents: {}",
                            describe_condition(condition),
                            describe(&route["status"]["parents"])
                        ))
                    })
                })
                .await
            }
            Check::RouteNoAcceptedParents { resource } => {
                let key = key_of(resource)?;
                let empty_before = std::cell::Cell::new(false);
                let rejected = Condition {
                    kind: "Accepted".into(),
                    status: "False".into(),
                    reason: String::new(),
                };
                poll(self.env, ROUTE_NO_PARENTS, || async {
                    let route = self.fetch(&key).await?;
                    let parents = route["status"]["parents"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    let was_empty = empty_before.replace(parents.is_empty());
                    Ok(match parents.as_slice() {
                        [] if was_empty => Poll::Done,
                        [] => Poll::Retry("status.parents is empty on one poll only".into()),
                        [p] if latest(&route, &p["conditions"]).is_ok()
                            && has_condition(&p["conditions"], &rejected) =>
                        {
                            Poll::Done
                        }
                        _ => Poll::Retry(format!(
                            "status.parents: {}",
                            describe(&route["status"]["parents"])
                        )),
                    })
                })
                .await
            }
            Check::GatewayZeroRoutes { resource } => {
                self.await_gateway(&key_of(resource)?, LISTENERS, |gw| {
                    match gw["status"]["listeners"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                    {
                        [] => Poll::Done,
                        [l] if l["attachedRoutes"] == 0 => Poll::Done,
                        _ => Poll::Retry(format!(
                            "listeners: {}",
                            describe(&gw["status"]["listeners"])
                        )),
                    }
                })
                .await
            }
            Check::GatewayListenersStatus {
                resource,
                listeners,
            } => {
                self.await_gateway(&key_of(resource)?, LISTENERS, |gw| {
                    match listeners_match(gw, listeners) {
                        Ok(()) => Poll::Done,
                        Err(e) => Poll::Retry(e),
                    }
                })
                .await
            }
            // The Go helper fails at once when the conditions are not at the latest generation.
            Check::GatewayCondition {
                resource,
                condition,
            } => {
                self.await_condition(&key_of(resource)?, condition, GATEWAY_CONDITION, true)
                    .await
            }
            Check::GatewayLatestConditions { resource } => {
                self.await_gateway(&key_of(resource)?, LATEST_GENERATION, |_| Poll::Done)
                    .await
            }
            Check::RouteLatestConditions { resource } => {
                let route = self.fetch(&key_of(resource)?).await?;
                for p in route["status"]["parents"].as_array().into_iter().flatten() {
                    latest(&route, &p["conditions"])?;
                }
                Ok(())
            }
            Check::GatewayClassLatestConditions { resource } => {
                let gc = self.fetch(&key_of(resource)?).await?;
                latest(&gc, &gc["status"]["conditions"])
            }
            // Conditions of an older generation are a reason to wait (GWCMustHaveAcceptedConditionAny
            // polls until both hold).
            Check::GatewayClassAccepted {
                resource,
                condition,
                ..
            } => {
                self.await_condition(&key_of(resource)?, condition, GATEWAYCLASS_ACCEPTED, false)
                    .await
            }
            Check::GenerationChanged { resource } => {
                let key = key_of(resource)?;
                let before = *self
                    .recorded
                    .get(&key)
                    .ok_or("no generation was recorded before")?;
                let now = generation(&self.fetch(&key).await?);
                if now == before {
                    Err(format!("metadata.generation is still {before}"))
                } else {
                    Ok(())
                }
            }
            Check::SpecAddresses {
                resource, count, ..
            } => {
                let gw = self.fetch(&key_of(resource)?).await?;
                count_is(&gw["spec"]["addresses"], *count, "spec.addresses")
            }
            Check::StatusAddresses {
                resource,
                must_contain,
                must_not_contain,
                type_must_equal_usable_address_type,
            } => {
                let gw = self.fetch(&key_of(resource)?).await?;
                self.status_addresses(
                    &gw,
                    must_contain,
                    must_not_contain,
                    *type_must_equal_usable_address_type,
                )
            }
            Check::SpecListenerCount { resource, count } => {
                let gw = self.fetch(&key_of(resource)?).await?;
                count_is(&gw["spec"]["listeners"], *count, "spec.listeners")
            }
            Check::RouteHostnameCount { resource, count } => {
                let route = self.fetch(&key_of(resource)?).await?;
                count_is(&route["spec"]["hostnames"], *count, "spec.hostnames")?;
                // The TLSRoute tests send their requests to the route's one hostname (the Go test's
                // `serverStr := string(hostnames[0])`).
                if resource.kind == "TLSRoute"
                    && let Some(h) = route["spec"]["hostnames"][0].as_str()
                {
                    self.vars.insert("$TLSROUTE_HOSTNAME", h.to_string());
                }
                Ok(())
            }
        }
    }

    /// The values a StatusAddresses check names, by their role in the suite.
    fn address_value(&self, role: AddressRole) -> Vec<String> {
        match role {
            AddressRole::Usable => vec![Env::usable_address().to_string()],
            AddressRole::Unusable => vec![Env::unusable_address().to_string()],
            AddressRole::Invalid => self.env.invalid_addresses.clone(),
        }
    }

    fn status_addresses(
        &self,
        gw: &Value,
        must_contain: &[AddressRole],
        must_not_contain: &[AddressRole],
        usable_type: bool,
    ) -> Result<(), String> {
        let addrs = gw["status"]["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let has = |v: &str| addrs.iter().any(|a| a["value"] == v);
        for role in must_contain {
            for v in self.address_value(*role) {
                if !has(&v) {
                    return Err(format!(
                        "status.addresses {} lacks the {role:?} address {v}",
                        describe(&gw["status"]["addresses"])
                    ));
                }
            }
        }
        for role in must_not_contain {
            for v in self.address_value(*role) {
                if has(&v) {
                    return Err(format!(
                        "status.addresses {} holds the {role:?} address {v}",
                        describe(&gw["status"]["addresses"])
                    ));
                }
            }
        }
        if usable_type {
            let usable = Env::usable_address().to_string();
            let t = addrs
                .iter()
                .find(|a| a["value"] == usable.as_str())
                .map(|a| a["type"].as_str().unwrap_or("IPAddress"));
            if t != Some("IPAddress") {
                return Err(format!(
                    "the usable address has type {t:?}, expected IPAddress"
                ));
            }
        }
        Ok(())
    }
}

/// A `require.Len` on a list field.
fn count_is(list: &Value, want: usize, what: &str) -> Result<(), String> {
    let n = list.as_array().map_or(0, Vec::len);
    if n == want {
        Ok(())
    } else {
        Err(format!("{what} has {n} entries, expected {want}"))
    }
}

/// The first `status.addresses` entry of type IPAddress or Hostname.
fn gateway_address(gw: &Value) -> Option<String> {
    gw["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| {
            matches!(
                a["type"].as_str().unwrap_or("IPAddress"),
                "IPAddress" | "Hostname"
            )
        })
        .and_then(|a| a["value"].as_str().map(str::to_string))
}

/// RouteParents as `parentRefsMatch` judges it (sectionName is not compared; `$CONTROLLER_NAME` is
/// the suite's controller).
fn route_parents_match(
    route: &Value,
    expected: &[ParentStatus],
    namespace_required: bool,
    controller: &str,
) -> Result<(), String> {
    let actual = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if actual.len() != expected.len() {
        return Err(format!(
            "expected {} parents, status.parents is {}",
            expected.len(),
            describe(&route["status"]["parents"])
        ));
    }
    let opt = |v: &Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
        let ar = &a["parentRef"];
        let want_controller = if e.controller_name == "$CONTROLLER_NAME" {
            controller
        } else {
            &e.controller_name
        };
        if a["controllerName"] != want_controller {
            return Err(format!(
                "parent {i}: controllerName {} (expected {want_controller:?})",
                a["controllerName"]
            ));
        }
        let er = &e.parent_ref;
        for (field, want) in [
            ("group", er.group.clone()),
            ("kind", er.kind.clone()),
            ("name", Some(er.name.clone())),
        ] {
            if opt(ar, field) != want {
                return Err(format!(
                    "parent {i}: parentRef.{field} {} (expected {want:?})",
                    ar[field]
                ));
            }
        }
        let got_ns = opt(ar, "namespace");
        if got_ns != er.namespace && (namespace_required || got_ns.is_some()) {
            return Err(format!(
                "parent {i}: parentRef.namespace {} (expected {:?})",
                ar["namespace"], er.namespace
            ));
        }
        missing_condition(&a["conditions"], &e.conditions)
            .map_err(|m| format!("parent {i}: {m}"))?;
        latest(route, &a["conditions"]).map_err(|e| format!("parent {i}: {e}"))?;
    }
    Ok(())
}

/// GatewayListenersStatus as `GatewayStatusMustHaveListeners` (listenersMatch) judges it.
fn listeners_match(gw: &Value, expected: &[ListenerStatus]) -> Result<(), String> {
    let actual = gw["status"]["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if actual.len() != expected.len() {
        return Err(format!(
            "expected {} listeners, status.listeners is {}",
            expected.len(),
            describe(&gw["status"]["listeners"])
        ));
    }
    for e in expected {
        let name = e.name.as_str();
        let a = actual
            .iter()
            .find(|a| a["name"] == name)
            .ok_or_else(|| format!("no status for listener {name}"))?;
        let got_kinds = a["supportedKinds"].as_array().cloned().unwrap_or_default();
        if e.supported_kinds.is_empty() && !got_kinds.is_empty() {
            return Err(format!(
                "listener {name}: supportedKinds should be empty, is {}",
                describe(&a["supportedKinds"])
            ));
        }
        for k in &e.supported_kinds {
            let group = k.group.as_deref().unwrap_or(kinds::GATEWAY_GROUP);
            if !got_kinds.iter().any(|g| {
                g["group"].as_str().unwrap_or(kinds::GATEWAY_GROUP) == group
                    && g["kind"] == k.kind.as_str()
            }) {
                return Err(format!(
                    "listener {name}: supportedKinds {} lacks {group}/{}",
                    describe(&a["supportedKinds"]),
                    k.kind
                ));
            }
        }
        if a["attachedRoutes"] != e.attached_routes {
            return Err(format!(
                "listener {name}: attachedRoutes {} (expected {})",
                a["attachedRoutes"], e.attached_routes
            ));
        }
        missing_condition(&a["conditions"], &e.conditions)
            .map_err(|m| format!("listener {name}: {m}"))?;
    }
    Ok(())
}

/// Sets a dotted path with indices (`spec.rules[0].backendRefs[0].name`).
fn set_path(obj: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut cur = obj;
    for seg in path.split('.') {
        let (field, idx) = match seg.split_once('[') {
            Some((f, rest)) => (
                f,
                Some(
                    rest.trim_end_matches(']')
                        .parse::<usize>()
                        .map_err(|e| format!("{path}: {e}"))?,
                ),
            ),
            None => (seg, None),
        };
        cur = cur
            .get_mut(field)
            .ok_or_else(|| format!("{path}: no field {field}"))?;
        if let Some(i) = idx {
            cur = cur
                .get_mut(i)
                .ok_or_else(|| format!("{path}: no element {i}"))?;
        }
    }
    *cur = value;
    Ok(())
}

fn spec_list<'a>(obj: &'a mut Value, field: &str) -> Result<&'a mut Vec<Value>, String> {
    obj["spec"][field]
        .as_array_mut()
        .ok_or_else(|| format!("the object has no spec.{field}"))
}

/// Applies a Patch action's mutations, exactly as its fields state them. `unusable` is the address the
/// harness supplied as unusable.
fn mutate(obj: &mut Value, p: &Patch, unusable: &str) -> Result<(), String> {
    let mut done = false;
    for (path, v) in &p.set {
        set_path(obj, path, v.clone())?;
        done = true;
    }
    if let Some(l) = &p.append_listener {
        spec_list(obj, "listeners")?.push(l.clone());
        done = true;
    }
    if let Some(keep) = &p.keep_listeners_named {
        let ls = spec_list(obj, "listeners")?;
        let kept: Vec<Value> = keep
            .iter()
            .map(|name| {
                ls.iter()
                    .find(|l| l["name"] == name.as_str())
                    .cloned()
                    .ok_or_else(|| format!("keepListenersNamed: no listener {name}"))
            })
            .collect::<Result<_, String>>()?;
        *ls = kept;
        done = true;
    }
    if let Some(i) = p.remove_address_at {
        let a = spec_list(obj, "addresses")?;
        if i >= a.len() {
            return Err(format!(
                "removeAddressAt: {i}, but spec.addresses has {} entries",
                a.len()
            ));
        }
        a.remove(i);
        done = true;
    }
    if p.remove_unusable_address {
        let a = spec_list(obj, "addresses")?;
        let before = a.len();
        a.retain(|x| x["value"] != unusable);
        if a.len() == before {
            return Err(format!(
                "removeUnusableAddress: spec.addresses does not hold {unusable}"
            ));
        }
        done = true;
    }
    if done {
        Ok(())
    } else {
        Err(format!(
            "a Patch that names no mutation (set, appendListener, keepListenersNamed, removeAddressAt, removeUnusableAddress): {:?}",
            p.description
        ))
    }
}

/// A step's name in the summary: the case name, or what the check or action is about.
fn step_name(s: &StepRef<'_>) -> String {
    let on = |r: &Resource| format!("{} {}", r.kind, r.name);
    let what = match s.body {
        StepBody::Case(c) => format!("request {:?}", c.name),
        StepBody::Check(c) => {
            let name = check_name(c);
            match check_resource(c) {
                Some(r) => format!("check {name} {}", on(r)),
                None => format!("check {name}"),
            }
        }
        StepBody::Action(a) => match a {
            Action::RecordGeneration { resource, .. } => {
                format!("action RecordGeneration {}", on(resource))
            }
            Action::Patch(p) => format!("action Patch {}", on(&p.resource)),
            Action::Delete { resource } => format!("action Delete {}", on(resource)),
            Action::SetupEndpointSlices { namespace, .. } => {
                format!("action SetupEndpointSlices in {namespace}")
            }
        },
        StepBody::Other(o) => match o {
            OtherCheck::WebSocketEcho { .. } => "check WebSocketEcho".into(),
            OtherCheck::WeightedDistribution { .. } => "check WeightedDistribution".into(),
            OtherCheck::UdpDnsQuery { .. } => "check UDPDNSQuery".into(),
        },
    };
    match s.subtest {
        Some(t) => format!("[{t}] {what}"),
        None => what,
    }
}

fn check_name(c: &Check) -> &'static str {
    match c {
        Check::NamespacesReady { .. } => "NamespacesReady",
        Check::GatewayHasAddress { .. } => "GatewayHasAddress",
        Check::RouteParents { .. } => "RouteParents",
        Check::AllListenersHaveConditions { .. } => "AllListenersHaveConditions",
        Check::RouteCondition { .. } => "RouteCondition",
        Check::RouteNoAcceptedParents { .. } => "RouteNoAcceptedParents",
        Check::GatewayZeroRoutes { .. } => "GatewayZeroRoutes",
        Check::GatewayListenersStatus { .. } => "GatewayListenersStatus",
        Check::GatewayCondition { .. } => "GatewayCondition",
        Check::GatewayLatestConditions { .. } => "GatewayLatestConditions",
        Check::RouteLatestConditions { .. } => "RouteLatestConditions",
        Check::GatewayClassLatestConditions { .. } => "GatewayClassLatestConditions",
        Check::GatewayClassAccepted { .. } => "GatewayClassAccepted",
        Check::GenerationChanged { .. } => "GenerationChanged",
        Check::SpecAddresses { .. } => "SpecAddresses",
        Check::StatusAddresses { .. } => "StatusAddresses",
        Check::SpecListenerCount { .. } => "SpecListenerCount",
        Check::RouteHostnameCount { .. } => "RouteHostnameCount",
    }
}

fn check_resource(c: &Check) -> Option<&Resource> {
    match c {
        Check::NamespacesReady { .. } => None,
        Check::GatewayHasAddress { resource, .. }
        | Check::RouteParents { resource, .. }
        | Check::AllListenersHaveConditions { resource, .. }
        | Check::RouteCondition { resource, .. }
        | Check::RouteNoAcceptedParents { resource }
        | Check::GatewayZeroRoutes { resource }
        | Check::GatewayListenersStatus { resource, .. }
        | Check::GatewayCondition { resource, .. }
        | Check::GatewayLatestConditions { resource }
        | Check::RouteLatestConditions { resource }
        | Check::GatewayClassLatestConditions { resource }
        | Check::GatewayClassAccepted { resource, .. }
        | Check::GenerationChanged { resource }
        | Check::SpecAddresses { resource, .. }
        | Check::StatusAddresses { resource, .. }
        | Check::SpecListenerCount { resource, .. }
        | Check::RouteHostnameCount { resource, .. } => Some(resource),
    }
}

impl Run<'_> {
    /// Polls a Gateway until its conditions are at its generation and `judge` is satisfied.
    async fn await_gateway(
        &self,
        key: &ObjectKey,
        timeout: Duration,
        judge: impl Fn(&Value) -> Poll,
    ) -> Result<(), String> {
        poll(self.env, timeout, || async {
            let gw = self.fetch(key).await?;
            Ok(match latest(&gw, &gw["status"]["conditions"]) {
                Ok(()) => judge(&gw),
                Err(e) => Poll::Retry(e),
            })
        })
        .await
    }

    /// Polls until the object's conditions are at its generation and include `want`; conditions of an
    /// older generation are a failure (`stale_fatal`) or a reason to wait.
    pub async fn await_condition(
        &self,
        key: &ObjectKey,
        want: &Condition,
        timeout: Duration,
        stale_fatal: bool,
    ) -> Result<(), String> {
        poll(self.env, timeout, || async {
            let obj = self.fetch(key).await?;
            let conds = &obj["status"]["conditions"];
            if let Err(e) = latest(&obj, conds) {
                return Ok(if stale_fatal {
                    Poll::Fatal(e)
                } else {
                    Poll::Retry(e)
                });
            }
            Ok(if has_condition(conds, want) {
                Poll::Done
            } else {
                Poll::Retry(format!(
                    "wanted {}, has {}",
                    describe_condition(want),
                    show_conditions(conds)
                ))
            })
        })
        .await
    }

    /// `NamespacesMustBeReady`: the Gateways of these namespaces accepted and programmed at their
    /// generation (pods are ready once started).
    pub async fn namespaces_ready(&self, namespaces: &[String]) -> Result<(), String> {
        let ready = |t: &str| Condition {
            kind: t.into(),
            status: "True".into(),
            reason: String::new(),
        };
        poll(self.env, NAMESPACES_READY, || async {
            for ns in namespaces {
                let gws = self
                    .env
                    .client
                    .list_objects(kinds::GATEWAY_GROUP, "Gateway", ns)
                    .await
                    .map_err(|e| e.to_string())?;
                for gw in gws.iter().filter(|g| {
                    g["metadata"]["annotations"]["gateway-api/skip-this-for-readiness"] != "true"
                }) {
                    let conds = &gw["status"]["conditions"];
                    let name = format!(
                        "Gateway {ns}/{}",
                        gw["metadata"]["name"].as_str().unwrap_or("")
                    );
                    if let Err(e) = latest(gw, conds) {
                        return Ok(Poll::Retry(format!("{name}: {e}")));
                    }
                    for t in ["Accepted", "Programmed"] {
                        if !has_condition(conds, &ready(t)) {
                            return Ok(Poll::Retry(format!(
                                "{name} is not {t}: {}",
                                show_conditions(conds)
                            )));
                        }
                    }
                }
            }
            Ok(Poll::Done)
        })
        .await
    }

    /// The address (and the `Host` the suite would send by default) of a Gateway target.
    async fn target(&self, t: &Target, scheme: &str) -> Result<(SocketAddr, String), String> {
        let Target::Gateway {
            namespace,
            name,
            listener,
        } = t
        else {
            return Err("the harness cannot send requests from inside a mesh pod".into());
        };
        let gw = self
            .fetch(&ObjectKey::new(
                kinds::GATEWAY_GROUP,
                "Gateway",
                namespace,
                name,
            ))
            .await?;
        let ip = gateway_address(&gw).ok_or("the Gateway has no address in its status")?;
        let listeners = gw["spec"]["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let l = match listener {
            Some(n) => listeners
                .iter()
                .find(|l| l["name"] == n.as_str())
                .ok_or_else(|| format!("the Gateway has no listener {n}"))?,
            None => listeners.first().ok_or("the Gateway has no listeners")?,
        };
        let port = l["port"].as_u64().ok_or("a listener without port")? as u16;
        let addr = SocketAddr::new(
            ip.parse()
                .map_err(|e| format!("Gateway address {ip:?}: {e}"))?,
            port,
        );
        let host = match (scheme, port) {
            ("http", 80) | ("https", 443) => ip,
            _ => addr.to_string(),
        };
        Ok((addr, host))
    }

    /// A case's value, or what an earlier step found for it when it names one (`$TLSROUTE_HOSTNAME`).
    fn resolve(&self, value: &str) -> Result<String, String> {
        if !value.starts_with('$') {
            return Ok(value.to_string());
        }
        self.vars
            .get(value)
            .cloned()
            .ok_or_else(|| format!("the case uses {value}, which no earlier step of the test set"))
    }

    /// The Host a request is sent with: its own (resolved), else the target's.
    fn request_host(
        &self,
        request: &crate::case::Request,
        default_host: String,
    ) -> Result<String, String> {
        match request.literal_host()? {
            Some(h) => self.resolve(h),
            None => Ok(default_host),
        }
    }

    /// Every echoed request URI of a Deployment's pods so far.
    fn seen_by(&self, namespace: &str, deployment: &str) -> Vec<String> {
        let owner = format!("{namespace}/{deployment}");
        self.env
            .pods
            .iter()
            .filter(|p| p.owner == owner)
            .flat_map(|p| {
                p.servers
                    .iter()
                    .flat_map(|s| s.seen.lock().unwrap_or_else(|e| e.into_inner()).clone())
            })
            .collect()
    }

    /// A request case: sent until it passes three times in a row, within the suite's 30 s; then the
    /// mirrors must have seen it.
    async fn case(&mut self, c: &Case) -> Result<(), String> {
        match c.client {
            ClientKind::Grpc => return self.grpc_case(c).await,
            ClientKind::Mesh => return self.mesh_case(c).await,
            _ => {}
        }
        let (scheme, transport) = match c.client {
            ClientKind::Http => ("http", Transport::Http),
            ClientKind::H2cPriorKnowledge => ("http", Transport::H2c),
            ClientKind::Https => {
                let tls = c.tls.as_ref().ok_or("an https case without tls")?;
                let (crt, key) = self
                    .env
                    .secret_pair(&tls.cert_secret.namespace, &tls.cert_secret.name)
                    .await?;
                (
                    "https",
                    Transport::Https {
                        server_name: self.resolve(&tls.server_name)?,
                        root_pem: crt.clone(),
                        client: Some((crt, key)),
                    },
                )
            }
            other => return Err(format!("the harness has no {other:?} client")),
        };
        let (addr, default_host) = self.target(&c.target, scheme).await?;
        let host = self.request_host(&c.request, default_host)?;
        let request = format!(
            "{} {scheme}://{addr}{} (Host: {host})",
            c.request.method(),
            c.request.path()
        );
        let seen_before: Vec<usize> = c
            .mirrored_to
            .iter()
            .map(|m| self.seen_by(&m.namespace, &m.name).len())
            .collect();
        let expect = Expect::of(c);
        converge(self.env, &request, || async {
            let req = h::build(&c.request, &c.backend_set_response_headers, &host)?;
            let reply = h::send(addr, &transport, req).await?;
            h::compare(&expect, &reply, scheme, &host)
        })
        .await?;
        if c.expect_mirrored_request {
            let path = c.request.path();
            let deadline = Instant::now() + MIRROR_TIMEOUT;
            for (m, before) in c.mirrored_to.iter().zip(seen_before) {
                while !self
                    .seen_by(&m.namespace, &m.name)
                    .iter()
                    .skip(before)
                    .any(|u| u == path)
                {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{request}: no mirrored copy reached {}/{} within {}s",
                            m.namespace,
                            m.name,
                            MIRROR_TIMEOUT.as_secs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(())
    }

    /// The first pod of `namespace` a label selector (`app=echo,version=v1`) matches.
    fn mesh_pod(&self, namespace: &str, selector: &str) -> Result<&crate::env::Pod, String> {
        let sel = gw_model::selector::LabelSelector::parse(selector)
            .map_err(|e| format!("selector {selector:?}: {e}"))?;
        self.env
            .pods
            .iter()
            .find(|p| {
                p.namespace == namespace && sel.matches(&json!({"metadata": {"labels": p.labels}}))
            })
            .ok_or_else(|| format!("no pod in {namespace} matches {selector}"))
    }

    /// Where a mesh pod's request for `host` (`name[.namespace[.svc...]][:port]`, or an address) goes,
    /// as cluster DNS would resolve it: to the address the mesh serves that Service at.
    async fn mesh_destination(&self, host: &str, client_ns: &str) -> Result<SocketAddr, String> {
        if let Ok(addr) = host.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let (name, port) = match host.rsplit_once(':') {
            Some((n, p)) => (
                n,
                p.parse::<u16>()
                    .map_err(|e| format!("host {host:?}: port {p:?}: {e}"))?,
            ),
            None => (host, 80),
        };
        if let Ok(ip) = name.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let mut labels = name.split('.');
        let service = labels.next().unwrap_or("");
        let ns = labels.next().unwrap_or(client_ns);
        let svc = self
            .fetch(&ObjectKey::new("", "Service", ns, service))
            .await?;
        let ip = gw_model::core::mesh_address(&svc)
            .ok_or_else(|| format!("Service {ns}/{service} has no address in the mesh yet"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// A mesh case (`echo.MeshPod`): the request leaves the first pod the selector matches (from its
    /// address: the mesh tells the caller by it) for the host of its URL, resolved as cluster DNS
    /// would; a `Host` header, if the case sets one, overrides the URL's. Judged on the status, the
    /// response headers and the answering pod only, as the suite judges mesh requests.
    async fn mesh_case(&mut self, c: &Case) -> Result<(), String> {
        let Target::MeshPod {
            namespace,
            selector,
            ..
        } = &c.target
        else {
            return Err("a mesh case must be sent from a MeshPod".into());
        };
        let client = self.mesh_pod(namespace, selector)?;
        let (client_ip, client_ns) = (IpAddr::V4(client.ip), client.namespace.clone());
        let url_host = match &c.request.host {
            Some(HostSpec::Computed(e)) => {
                let sel = &e.runtime.pod_ip_of;
                let pod = self.mesh_pod(&sel.namespace, &sel.selector)?;
                format!("{}:{}", pod.ip, e.runtime.port.unwrap_or(80))
            }
            Some(HostSpec::Literal(h)) => h.clone(),
            None => return Err("a mesh case without a host".into()),
        };
        let mut request = c.request.clone();
        let host_header = request
            .headers
            .keys()
            .find(|k| k.eq_ignore_ascii_case("host"))
            .cloned()
            .and_then(|k| request.headers.remove(&k))
            .unwrap_or_else(|| url_host.clone());
        let described = format!(
            "{} http://{url_host}{} from a pod of {namespace} ({client_ip}), Host {host_header}",
            request.method(),
            request.path()
        );
        let expect = Expect::of(c);
        converge(self.env, &described, || async {
            let addr = self.mesh_destination(&url_host, &client_ns).await?;
            let req = h::build(&request, &BTreeMap::new(), &host_header)?;
            let reply = h::send(addr, &Transport::HttpFrom(client_ip), req).await?;
            h::compare_mesh(&expect, &reply)
        })
        .await
    }

    /// A gRPC case (`grpc.MakeRequestAndExpectEventuallyConsistentResponse`): the method is called over
    /// plaintext HTTP/2 until the answer passes three times in a row; an INTERNAL status drops the
    /// connection, as the suite's client does.
    async fn grpc_case(&mut self, c: &Case) -> Result<(), String> {
        let method = c.grpc_method()?;
        let (addr, _) = self.target(&c.target, "http").await?;
        let metadata = c.request_metadata.clone().unwrap_or_default();
        let authority = match metadata.authority.as_str() {
            "" => None,
            a => Some(self.resolve(a)?),
        };
        let request = format!(
            "gRPC {} to {addr} (authority {}, metadata {:?})",
            grpc_echo::full_method(method),
            authority.as_deref().unwrap_or("the address"),
            metadata.metadata
        );
        let dial = grpc_echo::Dial {
            authority,
            tls: None,
        };
        let channel = std::cell::RefCell::new(grpc_echo::channel(addr, &dial)?);
        converge(self.env, &request, || async {
            let current = channel.borrow().clone();
            let reply = grpc_echo::call(current, method, &metadata.metadata, h::REQUEST_TIMEOUT)
                .await
                .map(tonic::Response::into_inner);
            if matches!(&reply, Err(s) if s.code() == tonic::Code::Internal) {
                *channel.borrow_mut() = grpc_echo::channel(addr, &dial)?;
            }
            grpc_compare(c, method, reply)
        })
        .await
    }

    async fn other(&mut self, o: &OtherCheck) -> Result<(), String> {
        match o {
            OtherCheck::WeightedDistribution {
                target,
                request,
                total_requests,
                concurrent_requests,
                tolerance_percentage,
                expected_weights,
                ..
            } => {
                let (addr, default_host) = self.target(target, "http").await?;
                let host = self.request_host(request, default_host)?;
                let Target::Gateway { namespace, .. } = target else {
                    return Err("a weighted distribution through a mesh pod".into());
                };
                let response = crate::case::Response::default();
                let expect = Expect {
                    request,
                    expected_request: None,
                    redirect: None,
                    response: &response,
                    backend: "",
                    namespace,
                };
                let shape = Distribution {
                    addr,
                    host: &host,
                    total: *total_requests,
                    concurrency: (*concurrent_requests).max(1),
                    weights: expected_weights,
                    tolerance: *tolerance_percentage,
                };
                let mut last = String::new();
                for _ in 0..DISTRIBUTION_TRIES {
                    match distribution_once(&expect, &shape).await {
                        Ok(()) => return Ok(()),
                        Err(e) => last = e,
                    }
                    // As after a failed attempt at convergence: a node restarting under faults
                    // refuses connections for a moment, and ten tries would not outlast it.
                    self.env.check_alive()?;
                    tokio::time::sleep(POLL).await;
                }
                Err(format!(
                    "{DISTRIBUTION_TRIES} tries of {total_requests} requests to {addr}: {last}"
                ))
            }
            OtherCheck::WebSocketEcho {
                target,
                origin,
                frames,
                ..
            } => self.websocket_echo(target, origin, frames).await,
            OtherCheck::UdpDnsQuery { .. } => {
                Err("the harness cannot perform check UDPDNSQuery".into())
            }
        }
    }

    /// `WebSocketEcho`: each frame sent through the Gateway comes back the same, three times in a row.
    async fn websocket_echo(
        &self,
        target: &Target,
        origin: &str,
        frames: &[crate::case::Frame],
    ) -> Result<(), String> {
        use gw_testkit::echo::ws;
        let (addr, _) = self.target(target, "http").await?;
        let request = format!("WebSocket ws://{addr}/ws");
        converge(self.env, &request, || async {
            let mut io = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let exchange = async {
                ws::client_handshake(&mut io, &addr.to_string(), "/ws", Some(origin)).await?;
                for f in frames {
                    let (op, data) = match &f.send {
                        Payload::Text(t) => (ws::TEXT, t.as_bytes().to_vec()),
                        Payload::Binary(b) => (ws::BINARY, b.clone()),
                    };
                    ws::write_frame(&mut io, op, &data, Some([0x5a, 0x17, 0x2b, 0x9c]))
                        .await
                        .map_err(|e| format!("sending a frame: {e}"))?;
                    if f.expect_echo {
                        let got = ws::read_frame(&mut io)
                            .await
                            .map_err(|e| format!("reading the echo: {e}"))?;
                        if got != (op, data.clone()) {
                            return Err(format!(
                                "sent {data:?} (opcode {op}), got {:?} (opcode {})",
                                got.1, got.0
                            ));
                        }
                    }
                }
                Ok(())
            };
            tokio::time::timeout(h::REQUEST_TIMEOUT, exchange)
                .await
                .map_err(|_| "no answer within 10s".to_string())?
        })
        .await
    }

    async fn action(&mut self, a: &Action) -> Result<(), String> {
        match a {
            Action::RecordGeneration { resource, .. } => {
                let key = key_of(resource)?;
                let g = generation(&self.fetch(&key).await?);
                self.recorded.insert(key, g);
                Ok(())
            }
            Action::Patch(p) => {
                let key = key_of(&p.resource)?;
                let mut obj = self.fetch(&key).await?;
                mutate(&mut obj, p, &Env::unusable_address().to_string())?;
                // A merge patch: no resourceVersion precondition, status untouched.
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
                self.env
                    .apply_docs(vec![obj], "conformance patch")
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("patching {key}: {e}"))
            }
            Action::Delete { resource } => self
                .env
                .delete(vec![object_ref(&key_of(resource)?)])
                .await
                .map_err(|e| e.to_string()),
            Action::SetupEndpointSlices {
                namespace,
                endpoint_slices,
                ..
            } => {
                self.setup_endpoint_slices(namespace, &a.deployment()?, endpoint_slices)
                    .await
            }
        }
    }

    /// Fills the listed EndpointSlices with the IPs of the Deployment's pods of the slice's family.
    async fn setup_endpoint_slices(
        &mut self,
        ns: &str,
        deployment: &str,
        slices: &[String],
    ) -> Result<(), String> {
        let owner = format!("{ns}/{deployment}");
        let pods: Vec<(String, std::net::Ipv4Addr)> = self
            .env
            .pods
            .iter()
            .filter(|p| p.owner == owner)
            .map(|p| (p.name.clone(), p.ip))
            .collect();
        if pods.is_empty() {
            return Err(format!("no pods of Deployment {owner}"));
        }
        let mut docs = Vec::new();
        for name in slices {
            let mut slice = self
                .fetch(&ObjectKey::new(
                    "discovery.k8s.io",
                    "EndpointSlice",
                    ns,
                    name,
                ))
                .await?;
            // The pods are IPv4 only: IPv6 slices stay as they are.
            if slice["addressType"] != "IPv4" {
                continue;
            }
            slice["endpoints"] = pods
                .iter()
                .map(|(pod, ip)| json!({"addresses": [ip.to_string()], "conditions": {"ready": true, "serving": true, "terminating": false},
                                        "nodeName": "gw-conformance", "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}}))
                .collect();
            if let Some(m) = slice["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            docs.push(slice);
        }
        if docs.is_empty() {
            return Ok(());
        }
        self.env
            .apply_docs(docs, "conformance SetupEndpointSlices")
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// `AwaitConvergence`: `attempt` must pass three times in a row within 30 s; one second's pause after
/// each failure. The error names the request and the last reason.
async fn converge<F, Fut>(env: &Env, request: &str, mut attempt: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + MAX_TIME_TO_CONSISTENCY;
    let mut successes = 0;
    let mut last = String::from("no attempt finished");
    while Instant::now() < deadline {
        env.check_alive()?;
        match tokio::time::timeout_at(deadline.into(), attempt()).await {
            Ok(Ok(())) => {
                successes += 1;
                if successes >= REQUIRED_CONSECUTIVE_SUCCESSES {
                    return Ok(());
                }
                continue;
            }
            Ok(Err(e)) => last = e,
            Err(_) => break,
        }
        successes = 0;
        tokio::time::sleep(POLL).await;
    }
    Err(format!(
        "{request}: {last} (not {REQUIRED_CONSECUTIVE_SUCCESSES} passes in a row within {}s)",
        MAX_TIME_TO_CONSISTENCY.as_secs()
    ))
}

/// Whether a gRPC answer is what the case expects (`grpc.compareResponse`): the status (OK when the case
/// names none), and for OK the echoed method, the namespace when one is expected, and the pod's prefix.
fn grpc_compare(
    c: &Case,
    method: &str,
    reply: Result<grpc_echo::pb::EchoResponse, tonic::Status>,
) -> Result<(), String> {
    let want = tonic::Code::from_i32(c.response.code_number.unwrap_or(0) as i32);
    let reply = match reply {
        Ok(r) if want == tonic::Code::Ok => r,
        Ok(_) => return Err(format!("expected status {want:?}, got OK")),
        Err(s) if s.code() == want => return Ok(()),
        Err(s) => {
            return Err(format!(
                "expected status {want:?}, got {:?}: {}",
                s.code(),
                s.message()
            ));
        }
    };
    let a = reply.assertions.unwrap_or_default();
    let context = a.context.unwrap_or_default();
    let full = grpc_echo::full_method(method);
    if a.fully_qualified_method != full {
        return Err(format!(
            "expected the backend to see {full}, it saw {}",
            a.fully_qualified_method
        ));
    }
    if !c.namespace.is_empty() && context.namespace != c.namespace {
        return Err(format!(
            "expected namespace {}, got {}",
            c.namespace, context.namespace
        ));
    }
    if !context.pod.starts_with(&c.backend) {
        return Err(format!(
            "expected a pod named {}*, got {}",
            c.backend, context.pod
        ));
    }
    Ok(())
}

/// The shape of one weighted-distribution round.
struct Distribution<'a> {
    addr: SocketAddr,
    host: &'a str,
    total: usize,
    concurrency: usize,
    weights: &'a BTreeMap<String, f64>,
    tolerance: f64,
}

/// One round of the weighted-distribution check.
async fn distribution_once(expect: &Expect<'_>, d: &Distribution<'_>) -> Result<(), String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || async {
        let mut pods = Vec::new();
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < d.total {
            let req = h::build(expect.request, &BTreeMap::new(), d.host)?;
            let reply = h::send(d.addr, &Transport::Http, req).await?;
            h::compare(expect, &reply, "http", d.host)?;
            let echo: Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
            pods.push(echo["pod"].as_str().unwrap_or("").to_string());
        }
        Ok::<_, String>(pods)
    };
    let results = futures::future::join_all((0..d.concurrency).map(|_| worker())).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for pods in results {
        for pod in pods? {
            let backend = d
                .weights
                .keys()
                .find(|b| pod.starts_with(b.as_str()))
                .ok_or_else(|| format!("answered by unexpected pod {pod:?}"))?;
            *counts.entry(backend.as_str()).or_default() += 1;
        }
    }
    let expected_backends = d.weights.values().filter(|w| **w > 0.0).count();
    if counts.len() != expected_backends {
        return Err(format!(
            "{} backends answered, expected {expected_backends}: {counts:?}",
            counts.len()
        ));
    }
    for (b, w) in d.weights {
        let share = *counts.get(b.as_str()).unwrap_or(&0) as f64 / d.total as f64;
        if (share - w).abs() > d.tolerance {
            return Err(format!(
                "{b} got {:.1}% of requests, expected {:.1}% ± {:.1}%: {counts:?}",
                share * 100.0,
                w * 100.0,
                d.tolerance * 100.0
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parents(v: Value) -> Vec<ParentStatus> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn route_parents_compare_like_the_suite() {
        let route = json!({"metadata": {"generation": 2}, "status": {"parents": [{
            "controllerName": "c", "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g", "sectionName": "http"},
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 2}]}]}});
        let want = parents(
            json!([{"controllerName": "$CONTROLLER_NAME", "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g", "namespace": "ns"},
                    "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}]),
        );
        assert!(
            route_parents_match(&route, &want, false, "c").is_ok(),
            "a missing actual namespace is fine unless required"
        );
        assert!(
            route_parents_match(&route, &want, true, "c")
                .unwrap_err()
                .contains("namespace")
        );
        assert!(
            route_parents_match(&route, &want, false, "other")
                .unwrap_err()
                .contains("controllerName")
        );
        let mut stale = route.clone();
        stale["metadata"]["generation"] = json!(3);
        assert!(
            route_parents_match(&stale, &want, false, "c")
                .unwrap_err()
                .contains("generation 3")
        );
        let mut rejected = want.clone();
        rejected[0].conditions[0].status = "False".into();
        assert!(
            route_parents_match(&route, &rejected, false, "c")
                .unwrap_err()
                .contains("lacks")
        );
    }

    #[test]
    fn listeners_compare_like_the_suite() {
        let gw = json!({"status": {"listeners": [{"name": "http", "attachedRoutes": 1, "supportedKinds": [{"kind": "HTTPRoute"}],
                                                  "conditions": [{"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs"}]}]}});
        let want = |v: Value| -> Vec<ListenerStatus> { serde_json::from_value(v).unwrap() };
        let ok = json!([{"name": "http", "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}], "attachedRoutes": 1,
                         "conditions": [{"type": "ResolvedRefs", "status": "True", "reason": ""}]}]);
        assert!(listeners_match(&gw, &want(ok.clone())).is_ok());
        let mut none = ok.clone();
        none[0]["supportedKinds"] = json!([]);
        assert!(
            listeners_match(&gw, &want(none))
                .unwrap_err()
                .contains("should be empty")
        );
        let mut two = ok.clone();
        two[0]["attachedRoutes"] = json!(2);
        assert!(
            listeners_match(&gw, &want(two))
                .unwrap_err()
                .contains("attachedRoutes")
        );
    }

    fn patch(v: Value) -> Patch {
        let mut v = v;
        v["resource"] = json!({"kind": "Gateway", "name": "g"});
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn patches_do_exactly_what_their_fields_say() {
        let gw = json!({"spec": {"listeners": [{"name": "http"}, {"name": "https"}, {"name": "tcp"}],
                                 "addresses": [{"type": "test/fake", "value": "x"}, {"value": "198.51.100.7"}, {"value": "127.0.0.9"}]}});
        let names = |v: &Value| {
            v["spec"]["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let values = |v: &Value| {
            v["spec"]["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["value"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let unusable = "198.51.100.7";
        let mut g = gw.clone();
        mutate(
            &mut g,
            &patch(json!({"keepListenersNamed": ["tcp", "http"]})),
            unusable,
        )
        .unwrap();
        assert_eq!(names(&g), ["tcp", "http"]);
        let mut g = gw.clone();
        mutate(
            &mut g,
            &patch(json!({"appendListener": {"name": "x"}})),
            unusable,
        )
        .unwrap();
        assert_eq!(names(&g), ["http", "https", "tcp", "x"]);
        let mut g = gw.clone();
        mutate(&mut g, &patch(json!({"removeAddressAt": 0})), unusable).unwrap();
        assert_eq!(values(&g), ["198.51.100.7", "127.0.0.9"]);
        mutate(
            &mut g,
            &patch(json!({"removeUnusableAddress": true})),
            unusable,
        )
        .unwrap();
        assert_eq!(values(&g), ["127.0.0.9"]);
        let mut g = gw.clone();
        mutate(
            &mut g,
            &patch(json!({"set": {"spec.listeners[1].name": "tls"}})),
            unusable,
        )
        .unwrap();
        assert_eq!(names(&g), ["http", "tls", "tcp"]);
        // A description alone is no mutation, and no mutation is a malformed case.
        let e = mutate(
            &mut gw.clone(),
            &patch(json!({"description": "remove the listener named https"})),
            unusable,
        )
        .unwrap_err();
        assert!(e.contains("names no mutation"), "{e}");
        assert!(
            mutate(
                &mut gw.clone(),
                &patch(json!({"removeAddressAt": 7})),
                unusable
            )
            .unwrap_err()
            .contains("removeAddressAt")
        );
        assert!(
            mutate(
                &mut gw.clone(),
                &patch(json!({"keepListenersNamed": ["nope"]})),
                unusable
            )
            .unwrap_err()
            .contains("nope")
        );
    }

    #[test]
    fn patch_paths() {
        let mut v = json!({"spec": {"rules": [{"backendRefs": [{"name": "a"}]}]}});
        set_path(&mut v, "spec.rules[0].backendRefs[0].name", json!("b")).unwrap();
        assert_eq!(v["spec"]["rules"][0]["backendRefs"][0]["name"], "b");
        assert!(set_path(&mut v, "spec.rules[3].x", json!(1)).is_err());
    }
}
