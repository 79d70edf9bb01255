//! The patch formats of the Kubernetes API, applied to an object's JSON: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902) and strategic merge patch (the built-in kinds only, as kube-apiserver: lists
//! with a patch merge key merge by it, other lists are replaced; `$patch`, `$retainKeys`,
//! `$setElementOrder/` and `$deleteFromPrimitiveList/` directives).

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let Some(p) = patch.as_object() else {
        return patch.clone();
    };
    let mut out = target.as_object().cloned().unwrap_or_default();
    for (k, v) in p {
        if v.is_null() {
            out.remove(k);
        } else {
            let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
            out.insert(k.clone(), merged);
        }
    }
    Value::Object(out)
}

/// RFC 6902: `add`, `remove`, `replace`, `move`, `copy`, `test`, in order; any failure fails the whole
/// patch (the error names the operation).
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops = patch
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    let mut doc = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let fail = |why: String| format!("operation {i} ({}): {why}", op);
        let name = op["op"].as_str().ok_or_else(|| fail("no \"op\"".into()))?;
        let path = op["path"]
            .as_str()
            .ok_or_else(|| fail("no \"path\"".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| fail("no \"value\"".into()))
        };
        let from = || {
            op["from"]
                .as_str()
                .ok_or_else(|| fail("no \"from\"".into()))
        };
        match name {
            "add" => add(&mut doc, path, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut doc, path).map_err(fail)?;
            }
            "replace" => {
                remove(&mut doc, path).map_err(fail)?;
                add(&mut doc, path, value()?).map_err(fail)?;
            }
            "move" => {
                let v = remove(&mut doc, from()?).map_err(fail)?;
                add(&mut doc, path, v).map_err(fail)?;
            }
            "copy" => {
                let v = doc
                    .pointer(from()?)
                    .cloned()
                    .ok_or_else(|| fail(format!("{} does not exist", from().unwrap_or(""))))?;
                add(&mut doc, path, v).map_err(fail)?;
            }
            "test" => {
                if doc.pointer(path) != Some(&value()?) {
                    return Err(fail("the test failed".into()));
                }
            }
            other => return Err(fail(format!("unknown op {other:?}"))),
        }
    }
    Ok(doc)
}

/// The parent of a JSON pointer and its last token (unescaped).
fn split_pointer(path: &str) -> Result<(&str, String), String> {
    if path.is_empty() {
        return Err("the whole document cannot be a target".into());
    }
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("{path:?} is not a JSON pointer"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
            Ok(())
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" {
                a.len()
            } else {
                last.parse::<usize>()
                    .ok()
                    .filter(|i| *i <= a.len())
                    .ok_or_else(|| format!("{path}: index out of range"))?
            };
            a.insert(i, value);
            Ok(())
        }
        _ => Err(format!("{parent:?} does not exist")),
    }
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("{path} does not exist");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(missing),
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// How a list of a built-in kind merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replaced whole (the default).
    Replace,
    /// Objects merged by this key.
    MergeBy(&'static str),
    /// A list of scalars: union.
    MergeScalars,
}

/// The list strategies of the built-in kinds gw stores (their `patchStrategy`/`patchMergeKey` tags),
/// by path below the object (`spec.ports`).
pub fn builtin_list_strategy(kind: &str, path: &str) -> ListStrategy {
    match (kind, path) {
        (_, "metadata.finalizers") => ListStrategy::MergeScalars,
        (_, "metadata.ownerReferences") => ListStrategy::MergeBy("uid"),
        ("Service", "spec.ports") => ListStrategy::MergeBy("port"),
        _ => ListStrategy::Replace,
    }
}

/// A strategic merge patch on an object of a built-in kind.
pub fn strategic_merge_patch(kind: &str, target: &Value, patch: &Value) -> Result<Value, String> {
    smp(kind, "", target, patch).map(|v| v.unwrap_or(Value::Null))
}

fn child(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}.{k}")
    }
}

/// Merges `patch` into `target` at `path`; `None`: the patch deletes it.
fn smp(kind: &str, path: &str, target: &Value, patch: &Value) -> Result<Option<Value>, String> {
    let Some(p) = patch.as_object() else {
        return Ok(Some(patch.clone()));
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut m = p.clone();
            m.remove("$patch");
            return Ok(Some(Value::Object(m)));
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("{path}: unknown $patch directive {other:?}")),
    }
    let mut out = target.as_object().cloned().unwrap_or_default();
    let mut orders: Vec<(String, &Vec<Value>)> = Vec::new();
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Some(order) = v.as_array() {
                orders.push((field.to_string(), order));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let gone = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let here = child(path, k);
        let merged = match (out.get(k), v) {
            (Some(Value::Array(old)), Value::Array(new)) => {
                merge_list(kind, &here, old, new, builtin_list_strategy(kind, &here))?
            }
            (Some(old), new @ Value::Object(_)) if old.is_object() => {
                match smp(kind, &here, old, new)? {
                    Some(m) => m,
                    None => {
                        out.remove(k);
                        continue;
                    }
                }
            }
            (_, new) => strip_directives(new),
        };
        out.insert(k.clone(), merged);
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = out.get_mut(&field) {
            let strategy = builtin_list_strategy(kind, &child(path, &field));
            reorder(list, order, strategy);
        }
    }
    Ok(Some(Value::Object(out)))
}

fn merge_list(
    kind: &str,
    path: &str,
    old: &[Value],
    new: &[Value],
    strategy: ListStrategy,
) -> Result<Value, String> {
    match strategy {
        ListStrategy::Replace => Ok(Value::Array(new.iter().map(strip_directives).collect())),
        ListStrategy::MergeScalars => {
            let mut out = old.to_vec();
            for v in new {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeBy(key) => {
            let mut out: Vec<Value> = old.to_vec();
            for item in new {
                let id = item
                    .get(key)
                    .ok_or_else(|| format!("{path}: an item without its merge key {key:?}"))?;
                let at = out.iter().position(|o| o.get(key) == Some(id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (at, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => match smp(kind, path, &out[i], item)? {
                        Some(m) => out[i] = m,
                        None => {
                            out.remove(i);
                        }
                    },
                    (None, false) => out.push(strip_directives(item)),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// Orders a merged list as `$setElementOrder` says; items it does not name keep their place after.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let id = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeBy(key) => v.get(key).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let order: Vec<Value> = order.iter().map(id).collect();
    list.sort_by_key(|v| {
        let i = id(v);
        order.iter().position(|o| *o == i).unwrap_or(usize::MAX)
    });
}

/// A value as it is stored: without patch directives.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect::<Map<String, Value>>(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The RFC's example.
        let target = json!({"title": "Goodbye!", "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"], "content": "This will be unchanged"});
        let patch = json!({"title": "Hello!", "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null}, "tags": ["example"]});
        assert_eq!(
            merge_patch(&target, &patch),
            json!({"title": "Hello!", "author": {"givenName": "John"}, "tags": ["example"],
                "content": "This will be unchanged", "phoneNumber": "+01-123-456-7890"})
        );
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let doc = json!({"a": {"b": [1, 2]}, "c": "x"});
        let patch = json!([
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "add", "path": "/a/b/0", "value": 0},
            {"op": "replace", "path": "/c", "value": "y"},
            {"op": "copy", "from": "/c", "path": "/d"},
            {"op": "move", "from": "/d", "path": "/e~1f"},
            {"op": "remove", "path": "/a/b/1"},
            {"op": "test", "path": "/c", "value": "y"},
        ]);
        assert_eq!(
            json_patch(&doc, &patch).unwrap(),
            json!({"a": {"b": [0, 2, 3]}, "c": "y", "e/f": "y"})
        );
        for bad in [
            json!([{"op": "test", "path": "/c", "value": "z"}]),
            json!([{"op": "remove", "path": "/nope"}]),
            json!([{"op": "add", "path": "/a/b/9", "value": 1}]),
            json!([{"op": "frobnicate", "path": "/c"}]),
            json!({"op": "add"}),
        ] {
            assert!(json_patch(&doc, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strategic_merge_patch_merges_service_ports_by_port() {
        let svc = json!({"metadata": {"name": "s", "finalizers": ["a"]},
            "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}],
                     "selector": {"app": "x"}}});
        let patch = json!({"metadata": {"finalizers": ["b"]},
            "spec": {"ports": [{"port": 443, "name": "tls"}, {"port": 8080, "name": "alt"},
                               {"port": 80, "$patch": "delete"}],
                     "$setElementOrder/ports": [{"port": 8080}, {"port": 443}],
                     "selector": {"app": null, "tier": "y"}}});
        assert_eq!(
            strategic_merge_patch("Service", &svc, &patch).unwrap(),
            json!({"metadata": {"name": "s", "finalizers": ["a", "b"]},
                "spec": {"ports": [{"port": 8080, "name": "alt"}, {"port": 443, "name": "tls"}],
                         "selector": {"tier": "y"}}})
        );
    }

    #[test]
    fn strategic_merge_patch_directives() {
        let cm = json!({"data": {"a": "1", "b": "2"}, "binaryData": {"x": "AA=="}});
        let replace = json!({"data": {"$patch": "replace", "c": "3"}});
        assert_eq!(
            strategic_merge_patch("ConfigMap", &cm, &replace).unwrap()["data"],
            json!({"c": "3"})
        );
        let delete = json!({"binaryData": {"$patch": "delete"}});
        assert!(strategic_merge_patch("ConfigMap", &cm, &delete).unwrap()["binaryData"].is_null());
        let retain = json!({"data": {"$retainKeys": ["a"], "a": "9"}});
        assert_eq!(
            strategic_merge_patch("ConfigMap", &cm, &retain).unwrap()["data"],
            json!({"a": "9"})
        );
        let obj = json!({"metadata": {"finalizers": ["a", "b"]}});
        let drop = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        assert_eq!(
            strategic_merge_patch("ConfigMap", &obj, &drop).unwrap()["metadata"]["finalizers"],
            json!(["b"])
        );
        // Lists without a merge key are replaced.
        let eps = json!({"endpoints": [{"addresses": ["10.0.0.1"]}]});
        let patch = json!({"endpoints": [{"addresses": ["10.0.0.2"]}]});
        assert_eq!(
            strategic_merge_patch("EndpointSlice", &eps, &patch).unwrap(),
            patch
        );
    }
}
