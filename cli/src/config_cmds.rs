//! `gwadm apply`, `get`, `delete`, `watch`: the config objects in the store.

use crate::error::{Error, Result};
use crate::output::{self, Format};
use crate::status_cmds;
use gw_client::{Client, kind_ref, object_ref};
use gw_model::kinds::{self, KindInfo};
use gw_model::{ObjectKey, parse_documents};
use gw_proto as pb;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Reads the documents of `-f` arguments: files, directories (their .yaml/.yml/.json files, sorted) or
/// `-` for standard input.
pub fn read_documents(paths: &[PathBuf], recursive: bool) -> Result<Vec<pb::Document>> {
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, recursive, &mut files)?;
    }
    let mut out = Vec::new();
    for f in files {
        let (name, text) = if f == Path::new("-") {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Error::Usage(format!("reading stdin: {e}")))?;
            ("-".to_string(), s)
        } else {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| Error::Usage(format!("{}: cannot read: {e}", f.display())))?;
            (f.display().to_string(), text)
        };
        let docs =
            parse_documents(&name, &text).map_err(|e| Error::Usage(format!("invalid: {e}")))?;
        out.extend(docs.into_iter().map(|d| pb::Document {
            json: d.value.to_string(),
            source: d.source,
            index: d.index as u32,
        }));
    }
    if out.is_empty() {
        return Err(Error::Usage("no objects found in the given files".into()));
    }
    Ok(out)
}

fn collect_files(p: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    if p == Path::new("-") || !p.is_dir() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::Usage(format!("{}: cannot read directory: {e}", p.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            if recursive {
                collect_files(&e, recursive, out)?;
            }
        } else if matches!(
            e.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(e);
        }
    }
    Ok(())
}

/// `kind.group/name`, as kubectl names objects in its output.
fn display_ref(r: &pb::ObjectRef) -> String {
    let kind = r.kind.to_ascii_lowercase();
    let qualified = if r.group.is_empty() {
        kind
    } else {
        format!("{kind}.{}", r.group)
    };
    if r.namespace.is_empty() {
        format!("{qualified}/{}", r.name)
    } else {
        format!("{qualified}/{} (namespace {})", r.name, r.namespace)
    }
}

fn print_write(resp: &pb::WriteResponse, dry_run: bool) {
    let suffix = if dry_run { " (dry run)" } else { "" };
    for r in &resp.results {
        println!(
            "{} {}{suffix}",
            display_ref(r.target.as_ref().unwrap_or(&pb::ObjectRef::default())),
            r.action
        );
    }
    println!("revision {}{suffix}", resp.revision);
}

pub async fn apply(
    client: &Client,
    paths: &[PathBuf],
    recursive: bool,
    dry_run: bool,
    wait: Option<Duration>,
) -> Result<()> {
    let documents = read_documents(paths, recursive)?;
    let resp = client.apply(documents, dry_run).await?;
    print_write(&resp, dry_run);
    wait_served(client, "applied", &resp, dry_run, wait).await
}

/// `--wait`: until the gateway nodes serve what was written (not for a dry run): the revision at which
/// the last of the objects took its present state (that of the write, or an earlier one for objects
/// unchanged).
async fn wait_served(
    client: &Client,
    verb: &str,
    resp: &pb::WriteResponse,
    dry_run: bool,
    wait: Option<Duration>,
) -> Result<()> {
    let revision = resp
        .results
        .iter()
        .map(|r| r.resource_version)
        .max()
        .unwrap_or(0);
    match wait {
        Some(timeout) if !dry_run => {
            status_cmds::wait_served(client, verb, revision, timeout).await
        }
        _ => Ok(()),
    }
}

/// Resolves a kind as the user typed it.
pub fn resolve_kind(name: &str) -> Result<&'static KindInfo> {
    kinds::resolve(name).ok_or_else(|| {
        let known: Vec<String> = kinds::KINDS.iter().map(|k| k.plural.to_string()).collect();
        Error::Usage(format!(
            "unknown kind {name:?}; known kinds: {}",
            known.join(", ")
        ))
    })
}

pub struct GetArgs<'a> {
    pub kind: &'a str,
    pub name: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub all_namespaces: bool,
    pub format: Format,
    pub serializable: bool,
    pub version: Option<&'a str>,
    pub show_secret_values: bool,
    /// Only the objects a kube sync agent carried from this cluster.
    pub origin: Option<&'a str>,
}

pub async fn get(client: &Client, a: GetArgs<'_>) -> Result<()> {
    let info = resolve_kind(a.kind)?;
    let options = Some(pb::ReadOptions {
        serializable: a.serializable,
        version: a.version.unwrap_or("").into(),
        show_secret_values: a.show_secret_values,
    });
    let namespace = if !info.namespaced || a.all_namespaces {
        ""
    } else {
        a.namespace.unwrap_or("default")
    };
    let out = if let Some(name) = a.name {
        let key = ObjectKey::new(info.group, info.kind, namespace, name);
        let resp = client
            .get(pb::GetRequest {
                target: Some(object_ref(&key)),
                options,
            })
            .await?;
        let obj: Value =
            serde_json::from_str(&resp.object_json).map_err(|e| Error::Usage(e.to_string()))?;
        output::render_one(&obj, a.format, false)
    } else {
        let req = pb::ListRequest {
            group: info.group.into(),
            kind: info.kind.into(),
            namespace: namespace.into(),
            options,
            at_revision: 0,
            ..Default::default()
        };
        let mut printer =
            output::ListPrinter::new(a.format, a.all_namespaces && info.namespaced, false);
        client
            .list_paged(req, |page| {
                page.objects_json
                    .iter()
                    .filter_map(|s| serde_json::from_str::<Value>(s).ok())
                    .filter(|o| a.origin.is_none_or(|c| output::origin(o) == c))
                    .for_each(|o| printer.push(o))
            })
            .await?;
        let printed = printer
            .finish()
            .map_err(|e| Error::Local(anyhow::anyhow!("writing the list: {e}")))?;
        if printed == 0 && a.format == Format::Table {
            let where_ = if namespace.is_empty() {
                String::new()
            } else {
                format!(" in namespace {namespace:?}")
            };
            eprintln!("No {} found{where_}.", info.plural);
        }
        return Ok(());
    };
    print!("{out}");
    Ok(())
}

/// How a delete goes: as `gwadm delete`'s flags say.
pub struct DeleteHow {
    pub ignore_not_found: bool,
    pub dry_run: bool,
    pub wait: Option<Duration>,
}

pub async fn delete_named(
    client: &Client,
    kind: &str,
    name: &str,
    namespace: Option<&str>,
    how: DeleteHow,
) -> Result<()> {
    let info = resolve_kind(kind)?;
    let ns = if info.namespaced {
        namespace.unwrap_or("default")
    } else {
        ""
    };
    let target = object_ref(&ObjectKey::new(info.group, info.kind, ns, name));
    delete(client, vec![target], how).await
}

pub async fn delete_files(
    client: &Client,
    paths: &[PathBuf],
    recursive: bool,
    how: DeleteHow,
) -> Result<()> {
    let docs = read_documents(paths, recursive)?;
    let mut refs = Vec::new();
    for d in docs {
        let v: Value = serde_json::from_str(&d.json).map_err(|e| Error::Usage(e.to_string()))?;
        let key = ObjectKey::of_document(&v)
            .map_err(|e| Error::Usage(format!("{}: document {}: {e}", d.source, d.index)))?;
        refs.push(object_ref(&key));
    }
    delete(client, refs, how).await
}

async fn delete(client: &Client, refs: Vec<pb::ObjectRef>, how: DeleteHow) -> Result<()> {
    let req = pb::DeleteRequest {
        refs,
        dry_run: how.dry_run,
        ignore_not_found: how.ignore_not_found,
        expected_resource_versions: vec![],
    };
    let resp = client.delete(req).await?;
    print_write(&resp, how.dry_run);
    wait_served(client, "deleted", &resp, how.dry_run, how.wait).await
}

pub struct WatchArgs<'a> {
    pub kind: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub from: Option<u64>,
    pub json: bool,
    pub bookmarks: bool,
    /// Exit after printing the events of this revision.
    pub until: Option<u64>,
    pub timeout: Option<Duration>,
    pub show_secret_values: bool,
}

/// Watches, reconnecting to the next member when a stream breaks and resuming after the last revision
/// seen (so that a member crash neither repeats nor loses events).
#[allow(clippy::disallowed_methods)] // runtime: the --timeout deadline
pub async fn watch(client: &Client, a: WatchArgs<'_>) -> Result<()> {
    let kinds = match a.kind {
        Some(k) => {
            let info = resolve_kind(k)?;
            vec![kind_ref(info.group, info.kind)]
        }
        None => vec![],
    };
    let deadline = a.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut after = a.from;
    let mut stdout = std::io::stdout();
    let mut failures = 0;
    loop {
        let req = pb::WatchRequest {
            after_revision: after,
            kinds: kinds.clone(),
            namespace: a.namespace.unwrap_or("").into(),
            bookmark_interval_ms: 0,
            show_secret_values: a.show_secret_values,
        };
        let mut stream = client.watch(req).await?;
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                    Ok(m) => m,
                    Err(_) => return Ok(()),
                },
                None => stream.message().await,
            };
            let msg = match next {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => break,
            };
            failures = 0;
            let Some(body) = msg.body else { continue };
            let revision = print_watch(&mut stdout, body, a.json, a.bookmarks);
            if let Some(r) = revision {
                after = Some(r);
                if a.until.is_some_and(|u| r >= u) {
                    return Ok(());
                }
            }
        }
        failures += 1;
        if failures > 3 * client.servers().len() {
            return Err(gw_client::Error::Unavailable {
                tried: client.servers().join(", "),
                last: "the watch stream kept breaking".into(),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Prints one watch message; returns the revision it completes, if any.
fn print_watch(
    out: &mut impl Write,
    body: pb::watch_response::Body,
    json_out: bool,
    bookmarks: bool,
) -> Option<u64> {
    use pb::watch_response::Body;
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::Null);
    let (line, rev) = match body {
        Body::Snapshot(s) => {
            let line = if json_out {
                let objects: Vec<Value> = s.objects_json.iter().map(|o| parse(o)).collect();
                json!({"type": "SNAPSHOT", "revision": s.revision, "compacted": s.compacted,
                       "compactRevision": s.compact_revision, "last": s.done, "objects": objects})
                .to_string()
            } else {
                let why = if s.compacted {
                    " (history compacted: full resync)"
                } else {
                    ""
                };
                format!(
                    "{:>8} SNAPSHOT {} objects{why}",
                    s.revision,
                    s.objects_json.len()
                )
            };
            (line, s.done.then_some(s.revision))
        }
        Body::Events(ev) => {
            let lines: Vec<String> = ev
                .events
                .iter()
                .map(|e| {
                    let t = if e.r#type == pb::EventType::Delete as i32 {
                        "DELETE"
                    } else {
                        "PUT"
                    };
                    if json_out {
                        json!({"type": t, "revision": ev.revision, "object": parse(&e.object_json)})
                            .to_string()
                    } else {
                        let r = e.target.clone().unwrap_or_default();
                        let name = if r.namespace.is_empty() {
                            r.name
                        } else {
                            format!("{}/{}", r.namespace, r.name)
                        };
                        format!("{:>8} {t:<6} {} {name}", ev.revision, r.kind)
                    }
                })
                .collect();
            (lines.join("\n"), Some(ev.revision))
        }
        Body::Bookmark(b) => {
            if !bookmarks {
                // Progress still counts: everything up to the bookmark has been received.
                return Some(b.revision);
            }
            let line = if json_out {
                json!({"type": "BOOKMARK", "revision": b.revision}).to_string()
            } else {
                format!("{:>8} BOOKMARK", b.revision)
            };
            (line, Some(b.revision))
        }
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    rev
}
