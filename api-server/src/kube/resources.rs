//! The verbs on resources: get, list, create, update (PUT), patch, delete, and the status subresource.
//! Reads and writes are calls to this member's own Config service as the caller; a read-modify-write
//! (patch, an update without a resourceVersion) reads the stored object itself (Secrets unredacted:
//! the caller never sees it) and writes with its resourceVersion as precondition, again on a conflict
//! — what kube-apiserver's "guaranteed update" does.

use super::path::ResourcePath;
use super::status::{Failure, deleted};
use super::{Body, Call, KubeApi, json_response, read_body, watch};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use gw_client::Error;
use gw_model::ObjectKey;
use gw_model::kinds::{self, KindInfo};
use gw_model::managed::{self, Manager};
use gw_model::patch::{json_patch, merge_patch, strategic_merge_patch};
use gw_model::selector::{FieldSelector, LabelSelector};
use gw_proto as pb;
use gw_proto::config_server::Config;
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Value, json};

/// How often a read-modify-write is tried before its conflict is reported.
const ATTEMPTS: usize = 5;

pub async fn handle(
    api: &KubeApi,
    call: &Call,
    r: ResourcePath,
    req: Request<Incoming>,
) -> Response<Body> {
    if r.info.namespaced && r.name.is_some() && r.namespace.is_none() {
        return Failure::not_found(format!(
            "{} is namespaced: the path needs /namespaces/NAMESPACE/",
            r.info.plural
        ))
        .into();
    }
    let method = req.method().clone();
    let result = match (&method, r.name.is_some()) {
        (&Method::GET, _) if r.watch || call.flag("watch") => {
            return watch::serve(api, call, &r).await;
        }
        (&Method::GET, true) => get(api, call, &r).await.map(|o| (StatusCode::OK, o)),
        (&Method::GET, false) => list(api, call, &r).await.map(|o| (StatusCode::OK, o)),
        (_, _) if !super::discovery::writable(r.info) => Err(Failure::method_not_allowed(format!(
            "{} are written by gw itself",
            r.info.plural
        ))),
        (&Method::POST, false) => create(api, call, &r, req).await,
        (&Method::PUT, true) => update(api, call, &r, req).await,
        (&Method::PATCH, true) => patch(api, call, &r, req).await,
        (&Method::DELETE, true) => delete(api, call, &r, req).await,
        (m, _) => Err(Failure::method_not_allowed(format!(
            "{m} is not supported on {}",
            req.uri().path()
        ))),
    };
    let mut response = match result {
        Ok((code, body)) => json_response(code, &body),
        Err(f) => f.into(),
    };
    for w in call
        .warnings
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        // RFC 7234 warn-code 299 ("miscellaneous persistent warning"), as kube-apiserver sends.
        let text = format!("299 - {:?}", w);
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, v);
        }
    }
    response
}

/// `fieldValidation`: Strict (kubectl's default) leaves unknown fields to admission, which refuses
/// them by name; Warn (kube-apiserver's default) drops them with a warning each; Ignore drops them.
/// For the Gateway API kinds only: of a built-in kind gw keeps the fields it uses and drops the
/// others, which are not unknown to Kubernetes.
fn field_validation(call: &Call, r: &ResourcePath, obj: &mut Value) -> Result<(), Failure> {
    let mode = call.param("fieldValidation").unwrap_or("Warn");
    match mode {
        "Strict" => Ok(()),
        "Warn" | "Ignore" => {
            if !super::openapi::builtin(r.info) {
                let unknown = gw_model::schema::kind_schema(r.info, &r.version).prune_unknown(obj);
                if mode == "Warn" {
                    for f in unknown {
                        call.warn(format!("unknown field {f:?}"));
                    }
                }
            }
            Ok(())
        }
        other => Err(Failure::bad_request(format!(
            "fieldValidation must be Strict, Warn or Ignore, not {other:?}"
        ))),
    }
}

fn name(r: &ResourcePath) -> &str {
    r.name.as_deref().unwrap_or("")
}

fn key(r: &ResourcePath, name: &str) -> ObjectKey {
    let ns = if r.info.namespaced {
        r.namespace.as_deref().unwrap_or("default")
    } else {
        ""
    };
    ObjectKey::new(r.info.group, r.info.kind, ns, name)
}

fn object_ref(r: &ResourcePath, name: &str) -> pb::ObjectRef {
    gw_client::object_ref(&key(r, name))
}

fn status_error(s: tonic::Status, info: &KindInfo, name: &str) -> Failure {
    Failure::of(&Error::from(s), info, name)
}

fn read_options(call: &Call, r: &ResourcePath) -> pb::ReadOptions {
    pb::ReadOptions {
        // resourceVersion=0: any recent state will do (kube-apiserver serves it from its cache).
        serializable: call.param("resourceVersion") == Some("0"),
        version: r.version.clone(),
        show_secret_values: false,
    }
}

fn dry_run(call: &Call) -> bool {
    call.param("dryRun") == Some("All")
}

async fn get(api: &KubeApi, call: &Call, r: &ResourcePath) -> Result<Value, Failure> {
    let n = name(r);
    let resp = api
        .config
        .get(call.request(pb::GetRequest {
            target: Some(object_ref(r, n)),
            options: Some(read_options(call, r)),
        }))
        .await
        .map_err(|s| status_error(s, r.info, n))?
        .into_inner();
    parse_json(&resp.object_json)
}

fn parse_json(s: &str) -> Result<Value, Failure> {
    serde_json::from_str(s).map_err(|e| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("the store sent malformed JSON: {e}"),
        )
    })
}

/// Where a list continues: after this object, at this revision.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    ns: String,
    name: String,
}

impl Continue {
    fn encode(&self) -> String {
        B64.encode(serde_json::to_vec(self).expect("a continue token serializes"))
    }

    fn decode(s: &str) -> Result<Continue, Failure> {
        B64.decode(s)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| Failure::bad_request(format!("invalid continue token {s:?}")))
    }
}

/// The label and field selectors of a request.
pub fn selectors(call: &Call) -> Result<(LabelSelector, FieldSelector), Failure> {
    let labels = LabelSelector::parse(call.param("labelSelector").unwrap_or(""))
        .map_err(|e| Failure::bad_request(format!("unable to parse labelSelector: {e}")))?;
    let fields = FieldSelector::parse(call.param("fieldSelector").unwrap_or(""))
        .map_err(|e| Failure::bad_request(format!("unable to parse fieldSelector: {e}")))?;
    Ok((labels, fields))
}

/// The objects of a collection at one revision (`at`: a given one, or the current one).
pub async fn list_objects(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    at: u64,
) -> Result<(Vec<Value>, u64), Failure> {
    let resp = api
        .config
        .list(call.request(pb::ListRequest {
            group: r.info.group.into(),
            kind: r.info.kind.into(),
            namespace: r.namespace.clone().unwrap_or_default(),
            options: Some(read_options(call, r)),
            at_revision: at,
            ..Default::default()
        }))
        .await
        .map_err(|s| status_error(s, r.info, ""))?
        .into_inner();
    let objects = resp
        .objects_json
        .iter()
        .map(|o| parse_json(o))
        .collect::<Result<_, _>>()?;
    Ok((objects, resp.revision))
}

async fn list(api: &KubeApi, call: &Call, r: &ResourcePath) -> Result<Value, Failure> {
    let (labels, fields) = selectors(call)?;
    let limit: usize = match call.param("limit") {
        None => 0,
        Some(l) => l
            .parse()
            .map_err(|_| Failure::bad_request(format!("limit {l:?} is not a number")))?,
    };
    let from = call.param("continue").map(Continue::decode).transpose()?;
    let at = match (&from, call.param("resourceVersionMatch")) {
        (Some(c), _) => c.rv,
        (None, Some("Exact")) => call
            .param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                Failure::bad_request("resourceVersionMatch=Exact needs a resourceVersion")
            })?,
        _ => 0,
    };
    let (objects, revision) = list_objects(api, call, r, at).await.map_err(|f| {
        if f.code == StatusCode::GONE && from.is_some() {
            Failure::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            )
        } else {
            f
        }
    })?;
    let mut items: Vec<Value> = objects
        .into_iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .filter(|o| {
            from.as_ref().is_none_or(|c| {
                let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
                let n = o["metadata"]["name"].as_str().unwrap_or("");
                (ns, n) > (c.ns.as_str(), c.name.as_str())
            })
        })
        .collect();
    let mut metadata = json!({"resourceVersion": revision.to_string()});
    if limit > 0 && items.len() > limit {
        let rest = items.split_off(limit);
        let last = &items[limit - 1]["metadata"];
        let token = Continue {
            rv: revision,
            ns: last["namespace"].as_str().unwrap_or("").into(),
            name: last["name"].as_str().unwrap_or("").into(),
        };
        metadata["continue"] = json!(token.encode());
        metadata["remainingItemCount"] = json!(rest.len());
    }
    Ok(json!({
        "kind": format!("{}List", r.info.kind),
        "apiVersion": kinds::api_version(r.info.group, &r.version),
        "metadata": metadata,
        "items": items,
    }))
}

/// A request's media type, without parameters ("" if it names none).
fn content_type(req: &Request<Incoming>) -> String {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// A request body as JSON (kubectl sends JSON; YAML is accepted too).
async fn body_json(req: Request<Incoming>) -> Result<Value, Failure> {
    let content_type = content_type(&req);
    parse_body(&read_body(req).await?, &content_type)
}

/// A body of this media type: YAML (`...yaml`) or JSON; empty is `null`.
fn parse_body(bytes: &[u8], content_type: &str) -> Result<Value, Failure> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Failure::bad_request("the request body is not UTF-8"))?;
    if content_type.ends_with("yaml") {
        serde_saphyr::from_str::<Value>(text)
            .map_err(|e| Failure::bad_request(format!("the request body is not YAML: {e}")))
    } else if text.trim().is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_str(text)
            .map_err(|e| Failure::bad_request(format!("the request body is not JSON: {e}")))
    }
}

/// Checks that a body is an object of the path's kind, group and namespace, and fills in the
/// namespace when it has none.
fn check_body(r: &ResourcePath, body: &mut Value) -> Result<(), Failure> {
    if !body.is_object() {
        return Err(Failure::bad_request("the request body must be an object"));
    }
    let api_version = body["apiVersion"].as_str().unwrap_or("");
    let (group, version) = kinds::split_api_version(api_version);
    if body["kind"].as_str() != Some(r.info.kind) || group != r.info.group {
        return Err(Failure::bad_request(format!(
            "the body is a {} {api_version:?}, the path is for {} ({})",
            body["kind"].as_str().unwrap_or("?"),
            r.info.kind,
            kinds::api_version(r.info.group, &r.version)
        )));
    }
    if version.is_empty() {
        body["apiVersion"] = json!(kinds::api_version(r.info.group, &r.version));
    }
    if let Some(ns) = &r.namespace {
        match body["metadata"]["namespace"].as_str() {
            None | Some("") => body["metadata"]["namespace"] = json!(ns),
            Some(b) if b == ns => {}
            Some(_) => {
                return Err(Failure::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    }
    Ok(())
}

/// Admits and stores one object through the Config service.
async fn apply(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    obj: &Value,
    n: &str,
) -> Result<u64, Failure> {
    api.config
        .apply(call.request(pb::ApplyRequest {
            documents: vec![pb::Document {
                json: obj.to_string(),
                source: format!("{} {n}", r.info.kind),
                index: 1,
            }],
            dry_run: dry_run(call),
        }))
        .await
        .map(|w| w.into_inner().revision)
        .map_err(|s| status_error(s, r.info, n))
}

/// How long the object as written is read from this member before it is read through the leader.
const WRITTEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The object as the caller sees it after a write committed at `revision` (a dry run: as it would
/// have been written). Read from this member once it has applied the write, not through the leader:
/// leadership may have moved since the commit, and a write that was done must not be answered with
/// a 503, which clients such as kube-rs take as "not done" and send again.
async fn written(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    n: &str,
    would_be: Value,
    revision: u64,
) -> Result<Value, Failure> {
    if dry_run(call) {
        return Ok(would_be);
    }
    let target = Some(object_ref(r, n));
    let options = pb::ReadOptions {
        serializable: true,
        ..read_options(call, r)
    };
    let applied_here = async {
        loop {
            let local = api
                .config
                .get(call.request(pb::GetRequest {
                    target: target.clone(),
                    options: Some(options.clone()),
                }))
                .await
                .map(tonic::Response::into_inner);
            match local {
                Ok(got) if got.revision >= revision => return got.object_json,
                // Not applied here yet (not found: not yet created here, or deleted since; the
                // read through the leader below tells).
                _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        }
    };
    if let Ok(json) = tokio::time::timeout(WRITTEN_WAIT, applied_here).await {
        return parse_json(&json);
    }
    let at = ResourcePath {
        name: Some(n.to_string()),
        ..r.clone()
    };
    get(api, call, &at).await
}

/// A random suffix for `metadata.generateName`, as kube-apiserver makes them.
fn generated_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bytes = [0u8; 5];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system RNG");
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

async fn create(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    req: Request<Incoming>,
) -> Result<(StatusCode, Value), Failure> {
    if r.subresource.is_some() {
        return Err(Failure::method_not_allowed("POST on a subresource"));
    }
    let mut body = body_json(req).await?;
    check_body(r, &mut body)?;
    field_validation(call, r, &mut body)?;
    if body["metadata"]["name"].as_str().unwrap_or("").is_empty()
        && let Some(prefix) = body["metadata"]["generateName"].as_str()
    {
        body["metadata"]["name"] = json!(format!("{prefix}{}", generated_suffix()));
    }
    if let Some(m) = body["metadata"].as_object_mut() {
        m.remove("generateName");
    }
    let n = body["metadata"]["name"].as_str().unwrap_or("").to_string();
    if body["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|v| !v.is_empty())
    {
        return Err(Failure::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    // Create only: the object must not exist yet.
    let mut doc = body;
    doc["metadata"]["resourceVersion"] = json!("0");
    track_update(call, r, &Value::Null, &mut doc);
    let revision = apply(api, call, r, &doc, &n).await?;
    Ok((
        StatusCode::CREATED,
        written(api, call, r, &n, doc, revision).await?,
    ))
}

/// The stored object, read linearizably by the member itself (Secret values included: the result
/// is only patched and written back, never shown); `None` if it does not exist.
async fn current(api: &KubeApi, r: &ResourcePath, n: &str) -> Result<Option<Value>, Failure> {
    api.node
        .read_barrier()
        .await
        .map_err(|e| Failure::of(&Error::from(tonic::Status::from(e)), r.info, n))?;
    let key = key(r, n);
    Ok(api
        .node
        .store
        .read(|a| a.state.get(&key).map(|o| (**o).clone())))
}

fn resource_version(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn update(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    req: Request<Incoming>,
) -> Result<(StatusCode, Value), Failure> {
    let n = name(r).to_string();
    let mut body = body_json(req).await?;
    check_body(r, &mut body)?;
    field_validation(call, r, &mut body)?;
    if body["metadata"]["name"].as_str() != Some(n.as_str()) {
        return Err(Failure::bad_request(
            "the name of the object does not match the name on the URL",
        ));
    }
    let pinned = resource_version(&body);
    for _ in 0..ATTEMPTS {
        let Some(old) = current(api, r, &n).await? else {
            return Err(not_found(r, &n));
        };
        let expected = if pinned > 0 {
            pinned
        } else {
            resource_version(&old)
        };
        let mut doc = body.clone();
        let result = if r.subresource.is_some() {
            update_status(api, call, r, &n, &body["status"], expected).await
        } else {
            doc["metadata"]["resourceVersion"] = json!(expected.to_string());
            if r.info.group.is_empty() && r.info.kind == "Secret" {
                crate::authz::unredact(&mut doc, &old);
            }
            track_update(call, r, &old, &mut doc);
            apply(api, call, r, &doc, &n).await
        };
        match result {
            Err(f) if pinned == 0 && f.body["reason"] == "Conflict" => continue,
            Err(f) => return Err(f),
            Ok(revision) => {
                return Ok((
                    StatusCode::OK,
                    written(api, call, r, &n, doc, revision).await?,
                ));
            }
        }
    }
    Err(conflict(r, &n))
}

fn not_found(r: &ResourcePath, n: &str) -> Failure {
    Failure::of(&Error::NotFound { key: key(r, n) }, r.info, n)
}

/// The field manager of a write: `fieldManager`, else the client's program (`kubectl-edit` of
/// `kubectl-edit/v1.32.0 (linux/amd64) kubernetes/...`), as kube-apiserver names it.
fn manager(call: &Call, r: &ResourcePath, operation: &str) -> Manager {
    let program = call.user_agent.split('/').next().unwrap_or("").trim();
    Manager {
        manager: call
            .param("fieldManager")
            .unwrap_or(if program.is_empty() {
                "unknown"
            } else {
                program
            })
            .to_string(),
        operation: operation.to_string(),
        api_version: kinds::api_version(r.info.group, &r.version),
        time: gw_model::meta::rfc3339(gw_client::clock::now_ms()),
        fields: Default::default(),
    }
}

/// Sets the field owners of `new`, written over `old` (`Null`: created) by this call.
fn track_update(call: &Call, r: &ResourcePath, old: &Value, new: &mut Value) {
    let before = managed::managers_of(old);
    let mut managers = before.clone();
    managed::record_update(&mut managers, &manager(call, r, "Update"), old, new);
    // Owners unchanged (a write of what is there already): the entries stay as they are, times
    // included, so that the write is a no-op, as in kube-apiserver.
    let same = |a: &Manager, b: &Manager| {
        Manager {
            time: String::new(),
            ..a.clone()
        } == Manager {
            time: String::new(),
            ..b.clone()
        }
    };
    new["metadata"]["managedFields"] = if managers.len() == before.len()
        && managers.iter().zip(&before).all(|(a, b)| same(a, b))
    {
        old["metadata"]["managedFields"].clone()
    } else {
        managed::to_json(&managers)
    };
}

fn conflict(r: &ResourcePath, n: &str) -> Failure {
    Failure::of(
        &Error::Conflict {
            key: key(r, n),
            expected: 1,
            current: 2,
        },
        r.info,
        n,
    )
}

async fn update_status(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    n: &str,
    status: &Value,
    expected: u64,
) -> Result<u64, Failure> {
    if !status.is_object() {
        return Err(Failure::bad_request("the body has no status object"));
    }
    if dry_run(call) {
        return Ok(0);
    }
    api.config
        .update_status(call.request(pb::UpdateStatusRequest {
            updates: vec![pb::StatusUpdate {
                target: Some(object_ref(r, n)),
                status_json: status.to_string(),
                expected_uid: String::new(),
                expected_generation: 0,
                expected_resource_version: expected,
            }],
        }))
        .await
        .map(|w| w.into_inner().revision)
        .map_err(|s| status_error(s, r.info, n))
}

/// The patch formats, by `Content-Type`.
fn patched(
    r: &ResourcePath,
    content_type: &str,
    obj: &Value,
    patch: &Value,
) -> Result<Value, Failure> {
    match content_type {
        "application/merge-patch+json" => Ok(merge_patch(obj, patch)),
        "application/json-patch+json" => json_patch(obj, patch)
            .map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e)),
        "application/strategic-merge-patch+json" if super::openapi::builtin(r.info) => {
            strategic_merge_patch(r.info.kind, obj, patch).map_err(Failure::bad_request)
        }
        "application/strategic-merge-patch+json" => Err(Failure::unsupported_media_type(format!(
            "strategic merge patch is not supported for {} (a custom resource): use --type merge or --type json",
            r.info.kind
        ))),
        other => Err(Failure::unsupported_media_type(format!(
            "the patch type {other:?} is not supported (merge, json, and strategic for built-in kinds)"
        ))),
    }
}

async fn patch(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    req: Request<Incoming>,
) -> Result<(StatusCode, Value), Failure> {
    let n = name(r).to_string();
    let content_type = content_type(&req);
    let bytes = read_body(req).await?;
    if content_type == "application/apply-patch+yaml" {
        return server_side_apply(api, call, r, &bytes).await;
    }
    let patch: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::bad_request(format!("the patch is not JSON: {e}")))?;
    for _ in 0..ATTEMPTS {
        let Some(mut obj) = current(api, r, &n).await? else {
            return Err(not_found(r, &n));
        };
        obj["apiVersion"] = json!(kinds::api_version(r.info.group, &r.version));
        let rv = resource_version(&obj);
        let mut out = patched(r, &content_type, &obj, &patch)?;
        field_validation(call, r, &mut out)?;
        if out["metadata"]["name"] != obj["metadata"]["name"]
            || out["metadata"]["namespace"] != obj["metadata"]["namespace"]
        {
            return Err(Failure::bad_request(
                "a patch may not change the name or the namespace",
            ));
        }
        // A resourceVersion the patch sets is a precondition; otherwise the one just read is.
        let pinned = resource_version(&out);
        let expected = if pinned != rv { pinned } else { rv };
        let result = if r.subresource.is_some() {
            update_status(api, call, r, &n, &out["status"], expected).await
        } else {
            out["metadata"]["resourceVersion"] = json!(expected.to_string());
            track_update(call, r, &obj, &mut out);
            apply(api, call, r, &out, &n).await
        };
        match result {
            Err(f) if pinned == rv && f.body["reason"] == "Conflict" => continue,
            Err(f) => return Err(f),
            Ok(revision) => {
                return Ok((
                    StatusCode::OK,
                    written(api, call, r, &n, out, revision).await?,
                ));
            }
        }
    }
    Err(conflict(r, &n))
}

/// Server-side apply (`application/apply-patch+yaml`): the configuration is merged into the object
/// (created if missing) under the rules of `gw_model::managed`; conflicts are a 409 unless `force`.
async fn server_side_apply(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    bytes: &[u8],
) -> Result<(StatusCode, Value), Failure> {
    if r.subresource.is_some() {
        return Err(Failure::unsupported_media_type(
            "server-side apply of a subresource is not supported",
        ));
    }
    let n = name(r).to_string();
    if call.param("fieldManager").is_none() {
        return Err(Failure::bad_request(
            "PATCH: fieldManager is required for apply requests",
        ));
    }
    let mut config = parse_body(bytes, "application/apply-patch+yaml")?;
    check_body(r, &mut config)?;
    field_validation(call, r, &mut config)?;
    if config["metadata"]["name"].as_str() != Some(n.as_str()) {
        return Err(Failure::bad_request(
            "the name of the apply configuration does not match the name on the URL",
        ));
    }
    // Status has its own subresource; a resourceVersion in the configuration is a precondition.
    if let Some(o) = config.as_object_mut() {
        o.remove("status");
    }
    let pinned = resource_version(&config);
    let who = manager(call, r, "Apply");
    for _ in 0..ATTEMPTS {
        let existing = current(api, r, &n).await?;
        let old = existing.clone().unwrap_or(Value::Null);
        let mut managers = managed::managers_of(&old);
        let mut out = managed::apply(&mut managers, &who, &old, &config, call.flag("force"))
            .map_err(|c| apply_conflicts(&c, &who))?;
        let expected = match &existing {
            _ if pinned > 0 => pinned,
            Some(o) => resource_version(o),
            None => 0,
        };
        out["metadata"]["resourceVersion"] = json!(expected.to_string());
        out["metadata"]["managedFields"] = managed::to_json(&managers);
        match apply(api, call, r, &out, &n).await {
            Err(f)
                if pinned == 0
                    && (f.body["reason"] == "Conflict" || f.body["reason"] == "AlreadyExists") =>
            {
                continue;
            }
            Err(f) => return Err(f),
            Ok(revision) => {
                let code = if existing.is_some() {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                };
                return Ok((code, written(api, call, r, &n, out, revision).await?));
            }
        }
    }
    Err(conflict(r, &n))
}

/// The 409 of an apply that meets other managers' fields, as kube-apiserver words it.
fn apply_conflicts(conflicts: &[managed::Conflict], who: &Manager) -> Failure {
    let using =
        |c: &managed::Conflict| format!("conflict with {:?} using {}", c.manager, who.api_version);
    let message = match conflicts {
        [c] => format!("Apply failed with 1 conflict: {}: {}", using(c), c.field),
        _ => format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            conflicts
                .iter()
                .map(|c| format!("{}: {}", using(c), c.field))
                .collect::<Vec<_>>()
                .join("\n")
        ),
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| json!({"type": "FieldManagerConflict", "message": using(c), "field": c.field}))
        .collect();
    Failure::new(StatusCode::CONFLICT, "Conflict", message)
        .with_details(json!({ "causes": causes }))
}

async fn delete(
    api: &KubeApi,
    call: &Call,
    r: &ResourcePath,
    req: Request<Incoming>,
) -> Result<(StatusCode, Value), Failure> {
    if r.subresource.is_some() {
        return Err(Failure::method_not_allowed("DELETE on a subresource"));
    }
    let n = name(r).to_string();
    let options = body_json(req).await?;
    let dry = dry_run(call)
        || options["dryRun"]
            .as_array()
            .is_some_and(|d| d.iter().any(|v| v == "All"));
    let pre = &options["preconditions"];
    let existing = current(api, r, &n).await?;
    let uid = existing
        .as_ref()
        .map(|o| o["metadata"]["uid"].clone())
        .unwrap_or(Value::Null);
    let mut expected: u64 = pre["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let (Some(want), Some(o)) = (pre["uid"].as_str(), &existing) {
        if o["metadata"]["uid"] != want {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {}",
                    o["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        // The uid checked holds only as long as the object is the one read.
        if expected == 0 {
            expected = resource_version(o);
        }
    }
    let resp = api
        .config
        .delete(call.request(pb::DeleteRequest {
            refs: vec![object_ref(r, &n)],
            dry_run: dry,
            ignore_not_found: false,
            expected_resource_versions: vec![expected],
        }))
        .await
        .map_err(|s| status_error(s, r.info, &n))?
        .into_inner();
    let pending = resp.results.iter().any(|x| x.action == "deletion pending");
    if pending && !dry {
        // Held by finalizers: the object, marked, is the answer.
        return Ok((StatusCode::OK, get(api, call, r).await?));
    }
    Ok((StatusCode::OK, deleted(r.info, &n, &uid)))
}
