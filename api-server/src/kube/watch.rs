//! Watches as the Kubernetes API serves them: a stream of JSON events, one per line — `ADDED`,
//! `MODIFIED`, `DELETED`, `BOOKMARK` (when asked for), and an `ERROR` carrying a `410 Expired` status
//! when the requested resourceVersion has left the history. Served from the store's own watch, so its
//! guarantees hold: ordered, no gaps, nothing twice, resumable after any revision in the history.
//!
//! With selectors, an object that stops matching is reported `DELETED` and one that starts matching
//! `ADDED`, as kube-apiserver does; what matched at the start revision is read from the list at that
//! revision.

use super::path::ResourcePath;
use super::resources::{list_objects, selectors};
use super::status::Failure;
use super::{Body, Call, KubeApi};
use bytes::Bytes;
use gw_client::Error;
use gw_model::kinds;
use gw_model::selector::{FieldSelector, LabelSelector};
use gw_proto as pb;
use gw_proto::config_server::Config;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// What one watch sends, and what it has told its client.
struct Session {
    labels: LabelSelector,
    fields: FieldSelector,
    bookmarks: bool,
    api_version: String,
    kind: &'static str,
    /// With selectors: the objects (namespace/name) the client believes exist and match.
    matching: HashSet<(String, String)>,
    filtered: bool,
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
}

impl Session {
    async fn send(&self, kind: &str, object: Value) -> bool {
        let line = json!({"type": kind, "object": object}).to_string() + "\n";
        self.tx
            .send(Ok(Frame::data(Bytes::from(line))))
            .await
            .is_ok()
    }

    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// Reports one object's change: `put` (it exists now; `created` by this change) or a delete.
    async fn change(&mut self, mut obj: Value, put: bool, created: bool) -> bool {
        obj["apiVersion"] = json!(self.api_version);
        if !self.filtered {
            let kind = match (put, created) {
                (false, _) => "DELETED",
                (true, true) => "ADDED",
                (true, false) => "MODIFIED",
            };
            return self.send(kind, obj).await;
        }
        let id = id_of(&obj);
        let was = self.matching.contains(&id);
        let is = put && self.matches(&obj);
        let kind = match (was, is) {
            (false, true) => "ADDED",
            (true, true) => "MODIFIED",
            (true, false) => "DELETED",
            (false, false) => return true,
        };
        if is {
            self.matching.insert(id);
        } else {
            self.matching.remove(&id);
        }
        self.send(kind, obj).await
    }

    async fn bookmark(&self, revision: u64, initial_end: bool) -> bool {
        if !self.bookmarks {
            return true;
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.send(
            "BOOKMARK",
            json!({"kind": self.kind, "apiVersion": self.api_version, "metadata": metadata}),
        )
        .await
    }

    async fn expired(&self, message: String) {
        let _ = self.send("ERROR", Failure::expired(message).body).await;
    }
}

pub async fn serve(api: &KubeApi, call: &Call, r: &ResourcePath) -> Response<Body> {
    match start(api, call, r).await {
        Ok(body) => {
            let mut resp = Response::new(body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(f) => f.into(),
    }
}

async fn start(api: &KubeApi, call: &Call, r: &ResourcePath) -> Result<Body, Failure> {
    let (labels, mut fields) = selectors(call)?;
    if let Some(n) = &r.name {
        // The legacy `/watch/.../NAME` form watches one object.
        fields =
            FieldSelector::parse(&format!("metadata.name={n}")).map_err(Failure::bad_request)?;
    }
    let rv: Option<u64> = match call.param("resourceVersion") {
        None | Some("0") => None,
        Some(v) => Some(
            v.parse()
                .map_err(|_| Failure::bad_request(format!("invalid resourceVersion {v:?}")))?,
        ),
    };
    let initial = rv.is_none() || call.flag("sendInitialEvents");
    let api_version = kinds::api_version(r.info.group, &r.version);
    let (tx, rx) = mpsc::channel(64);
    let filtered = !labels.is_empty() || r.name.is_some() || call.param("fieldSelector").is_some();
    let mut session = Session {
        labels,
        fields,
        bookmarks: call.flag("allowWatchBookmarks"),
        api_version,
        kind: r.info.kind,
        matching: HashSet::new(),
        filtered,
        tx,
    };
    // Resuming after a revision with selectors: what matched then decides ADDED / DELETED later.
    if let (Some(at), false, true) = (rv, initial, filtered) {
        let (objects, _) = list_objects(api, call, r, at).await.map_err(|f| {
            if f.code == StatusCode::GONE {
                Failure::expired(format!("too old resource version: {at}"))
            } else {
                f
            }
        })?;
        let matched: Vec<_> = objects
            .iter()
            .filter(|o| session.matches(o))
            .map(id_of)
            .collect();
        session.matching.extend(matched);
    }
    let stream = api
        .config
        .watch(call.request(pb::WatchRequest {
            after_revision: if initial { None } else { rv },
            kinds: vec![pb::ObjectRef {
                group: r.info.group.into(),
                kind: r.info.kind.into(),
                ..Default::default()
            }],
            namespace: r.namespace.clone().unwrap_or_default(),
            bookmark_interval_ms: 0,
            show_secret_values: false,
        }))
        .await
        .map_err(|s| Failure::of(&Error::from(s), r.info, ""))?
        .into_inner();
    let timeout = call
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    tokio::spawn(async move {
        let pump = pump(stream, &mut session, initial);
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, pump).await;
            }
            None => pump.await,
        }
    });
    let body = StreamBody::new(ReceiverStream::new(rx));
    Ok(BodyExt::boxed(body))
}

fn id_of(o: &Value) -> (String, String) {
    (
        o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        o["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

/// Turns the store's watch into events until either side goes away.
async fn pump(
    mut stream: impl tokio_stream::Stream<Item = Result<pb::WatchResponse, tonic::Status>> + Unpin,
    session: &mut Session,
    initial: bool,
) {
    while let Some(Ok(msg)) = stream.next().await {
        let ok = match msg.body {
            Some(pb::watch_response::Body::Snapshot(chunk)) => {
                if chunk.compacted {
                    // The history the client asked for is gone (or it fell too far behind): it
                    // must list again.
                    session
                        .expired(format!(
                            "too old resource version: the history starts after {}",
                            chunk.compact_revision
                        ))
                        .await;
                    return;
                }
                let mut ok = true;
                for o in &chunk.objects_json {
                    let Ok(obj) = serde_json::from_str::<Value>(o) else {
                        continue;
                    };
                    ok = ok && session.change(obj, true, true).await;
                }
                if chunk.done && initial {
                    ok = ok && session.bookmark(chunk.revision, true).await;
                }
                ok
            }
            Some(pb::watch_response::Body::Events(revision)) => {
                let mut ok = true;
                for e in revision.events {
                    let Ok(obj) = serde_json::from_str::<Value>(&e.object_json) else {
                        continue;
                    };
                    let put = e.r#type == pb::EventType::Put as i32;
                    ok = ok && session.change(obj, put, e.created).await;
                }
                ok
            }
            Some(pb::watch_response::Body::Bookmark(b)) => {
                session.bookmark(b.revision, false).await
            }
            None => true,
        };
        if !ok {
            return;
        }
    }
}
