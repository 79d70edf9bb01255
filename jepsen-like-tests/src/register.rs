//! The register workload: reads, writes and compare-and-sets on many independent objects (ConfigMaps
//! `jepsen/reg-N`, the value in `data.value`), through the public API of a random member each time.
//! A compare-and-set is a linearizable read and a write conditioned on the resourceVersion it saw.

use crate::history::{Event, Kind, Recorder};
use crate::nemesis::Rng;
use gw_client::{Client, Error};
use gw_proto as pb;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How long a client waits for an answer before calling the outcome unknown.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);

pub fn key_name(k: u64) -> String {
    format!("reg-{k}")
}

fn target(key: &str) -> pb::ObjectRef {
    pb::ObjectRef {
        group: String::new(),
        kind: "ConfigMap".into(),
        namespace: "jepsen".into(),
        name: key.into(),
    }
}

/// A channel per member, each call on it bounded by the operation timeout.
pub fn channels(addrs: &[(u64, String)], security: &gw_client::Security) -> Vec<(u64, Channel)> {
    let dialer = gw_client::Dialer::new(security.clone())
        .connect_timeout(Duration::from_millis(300))
        .timeout(OP_TIMEOUT);
    addrs
        .iter()
        .filter_map(|(id, a)| dialer.lazy(a).ok().map(|c| (*id, c)))
        .collect()
}

/// How a client reaches a member: the store's gRPC API, or its Kubernetes API (`--via kube`).
#[derive(Clone)]
pub enum Conn {
    Grpc(Channel),
    Kube(kube::Api<k8s_openapi::api::core::v1::ConfigMap>),
}

/// A linearizable read: the value (None if the object does not exist), its resourceVersion and the
/// revision of the read.
pub async fn read(conn: &Conn, key: &str) -> Result<(Option<i64>, String, u64), Error> {
    match conn {
        Conn::Grpc(ch) => grpc_read(ch, key).await,
        Conn::Kube(api) => crate::kube_api::read(api, key).await,
    }
}

/// Writes `value` (unconditionally, or only if the object is still at `rv`); returns the revision.
pub async fn write(conn: &Conn, key: &str, value: i64, rv: Option<&str>) -> Result<u64, Error> {
    match conn {
        Conn::Grpc(ch) => grpc_write(ch, key, value, rv).await,
        Conn::Kube(api) => crate::kube_api::write(api, key, value, rv).await,
    }
}

async fn grpc_read(ch: &Channel, key: &str) -> Result<(Option<i64>, String, u64), Error> {
    let req = pb::GetRequest {
        target: Some(target(key)),
        options: None,
    };
    match Client::config(ch.clone())
        .get(req)
        .await
        .map_err(Error::from)
    {
        Ok(r) => {
            let r = r.into_inner();
            let obj: Value = serde_json::from_str(&r.object_json).unwrap_or_default();
            let v = obj["data"]["value"].as_str().and_then(|s| s.parse().ok());
            Ok((
                v,
                obj["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                r.revision,
            ))
        }
        Err(Error::NotFound { .. }) => Ok((None, String::new(), 0)),
        Err(e) => Err(e),
    }
}

async fn grpc_write(ch: &Channel, key: &str, value: i64, rv: Option<&str>) -> Result<u64, Error> {
    let mut doc = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": key, "namespace": "jepsen"}, "data": {"value": value.to_string()}});
    if let Some(rv) = rv {
        doc["metadata"]["resourceVersion"] = json!(rv);
    }
    let req = pb::ApplyRequest {
        documents: vec![pb::Document {
            json: doc.to_string(),
            source: "jepsen".into(),
            index: 1,
        }],
        dry_run: false,
    };
    Client::config(ch.clone())
        .apply(req)
        .await
        .map(|r| r.into_inner().revision)
        .map_err(Error::from)
}

/// What the clients share.
pub struct Clients {
    /// Process ids of one client are `first + k * stride`.
    pub stride: i64,
    pub chans: Vec<(u64, Channel)>,
    /// The register's connections (gRPC, or the Kubernetes API).
    pub conns: Vec<(u64, Conn)>,
    pub keys: u64,
    pub rec: Recorder,
    pub next_value: AtomicI64,
    pub until: Instant,
}

/// One client: operations until `until`. A process whose operation's outcome is unknown is retired and
/// the client goes on as a new process (as in Jepsen), so that every process has one op at a time.
pub async fn client(ctx: Arc<Clients>, first_process: i64, seed: u64) {
    let Clients {
        stride,
        conns: chans,
        keys,
        rec,
        next_value,
        until,
        ..
    } = &*ctx;
    let (stride, keys, until) = (*stride, *keys, *until);
    let mut rng = Rng::new(seed);
    let mut process = first_process;
    while Instant::now() < until {
        let key = key_name(rng.below(keys));
        let (node, ch) = &chans[rng.below(chans.len() as u64) as usize];
        let roll = rng.below(100);
        let (f, arg) = if roll < 50 {
            ("read", Value::Null)
        } else if roll < 80 {
            ("write", json!(next_value.fetch_add(1, Ordering::Relaxed)))
        } else {
            (
                "cas",
                json!([
                    rng.below(5) as i64 + next_value.load(Ordering::Relaxed) - 5,
                    next_value.fetch_add(1, Ordering::Relaxed)
                ]),
            )
        };
        let mut inv = Recorder::event(process, Kind::Invoke, f, Some(&key), arg.clone());
        inv.node = Some(*node);
        rec.record(inv);
        // The completion of this operation: its kind, value, revision and error.
        let end = |kind: Kind, value: Value, revision: Option<u64>, error: Option<&str>| {
            completion(process, kind, f, &key, value, revision, error)
        };
        let done = match f {
            "read" => match tokio::time::timeout(OP_TIMEOUT, read(ch, &key)).await {
                // A not-found answer carries no revision (0).
                Ok(Ok((v, _, rev))) => end(Kind::Ok, json!(v), Some(rev).filter(|r| *r > 0), None),
                Ok(Err(e)) => end(Kind::Fail, Value::Null, None, Some(&e.to_string())),
                Err(_) => end(Kind::Fail, Value::Null, None, Some("timeout")),
            },
            "write" => match tokio::time::timeout(
                OP_TIMEOUT,
                write(ch, &key, arg.as_i64().unwrap_or(0), None),
            )
            .await
            {
                Ok(Ok(rev)) => end(Kind::Ok, arg.clone(), Some(rev), None),
                Ok(Err(e)) if e.is_definite() => {
                    end(Kind::Fail, arg.clone(), None, Some(&e.to_string()))
                }
                Ok(Err(e)) => end(Kind::Info, arg.clone(), None, Some(&e.to_string())),
                Err(_) => end(Kind::Info, arg.clone(), None, Some("timeout")),
            },
            _ => {
                let (from, to) = (arg[0].as_i64().unwrap_or(0), arg[1].as_i64().unwrap_or(0));
                let op = async {
                    let (v, rv, _) = read(ch, &key).await.map_err(|e| (true, e))?;
                    if v != Some(from) {
                        return Ok(None);
                    }
                    write(ch, &key, to, Some(&rv))
                        .await
                        .map(Some)
                        .map_err(|e| (e.is_definite(), e))
                };
                match tokio::time::timeout(OP_TIMEOUT, op).await {
                    Ok(Ok(Some(rev))) => end(Kind::Ok, arg.clone(), Some(rev), None),
                    Ok(Ok(None)) => end(Kind::Fail, arg.clone(), None, Some("value differs")),
                    Ok(Err((true, e))) => end(Kind::Fail, arg.clone(), None, Some(&e.to_string())),
                    Ok(Err((false, e))) => end(Kind::Info, arg.clone(), None, Some(&e.to_string())),
                    Err(_) => end(Kind::Info, arg.clone(), None, Some("timeout")),
                }
            }
        };
        let kind = done.kind;
        let mut done = done;
        done.node = Some(*node);
        rec.record(done);
        if kind == Kind::Info {
            process += stride;
        } else if kind == Kind::Fail {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn completion(
    process: i64,
    kind: Kind,
    f: &str,
    key: &str,
    value: Value,
    revision: Option<u64>,
    error: Option<&str>,
) -> Event {
    let mut e = Recorder::event(process, kind, f, Some(key), value);
    e.revision = revision;
    e.error = error.map(str::to_string);
    e
}
