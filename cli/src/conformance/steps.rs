//! One conformance test's steps — status checks, requests, actions and other traffic checks — executed
//! the way `conformance/README.md` of the shared suite says the Go helpers judge them: same conditions,
//! same timeouts, same poll interval, same retry rules, and no more.

use super::env::{Env, object_ref};
use super::http::{self as h, Transport};
use gw_model::{ObjectKey, kinds};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_secs(1);
const NAMESPACES_READY: Duration = Duration::from_secs(300);
const GATEWAY_ADDRESS: Duration = Duration::from_secs(180);
const GATEWAY_CONDITION: Duration = Duration::from_secs(180);
const GATEWAYCLASS_ACCEPTED: Duration = Duration::from_secs(180);
const ROUTE_PARENTS: Duration = Duration::from_secs(60);
const ROUTE_CONDITION: Duration = Duration::from_secs(60);
const ROUTE_NO_PARENTS: Duration = Duration::from_secs(60);
const LISTENERS: Duration = Duration::from_secs(60);
const LATEST_GENERATION: Duration = Duration::from_secs(60);
const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
const REQUIRED_CONSECUTIVE_SUCCESSES: u32 = 3;
const MIRROR_TIMEOUT: Duration = Duration::from_secs(60);

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

/// The store key of a step's `resource` ({apiVersion?, kind, namespace?, name}).
fn key_of(resource: &Value) -> Result<ObjectKey, String> {
    let kind = resource["kind"].as_str().ok_or("a resource without kind")?;
    let info = match resource["apiVersion"].as_str() {
        Some(av) => kinds::by_group_kind(kinds::split_api_version(av).0, kind),
        None => kinds::resolve(kind),
    }
    .ok_or_else(|| format!("kind {kind} is not one gw stores"))?;
    let ns = if info.namespaced {
        resource["namespace"].as_str().unwrap_or("default")
    } else {
        ""
    };
    Ok(ObjectKey::new(
        info.group,
        info.kind,
        ns,
        resource["name"].as_str().ok_or("a resource without name")?,
    ))
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
fn has_condition(list: &Value, want: &Value) -> bool {
    let field = |k: &str| want[k].as_str().unwrap_or("");
    list.as_array().into_iter().flatten().any(|c| {
        c["type"] == field("type")
            && (field("status").is_empty() || c["status"] == field("status"))
            && (field("reason").is_empty() || c["reason"] == field("reason"))
    })
}

/// `Err` naming the first of `wants` that `list` lacks.
fn missing_condition(list: &Value, wants: &Value) -> Result<(), String> {
    match wants
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| !has_condition(list, c))
    {
        Some(c) => Err(format!(
            "lacks {} (has {})",
            describe(c),
            show_conditions(list)
        )),
        None => Ok(()),
    }
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
    format!("{}", v).chars().take(300).collect()
}

/// A test in progress: its environment and what its actions recorded.
pub struct Run<'a> {
    pub env: &'a mut Env,
    recorded: HashMap<ObjectKey, i64>,
    pub steps: usize,
}

impl<'a> Run<'a> {
    pub fn new(env: &'a mut Env) -> Run<'a> {
        Run {
            env,
            recorded: HashMap::new(),
            steps: 0,
        }
    }

    async fn fetch(&self, key: &ObjectKey) -> Result<Value, String> {
        self.env
            .get(key)
            .await
            .map_err(|e| format!("reading {key}: {e}"))?
            .ok_or_else(|| format!("{key} does not exist"))
    }

    /// Executes one step (an entry of status_checks, cases, actions or other_checks).
    pub async fn step(&mut self, s: &Value) -> Result<(), StepError> {
        self.steps += 1;
        let name = step_name(s);
        let r = if s.get("action").is_some() {
            self.action(s).await
        } else if s.get("client").is_some() {
            self.case(s).await
        } else {
            self.check(s).await
        };
        r.map_err(|why| StepError { step: name, why })
    }

    async fn check(&mut self, s: &Value) -> Result<(), String> {
        let check = s["check"].as_str().unwrap_or("");
        let res = &s["resource"];
        match check {
            "NamespacesReady" => self.namespaces_ready(&s["namespaces"]).await,
            "GatewayHasAddress" => {
                self.await_gateway(&key_of(res)?, GATEWAY_ADDRESS, |gw| {
                    match gateway_address(gw) {
                        Some(_) => Poll::Done,
                        None => Poll::Retry(format!(
                            "status.addresses has no IPAddress or Hostname: {}",
                            describe(&gw["status"]["addresses"])
                        )),
                    }
                })
                .await
            }
            "RouteParents" => {
                let key = key_of(res)?;
                let required = s["namespaceRequired"].as_bool().unwrap_or(false);
                let expected = self.substitute(&s["parents"]);
                poll(self.env, ROUTE_PARENTS, || async {
                    let route = self.fetch(&key).await?;
                    Ok(match route_parents_match(&route, &expected, required) {
                        Ok(()) => Poll::Done,
                        Err(e) => Poll::Retry(e),
                    })
                })
                .await
            }
            "AllListenersHaveConditions" => {
                let key = key_of(res)?;
                poll(self.env, LISTENERS, || async {
                    let gw = self.fetch(&key).await?;
                    for l in gw["status"]["listeners"].as_array().into_iter().flatten() {
                        if let Err(m) = missing_condition(&l["conditions"], &s["conditions"]) {
                            return Ok(Poll::Retry(format!("listener {}: {m}", l["name"])));
                        }
                    }
                    Ok(Poll::Done)
                })
                .await
            }
            "RouteCondition" => {
                let key = key_of(res)?;
                let (gw_ns, gw_name) = (
                    s["parentGateway"]["namespace"].as_str().unwrap_or(""),
                    s["parentGateway"]["name"].as_str().unwrap_or(""),
                );
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
                        if pr["name"] == gw_name
                            && (pr["namespace"].is_null() || pr["namespace"] == gw_ns)
                            && has_condition(&p["conditions"], &s["condition"])
                        {
                            found = true;
                        }
                    }
                    Ok(if found {
                        Poll::Done
                    } else {
                        Poll::Retry(format!(
                            "no parent {gw_ns}/{gw_name} with {}; parents: {}",
                            describe(&s["condition"]),
                            describe(&route["status"]["parents"])
                        ))
                    })
                })
                .await
            }
            "RouteNoAcceptedParents" => {
                let key = key_of(res)?;
                let empty_before = std::cell::Cell::new(false);
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
                            && has_condition(
                                &p["conditions"],
                                &json!({"type": "Accepted", "status": "False"}),
                            ) =>
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
            "GatewayZeroRoutes" => {
                self.await_gateway(
                    &key_of(res)?,
                    LISTENERS,
                    |gw| match gw["status"]["listeners"]
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
                    },
                )
                .await
            }
            "GatewayListenersStatus" => {
                self.await_gateway(&key_of(res)?, LISTENERS, |gw| {
                    match listeners_match(gw, &s["listeners"]) {
                        Ok(()) => Poll::Done,
                        Err(e) => Poll::Retry(e),
                    }
                })
                .await
            }
            // The Go helper fails at once when the conditions are not at the latest generation.
            "GatewayCondition" => {
                self.await_condition(&key_of(res)?, &s["condition"], GATEWAY_CONDITION, true)
                    .await
            }
            "GatewayLatestConditions" => {
                self.await_gateway(&key_of(res)?, LATEST_GENERATION, |_| Poll::Done)
                    .await
            }
            "RouteLatestConditions" => {
                let route = self.fetch(&key_of(res)?).await?;
                for p in route["status"]["parents"].as_array().into_iter().flatten() {
                    latest(&route, &p["conditions"])?;
                }
                Ok(())
            }
            "GatewayClassLatestConditions" => {
                let gc = self.fetch(&key_of(res)?).await?;
                latest(&gc, &gc["status"]["conditions"])
            }
            "GatewayClassAccepted" => {
                self.await_condition(&key_of(res)?, &s["condition"], GATEWAYCLASS_ACCEPTED, false)
                    .await
            }
            "GenerationChanged" => {
                let key = key_of(res)?;
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
            "SpecAddresses" => {
                let gw = self.fetch(&key_of(res)?).await?;
                let n = gw["spec"]["addresses"].as_array().map_or(0, Vec::len);
                let want = s["count"].as_u64().unwrap_or(0) as usize;
                if n == want {
                    Ok(())
                } else {
                    Err(format!("spec.addresses has {n} entries, expected {want}"))
                }
            }
            "StatusAddresses" => {
                let gw = self.fetch(&key_of(res)?).await?;
                let addrs = gw["status"]["addresses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let usable = Env::usable_address().to_string();
                let has = |v: &str| addrs.iter().any(|a| a["value"] == v);
                if !has(&usable) {
                    return Err(format!(
                        "status.addresses {} lacks the usable address {usable}",
                        describe(&gw["status"]["addresses"])
                    ));
                }
                for bad in [
                    Env::unusable_address().to_string(),
                    "fake address teehee!".to_string(),
                ] {
                    if has(&bad) {
                        return Err(format!(
                            "status.addresses {} holds {bad}",
                            describe(&gw["status"]["addresses"])
                        ));
                    }
                }
                let t = addrs
                    .iter()
                    .find(|a| a["value"] == usable.as_str())
                    .map(|a| a["type"].as_str().unwrap_or("IPAddress"));
                if s["typeMustEqualUsableAddressType"] == true && t != Some("IPAddress") {
                    return Err(format!(
                        "the usable address has type {t:?}, expected IPAddress"
                    ));
                }
                Ok(())
            }
            "SpecListenerCount" => {
                let gw = self.fetch(&key_of(res)?).await?;
                let n = gw["spec"]["listeners"].as_array().map_or(0, Vec::len);
                let want = s["count"]
                    .as_u64()
                    .ok_or("SpecListenerCount without count")? as usize;
                if n == want {
                    Ok(())
                } else {
                    Err(format!("spec.listeners has {n} entries, expected {want}"))
                }
            }
            "RouteHostnameCount" => {
                let route = self.fetch(&key_of(res)?).await?;
                let n = route["spec"]["hostnames"].as_array().map_or(0, Vec::len);
                let want = s["count"].as_u64().unwrap_or(0) as usize;
                if n == want {
                    Ok(())
                } else {
                    Err(format!("spec.hostnames has {n} entries, expected {want}"))
                }
            }
            "WeightedDistribution" => self.weighted_distribution(s).await,
            "WebSocketEcho" => self.websocket_echo(s).await,
            other => Err(format!("the harness cannot perform check {other:?}")),
        }
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

/// RouteParents as `parentRefsMatch` judges it (sectionName is not compared).
fn route_parents_match(
    route: &Value,
    expected: &Value,
    namespace_required: bool,
) -> Result<(), String> {
    let actual = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let expected = expected.as_array().cloned().unwrap_or_default();
    if actual.len() != expected.len() {
        return Err(format!(
            "expected {} parents, status.parents is {}",
            expected.len(),
            describe(&route["status"]["parents"])
        ));
    }
    let opt = |v: &Value, k: &str| v.get(k).filter(|x| !x.is_null()).cloned();
    for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
        let (er, ar) = (&e["parentRef"], &a["parentRef"]);
        if e["controllerName"] != a["controllerName"] {
            return Err(format!(
                "parent {i}: controllerName {} (expected {})",
                a["controllerName"], e["controllerName"]
            ));
        }
        for field in ["group", "kind", "name"] {
            if opt(er, field) != opt(ar, field) {
                return Err(format!(
                    "parent {i}: parentRef.{field} {} (expected {})",
                    ar[field], er[field]
                ));
            }
        }
        if opt(er, "namespace") != opt(ar, "namespace")
            && (namespace_required || opt(ar, "namespace").is_some())
        {
            return Err(format!(
                "parent {i}: parentRef.namespace {} (expected {})",
                ar["namespace"], er["namespace"]
            ));
        }
        missing_condition(&a["conditions"], &e["conditions"])
            .map_err(|m| format!("parent {i}: {m}"))?;
        latest(route, &a["conditions"]).map_err(|e| format!("parent {i}: {e}"))?;
    }
    Ok(())
}

/// GatewayListenersStatus as `GatewayStatusMustHaveListeners` (listenersMatch) judges it.
fn listeners_match(gw: &Value, expected: &Value) -> Result<(), String> {
    let actual = gw["status"]["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let expected = expected.as_array().cloned().unwrap_or_default();
    if actual.len() != expected.len() {
        return Err(format!(
            "expected {} listeners, status.listeners is {}",
            expected.len(),
            describe(&gw["status"]["listeners"])
        ));
    }
    let group = |k: &Value| {
        k["group"]
            .as_str()
            .unwrap_or(kinds::GATEWAY_GROUP)
            .to_string()
    };
    for e in &expected {
        let name = e["name"].as_str().unwrap_or("");
        let a = actual
            .iter()
            .find(|a| a["name"] == name)
            .ok_or_else(|| format!("no status for listener {name}"))?;
        let want_kinds = e["supportedKinds"].as_array().cloned().unwrap_or_default();
        let got_kinds = a["supportedKinds"].as_array().cloned().unwrap_or_default();
        if want_kinds.is_empty() && !got_kinds.is_empty() {
            return Err(format!(
                "listener {name}: supportedKinds should be empty, is {}",
                describe(&a["supportedKinds"])
            ));
        }
        for k in &want_kinds {
            if !got_kinds
                .iter()
                .any(|g| group(g) == group(k) && g["kind"] == k["kind"])
            {
                return Err(format!(
                    "listener {name}: supportedKinds {} lacks {}",
                    describe(&a["supportedKinds"]),
                    describe(k)
                ));
            }
        }
        if a["attachedRoutes"] != e["attachedRoutes"] {
            return Err(format!(
                "listener {name}: attachedRoutes {} (expected {})",
                a["attachedRoutes"], e["attachedRoutes"]
            ));
        }
        missing_condition(&a["conditions"], &e["conditions"])
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

/// Applies a Patch action's mutation, as its fields (or, failing those, its description) state it.
fn mutate(obj: &mut Value, a: &Value) -> Result<(), String> {
    let mut done = false;
    if let Some(p) = a
        .get("mergePatch")
        .or(a.get("patch"))
        .filter(|p| p.is_object())
    {
        merge_patch(obj, p);
        done = true;
    }
    for (path, v) in a["set"].as_object().into_iter().flatten() {
        set_path(obj, path, v.clone())?;
        done = true;
    }
    if a["appendListener"].is_object() {
        obj["spec"]["listeners"]
            .as_array_mut()
            .ok_or("no spec.listeners")?
            .push(a["appendListener"].clone());
        done = true;
    }
    let names = |k: &str| -> Vec<String> {
        match &a[k] {
            Value::String(s) => vec![s.clone()],
            Value::Array(v) => v
                .iter()
                .filter_map(|x| x.as_str().or(x["name"].as_str()).map(str::to_string))
                .collect(),
            Value::Object(o) => o
                .get("name")
                .and_then(|n| n.as_str())
                .map(str::to_string)
                .into_iter()
                .collect(),
            _ => vec![],
        }
    };
    let remove: Vec<String> = ["removeListener", "removeListeners"]
        .iter()
        .flat_map(|k| names(k))
        .collect();
    let keep: Vec<String> = ["keepListener", "keepListeners"]
        .iter()
        .flat_map(|k| names(k))
        .collect();
    if !remove.is_empty() || !keep.is_empty() {
        let ls = obj["spec"]["listeners"]
            .as_array_mut()
            .ok_or("no spec.listeners")?;
        ls.retain(|l| {
            let n = l["name"].as_str().unwrap_or("");
            !remove.iter().any(|r| r == n) && (keep.is_empty() || keep.iter().any(|k| k == n))
        });
        done = true;
    }
    if done {
        return Ok(());
    }
    let d = a["description"].as_str().unwrap_or("").to_string();
    let lower = d.to_ascii_lowercase();
    if lower.contains("remove the invalid address") {
        let addrs = obj["spec"]["addresses"]
            .as_array_mut()
            .ok_or("no spec.addresses")?;
        addrs.retain(|x| {
            matches!(
                x["type"].as_str().unwrap_or("IPAddress"),
                "IPAddress" | "Hostname" | "NamedAddress"
            )
        });
        return Ok(());
    }
    if lower.contains("remove the unusable address") {
        let bad = Env::unusable_address().to_string();
        obj["spec"]["addresses"]
            .as_array_mut()
            .ok_or("no spec.addresses")?
            .retain(|x| x["value"] != bad.as_str());
        return Ok(());
    }
    // "remove the listener named X", "keep only listener X": the Gateway's own listener names say which.
    if lower.contains("listener") && (lower.contains("remove") || lower.contains("keep")) {
        let ls = obj["spec"]["listeners"]
            .as_array_mut()
            .ok_or("no spec.listeners")?;
        let mentioned = |l: &Value| {
            let n = l["name"].as_str().unwrap_or("");
            !n.is_empty()
                && d.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .any(|w| w == n)
        };
        let hits = ls.iter().filter(|l| mentioned(l)).count();
        if hits > 0 && hits < ls.len() {
            let keep_mentioned = lower.contains("keep") && !lower.contains("remove");
            ls.retain(|l| mentioned(l) == keep_mentioned);
            return Ok(());
        }
    }
    Err(format!("the harness cannot perform the patch {d:?}"))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A step's name in the summary: the case name, or what the check or action is about.
fn step_name(s: &Value) -> String {
    let res = &s["resource"];
    let what = match (
        s["action"].as_str(),
        s["check"].as_str(),
        s["name"].as_str(),
    ) {
        (Some(a), _, _) => format!(
            "action {a} {} {}",
            res["kind"].as_str().unwrap_or(""),
            res["name"].as_str().unwrap_or("")
        ),
        (_, _, Some(n)) => format!("request {n:?}"),
        (_, Some(c), _) => format!(
            "check {c} {} {}",
            res["kind"].as_str().unwrap_or(""),
            res["name"].as_str().unwrap_or("")
        ),
        _ => "an unknown step".into(),
    };
    let what = what.trim_end().to_string();
    match s["subtest"].as_str() {
        Some(t) => format!("[{t}] {what}"),
        None => what,
    }
}

impl Run<'_> {
    /// `$CONTROLLER_NAME` replaced by the suite's controller name, everywhere in `v`.
    fn substitute(&self, v: &Value) -> Value {
        match v {
            Value::String(s) if s == "$CONTROLLER_NAME" => json!(self.env.controller),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.substitute(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| (k.clone(), self.substitute(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

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
    async fn await_condition(
        &self,
        key: &ObjectKey,
        want: &Value,
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
                    describe(want),
                    show_conditions(conds)
                ))
            })
        })
        .await
    }

    /// `NamespacesMustBeReady`: the Gateways of these namespaces accepted and programmed at their
    /// generation (pods are ready once started).
    pub async fn namespaces_ready(&self, namespaces: &Value) -> Result<(), String> {
        let namespaces: Vec<&str> = namespaces
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        poll(self.env, NAMESPACES_READY, || async {
            for ns in &namespaces {
                let gws = self
                    .env
                    .list(kinds::GATEWAY_GROUP, "Gateway", ns)
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
                        if !has_condition(conds, &json!({"type": t, "status": "True"})) {
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

    /// The address (and `Host` the suite would send by default) of a case's `target`.
    async fn target(&self, t: &Value, scheme: &str) -> Result<(SocketAddr, String), String> {
        if t["kind"] != "Gateway" {
            return Err(format!(
                "the harness cannot send requests to a {} target",
                t["kind"]
            ));
        }
        let gw = self.fetch(&key_of(t)?).await?;
        let ip = gateway_address(&gw).ok_or("the Gateway has no address in its status")?;
        let listeners = gw["spec"]["listeners"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let listener = match t["listener"].as_str() {
            Some(name) => listeners
                .iter()
                .find(|l| l["name"] == name)
                .ok_or_else(|| format!("the Gateway has no listener {name}"))?,
            None => listeners.first().ok_or("the Gateway has no listeners")?,
        };
        let port = listener["port"].as_u64().ok_or("a listener without port")? as u16;
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

    /// The `tls.crt` and `tls.key` of a TLS Secret.
    async fn secret_pair(&self, r: &Value) -> Result<(Vec<u8>, Vec<u8>), String> {
        let key = ObjectKey::new(
            "",
            "Secret",
            r["namespace"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
        );
        let s = self.fetch(&key).await?;
        let field = |f: &str| -> Result<Vec<u8>, String> {
            let b = s["data"][f]
                .as_str()
                .ok_or_else(|| format!("{key} has no {f}"))?;
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b)
                .map_err(|e| format!("{key} {f}: {e}"))
        };
        Ok((field("tls.crt")?, field("tls.key")?))
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
    async fn case(&mut self, c: &Value) -> Result<(), String> {
        let (scheme, transport) = match c["client"].as_str().unwrap_or("") {
            "http" => ("http", Transport::Http),
            "h2c-prior-knowledge" => ("http", Transport::H2c),
            "https" => {
                let tls = &c["tls"];
                let (crt, key) = self.secret_pair(&tls["certSecret"]).await?;
                (
                    "https",
                    Transport::Https {
                        server_name: tls["serverName"].as_str().unwrap_or("").into(),
                        root_pem: crt.clone(),
                        client: Some((crt, key)),
                    },
                )
            }
            other => return Err(format!("the harness has no {other:?} client")),
        };
        let (addr, default_host) = self.target(&c["target"], scheme).await?;
        let host = c["Request"]["Host"]
            .as_str()
            .filter(|h| !h.is_empty())
            .unwrap_or(&default_host)
            .to_string();
        let request = format!(
            "{} {scheme}://{addr}{} (Host: {host})",
            c["Request"]["Method"]
                .as_str()
                .filter(|m| !m.is_empty())
                .unwrap_or("GET"),
            c["Request"]["Path"].as_str().unwrap_or("/")
        );
        let mirrors: Vec<(String, String)> = c["MirroredTo"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["Namespace"].as_str().unwrap_or("").to_string(),
                    m["Name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let seen_before: Vec<usize> = mirrors
            .iter()
            .map(|(ns, n)| self.seen_by(ns, n).len())
            .collect();
        converge(self.env, &request, || async {
            let req = h::build(c, &default_host)?;
            let reply = h::send(addr, &transport, req).await?;
            h::compare(c, &reply, scheme, &host)
        })
        .await?;
        if c["ExpectMirroredRequest"] == true {
            let path = c["Request"]["Path"].as_str().unwrap_or("/");
            let deadline = Instant::now() + MIRROR_TIMEOUT;
            for ((ns, name), before) in mirrors.iter().zip(seen_before) {
                while !self
                    .seen_by(ns, name)
                    .iter()
                    .skip(before)
                    .any(|u| u == path)
                {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "{request}: no mirrored copy reached {ns}/{name} within {}s",
                            MIRROR_TIMEOUT.as_secs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(())
    }

    /// `WeightedDistribution`: the share of each backend within the tolerance, in one of ten tries.
    async fn weighted_distribution(&self, s: &Value) -> Result<(), String> {
        let (addr, host) = self.target(&s["target"], "http").await?;
        let total = s["totalRequests"].as_u64().unwrap_or(500) as usize;
        let concurrency = s["concurrentRequests"].as_u64().unwrap_or(10).max(1) as usize;
        let tolerance = s["tolerancePercentage"].as_f64().unwrap_or(0.05);
        let weights: Vec<(String, f64)> = s["expectedWeights"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
            .collect();
        let case = json!({"Request": s["request"], "Response": {"StatusCode": 200}, "Namespace": s["target"]["namespace"]});
        let mut last = String::new();
        for _ in 0..10 {
            match distribution_once(&case, addr, &host, total, concurrency, &weights, tolerance)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(format!("10 tries of {total} requests to {addr}: {last}"))
    }

    /// `WebSocketEcho`: each frame sent through the Gateway comes back the same, three times in a row.
    async fn websocket_echo(&self, s: &Value) -> Result<(), String> {
        let (addr, _) = self.target(&s["target"], "http").await?;
        let origin = "ws://gateway/conformance";
        let request = format!("WebSocket ws://{addr}/ws");
        converge(self.env, &request, || async {
            let mut io = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connecting: {e}"))?;
            let exchange = async {
                gw_node::echo::ws::client_handshake(
                    &mut io,
                    &addr.to_string(),
                    "/ws",
                    Some(origin),
                )
                .await?;
                for f in s["frames"].as_array().into_iter().flatten() {
                    let (op, data) = match f["send"]["type"].as_str() {
                        Some("text") => (
                            gw_node::echo::ws::TEXT,
                            f["send"]["data"].as_str().unwrap_or("").as_bytes().to_vec(),
                        ),
                        _ => (
                            gw_node::echo::ws::BINARY,
                            f["send"]["data"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .map(|b| b.as_u64().unwrap_or(0) as u8)
                                .collect(),
                        ),
                    };
                    gw_node::echo::ws::write_frame(
                        &mut io,
                        op,
                        &data,
                        Some([0x5a, 0x17, 0x2b, 0x9c]),
                    )
                    .await
                    .map_err(|e| format!("sending a frame: {e}"))?;
                    if f["expectEcho"] == true {
                        let got = gw_node::echo::ws::read_frame(&mut io)
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

    async fn action(&mut self, a: &Value) -> Result<(), String> {
        let res = &a["resource"];
        match a["action"].as_str().unwrap_or("") {
            "RecordGeneration" => {
                let key = key_of(res)?;
                let g = generation(&self.fetch(&key).await?);
                self.recorded.insert(key, g);
                Ok(())
            }
            "Patch" => {
                let key = key_of(res)?;
                let mut obj = self.fetch(&key).await?;
                mutate(&mut obj, a)?;
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
            "Delete" => self
                .env
                .delete(vec![object_ref(&key_of(res)?)])
                .await
                .map_err(|e| e.to_string()),
            "SetupEndpointSlices" => self.setup_endpoint_slices(a).await,
            other => Err(format!("the harness cannot perform action {other:?}")),
        }
    }

    /// Fills the listed EndpointSlices with the IPs of the Deployment's pods of the slice's family.
    async fn setup_endpoint_slices(&mut self, a: &Value) -> Result<(), String> {
        let ns = a["namespace"].as_str().unwrap_or("");
        let d = a["description"].as_str().unwrap_or("");
        let deployment = d
            .split_once("Deployment ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .ok_or_else(|| format!("no Deployment named in {d:?}"))?;
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
        for name in a["endpointSlices"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
        {
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

/// One round of the weighted-distribution check.
async fn distribution_once(
    case: &Value,
    addr: SocketAddr,
    host: &str,
    total: usize,
    concurrency: usize,
    weights: &[(String, f64)],
    tolerance: f64,
) -> Result<(), String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || async {
        let mut pods = Vec::new();
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
            let reply = h::send(addr, &Transport::Http, h::build(case, host)?).await?;
            h::compare(case, &reply, "http", host)?;
            let echo: Value = serde_json::from_slice(&reply.body).map_err(|e| e.to_string())?;
            pods.push(echo["pod"].as_str().unwrap_or("").to_string());
        }
        Ok::<_, String>(pods)
    };
    let results = futures::future::join_all((0..concurrency).map(|_| worker())).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for pods in results {
        for pod in pods? {
            let backend = weights
                .iter()
                .find(|(b, _)| pod.starts_with(b.as_str()))
                .ok_or_else(|| format!("answered by unexpected pod {pod:?}"))?;
            *counts.entry(backend.0.as_str()).or_default() += 1;
        }
    }
    let expected_backends = weights.iter().filter(|(_, w)| *w > 0.0).count();
    if counts.len() != expected_backends {
        return Err(format!(
            "{} backends answered, expected {expected_backends}: {counts:?}",
            counts.len()
        ));
    }
    for (b, w) in weights {
        let share = *counts.get(b.as_str()).unwrap_or(&0) as f64 / total as f64;
        if (share - w).abs() > tolerance {
            return Err(format!(
                "{b} got {:.1}% of requests, expected {:.1}% ± {:.1}%: {counts:?}",
                share * 100.0,
                w * 100.0,
                tolerance * 100.0
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_parents_compare_like_the_suite() {
        let route = json!({"metadata": {"generation": 2}, "status": {"parents": [{
            "controllerName": "c", "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g", "sectionName": "http"},
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 2}]}]}});
        let want = json!([{"controllerName": "c", "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "g", "namespace": "ns"},
                           "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted"}]}]);
        assert!(
            route_parents_match(&route, &want, false).is_ok(),
            "a missing actual namespace is fine unless required"
        );
        assert!(
            route_parents_match(&route, &want, true)
                .unwrap_err()
                .contains("namespace")
        );
        let mut stale = route.clone();
        stale["metadata"]["generation"] = json!(3);
        assert!(
            route_parents_match(&stale, &want, false)
                .unwrap_err()
                .contains("generation 3")
        );
        let mut rejected = want.clone();
        rejected[0]["conditions"][0]["status"] = json!("False");
        assert!(
            route_parents_match(&route, &rejected, false)
                .unwrap_err()
                .contains("lacks")
        );
    }

    #[test]
    fn listeners_compare_like_the_suite() {
        let gw = json!({"status": {"listeners": [{"name": "http", "attachedRoutes": 1, "supportedKinds": [{"kind": "HTTPRoute"}],
                                                  "conditions": [{"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs"}]}]}});
        let want = json!([{"name": "http", "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}], "attachedRoutes": 1,
                           "conditions": [{"type": "ResolvedRefs", "status": "True", "reason": ""}]}]);
        assert!(listeners_match(&gw, &want).is_ok());
        let mut none = want.clone();
        none[0]["supportedKinds"] = json!([]);
        assert!(
            listeners_match(&gw, &none)
                .unwrap_err()
                .contains("should be empty")
        );
        let mut two = want.clone();
        two[0]["attachedRoutes"] = json!(2);
        assert!(
            listeners_match(&gw, &two)
                .unwrap_err()
                .contains("attachedRoutes")
        );
    }

    #[test]
    fn patches() {
        let gw = json!({"spec": {"listeners": [{"name": "http"}, {"name": "https"}], "addresses": [{"type": "test/fake", "value": "x"}, {"value": "198.51.100.7"}]}});
        let names = |v: &Value| {
            v["spec"]["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["name"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let mut g = gw.clone();
        mutate(
            &mut g,
            &json!({"description": "remove the listener named \"https\""}),
        )
        .unwrap();
        assert_eq!(names(&g), ["http"]);
        let mut g = gw.clone();
        mutate(&mut g, &json!({"removeListener": "http"})).unwrap();
        assert_eq!(names(&g), ["https"]);
        let mut g = gw.clone();
        mutate(&mut g, &json!({"description": "remove the invalid address (spec.addresses[0]) from spec.addresses"})).unwrap();
        assert_eq!(g["spec"]["addresses"].as_array().unwrap().len(), 1);
        let mut g = gw.clone();
        mutate(
            &mut g,
            &json!({"mergePatch": {"spec": {"addresses": null}}}),
        )
        .unwrap();
        assert!(g["spec"].get("addresses").is_none());
        assert!(
            mutate(
                &mut gw.clone(),
                &json!({"description": "rotate the certificate"})
            )
            .is_err()
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
