//! Field ownership (`metadata.managedFields`) and server-side apply, as kube-apiserver keeps them for
//! custom resources: every writer (a field manager, with the operation `Apply` or `Update`) owns a set
//! of fields, stored as `FieldsV1`. Objects are walked key by key; lists are atomic (the Gateway API
//! CRDs declare no list-map keys), so a list is one field. Of metadata only labels and annotations are
//! owned; `apiVersion`, `kind` and `status` are not (status has its own subresource).
//!
//! - An update takes every field it changes from the other managers (no conflicts).
//! - An apply owns exactly the fields of its configuration: fields it applied before and leaves out
//!   now are removed from the object unless another manager owns them too; a field it sets to a value
//!   other than the current one, owned by another manager, is a conflict, unless forced (then the
//!   field changes hands).

use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// One field: the keys from the object's root.
pub type Path = Vec<String>;

/// The fields one manager owns.
pub type FieldSet = BTreeSet<Path>;

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub manager: String,
    /// `.spec.hostnames`, as kube-apiserver names it.
    pub field: String,
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

/// Whether a field at the root of an object is owned at all.
fn tracked(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        Some("apiVersion" | "kind" | "status") | None => false,
        Some("metadata") => matches!(
            path.get(1).map(String::as_str),
            Some("labels" | "annotations") | None
        ),
        _ => true,
    }
}

/// The fields of an object: its leaves (scalars, lists, and empty objects).
pub fn fields_of(obj: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    if tracked(path) {
                        walk(child, path, out);
                    }
                    path.pop();
                }
            }
            _ if !path.is_empty() => {
                out.insert(path.clone());
            }
            _ => {}
        }
    }
    let mut out = FieldSet::new();
    walk(obj, &mut Vec::new(), &mut out);
    out
}

fn at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |v, k| v.as_object()?.get(k))
}

/// Whether one path is the other or lies under it.
fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// How kube-apiserver prints a field in a conflict.
fn dotted(path: &[String]) -> String {
    path.iter().map(|k| format!(".{k}")).collect()
}

/// The fields whose value differs between two versions of an object (added, changed or removed).
fn changed(old: &Value, new: &Value) -> FieldSet {
    let before = fields_of(old);
    let after = fields_of(new);
    before
        .symmetric_difference(&after)
        .cloned()
        .chain(
            after
                .intersection(&before)
                .filter(|p| at(old, p) != at(new, p))
                .cloned(),
        )
        .collect()
}

/// Removes from a set every field overlapping one of `taken`.
fn release(set: &mut FieldSet, taken: &FieldSet) {
    set.retain(|p| !taken.iter().any(|t| overlaps(p, t)));
}

/// Drops fields that no longer exist in the object, and managers left with none.
fn prune(managers: &mut Vec<Manager>, obj: &Value) {
    for m in managers.iter_mut() {
        m.fields.retain(|p| at(obj, p).is_some());
    }
    managers.retain(|m| !m.fields.is_empty());
}

fn entry<'a>(managers: &'a mut Vec<Manager>, who: &Manager) -> &'a mut Manager {
    let i = match managers
        .iter()
        .position(|m| m.manager == who.manager && m.operation == who.operation)
    {
        Some(i) => i,
        None => {
            managers.push(Manager {
                fields: FieldSet::new(),
                ..who.clone()
            });
            managers.len() - 1
        }
    };
    let m = &mut managers[i];
    m.time.clone_from(&who.time);
    m.api_version.clone_from(&who.api_version);
    m
}

/// Records an update from `old` (`Null` for a create) to `new` by `who` (operation `Update`).
pub fn record_update(managers: &mut Vec<Manager>, who: &Manager, old: &Value, new: &Value) {
    let taken = changed(old, new);
    if !taken.is_empty() {
        for m in managers.iter_mut() {
            release(&mut m.fields, &taken);
        }
        entry(managers, who).fields.extend(taken);
    }
    prune(managers, new);
}

/// Server-side apply of `config` by `who` (operation `Apply`) to `current` (`Null` if the object does
/// not exist): the object to store, or the conflicts.
pub fn apply(
    managers: &mut Vec<Manager>,
    who: &Manager,
    current: &Value,
    config: &Value,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let applied = fields_of(config);
    let mut conflicts = Vec::new();
    for m in managers.iter_mut() {
        if m.manager == who.manager && m.operation == who.operation {
            continue;
        }
        let contested: FieldSet = applied
            .iter()
            .filter(|p| m.fields.iter().any(|q| overlaps(p, q)))
            .filter(|p| at(current, p).is_some_and(|v| Some(v) != at(config, p)))
            .cloned()
            .collect();
        if force {
            release(&mut m.fields, &contested);
        } else {
            conflicts.extend(contested.iter().map(|p| Conflict {
                manager: m.manager.clone(),
                field: dotted(p),
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }
    // Fields this manager applied before and leaves out now go, unless someone else holds them.
    let before = managers
        .iter()
        .find(|m| m.manager == who.manager && m.operation == who.operation)
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    let mut out = current.clone();
    for p in before.difference(&applied) {
        let shared = managers.iter().any(|m| {
            !(m.manager == who.manager && m.operation == who.operation)
                && m.fields.iter().any(|q| overlaps(p, q))
        });
        if !shared {
            remove(&mut out, p);
        }
    }
    merge(&mut out, config);
    entry(managers, who).fields = applied;
    prune(managers, &out);
    Ok(out)
}

/// Removes a field, and the objects it leaves empty.
fn remove(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    if let Some(Value::Object(m)) = parents
        .iter()
        .try_fold(&mut *obj, |v, k| v.as_object_mut()?.get_mut(k))
    {
        m.remove(last);
        if m.is_empty() && !parents.is_empty() {
            remove(obj, parents);
        }
    }
}

/// Objects merge key by key; anything else (lists among them) replaces.
fn merge(target: &mut Value, config: &Value) {
    match (target, config) {
        (Value::Object(t), Value::Object(c)) => {
            for (k, v) in c {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, c) => *t = c.clone(),
    }
}

/// `FieldsV1`: `{"f:spec": {"f:rules": {}}}`.
fn encode(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut node = &mut root;
        for k in p {
            node = node
                .entry(format!("f:{k}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("FieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

/// Reads `FieldsV1` back; entries other than `f:` (list keys, values, `.`) mark their parent.
fn decode(v: &Value) -> FieldSet {
    fn walk(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let fields: Vec<(&str, &Value)> = v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, c)| Some((k.strip_prefix("f:")?, c)))
                    .collect()
            })
            .unwrap_or_default();
        if fields.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, c) in fields {
            path.push(k.to_string());
            walk(c, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// The managers of a stored object (`metadata.managedFields`; malformed entries are dropped).
pub fn managers_of(obj: &Value) -> Vec<Manager> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    Some(Manager {
                        manager: e["manager"].as_str()?.to_string(),
                        operation: e["operation"].as_str()?.to_string(),
                        api_version: e["apiVersion"].as_str().unwrap_or("").to_string(),
                        time: e["time"].as_str().unwrap_or("").to_string(),
                        fields: decode(&e["fieldsV1"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.managedFields` for a list of managers.
pub fn to_json(managers: &[Manager]) -> Value {
    managers
        .iter()
        .map(|m| {
            json!({
                "manager": m.manager,
                "operation": m.operation,
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": encode(&m.fields),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(name: &str, op: &str) -> Manager {
        Manager {
            manager: name.into(),
            operation: op.into(),
            api_version: "v1".into(),
            time: "2026-01-01T00:00:00Z".into(),
            fields: FieldSet::new(),
        }
    }

    fn p(s: &str) -> Path {
        s.split('.').map(String::from).collect()
    }

    #[test]
    fn fields_are_leaves_and_lists_are_atomic() {
        let obj = json!({"apiVersion": "v1", "kind": "X",
            "metadata": {"name": "a", "labels": {"app": "x"}},
            "spec": {"hostnames": ["a", "b"], "x": {"y": 1, "z": {}}}, "status": {"s": 1}});
        let f = fields_of(&obj);
        let want: FieldSet = [
            "metadata.labels.app",
            "spec.hostnames",
            "spec.x.y",
            "spec.x.z",
        ]
        .iter()
        .map(|s| p(s))
        .collect();
        assert_eq!(f, want);
        assert_eq!(decode(&encode(&f)), f);
        assert_eq!(
            encode(&f)["f:spec"]["f:x"],
            json!({"f:y": {}, "f:z": {}}),
            "FieldsV1 nests by key"
        );
    }

    #[test]
    fn apply_owns_its_fields_and_removes_what_it_drops() {
        let mut ms = Vec::new();
        let cfg1 = json!({"metadata": {"name": "a"}, "spec": {"a": 1, "b": 2}});
        let o1 = apply(&mut ms, &who("k", "Apply"), &Value::Null, &cfg1, false).unwrap();
        assert_eq!(o1["spec"], json!({"a": 1, "b": 2}));
        let cfg2 = json!({"metadata": {"name": "a"}, "spec": {"a": 3}});
        let o2 = apply(&mut ms, &who("k", "Apply"), &o1, &cfg2, false).unwrap();
        assert_eq!(o2["spec"], json!({"a": 3}), "b was dropped from the config");
        assert_eq!(to_json(&ms)[0]["fieldsV1"], json!({"f:spec": {"f:a": {}}}));
    }

    #[test]
    fn apply_conflicts_with_another_managers_different_value_unless_forced() {
        let mut ms = Vec::new();
        let base = json!({"metadata": {"name": "a"}, "spec": {"a": 1, "b": 2}});
        let o = apply(&mut ms, &who("k", "Apply"), &Value::Null, &base, false).unwrap();
        let edited = json!({"metadata": {"name": "a"}, "spec": {"a": 1, "b": 5}});
        record_update(&mut ms, &who("edit", "Update"), &o, &edited);
        assert_eq!(ms.len(), 2);
        // The same value is no conflict (shared ownership); a different one is.
        let same = json!({"metadata": {"name": "a"}, "spec": {"a": 1, "b": 5}});
        let mut probe = ms.clone();
        assert!(apply(&mut probe, &who("k", "Apply"), &edited, &same, false).is_ok());
        let err = apply(&mut ms.clone(), &who("k", "Apply"), &edited, &base, false).unwrap_err();
        assert_eq!(
            err,
            vec![Conflict {
                manager: "edit".into(),
                field: ".spec.b".into()
            }]
        );
        let forced = apply(&mut ms, &who("k", "Apply"), &edited, &base, true).unwrap();
        assert_eq!(forced["spec"]["b"], 2);
        assert_eq!(ms.len(), 1, "the editor lost its only field: {ms:?}");
    }

    #[test]
    fn a_field_another_manager_holds_survives_being_dropped_from_an_apply() {
        let mut ms = Vec::new();
        let cfg = json!({"spec": {"a": 1, "b": 2}});
        let o = apply(&mut ms, &who("k", "Apply"), &Value::Null, &cfg, false).unwrap();
        apply(
            &mut ms,
            &who("other", "Apply"),
            &o,
            &json!({"spec": {"b": 2}}),
            false,
        )
        .unwrap();
        let o2 = apply(
            &mut ms,
            &who("k", "Apply"),
            &o,
            &json!({"spec": {"a": 1}}),
            false,
        )
        .unwrap();
        assert_eq!(o2["spec"], json!({"a": 1, "b": 2}));
    }

    #[test]
    fn updates_take_changed_fields_and_removed_fields_are_forgotten() {
        let mut ms = Vec::new();
        let old = json!({"spec": {"a": 1, "b": {"c": 2}}});
        record_update(&mut ms, &who("create", "Update"), &Value::Null, &old);
        let new = json!({"spec": {"a": 2}});
        record_update(&mut ms, &who("patch", "Update"), &old, &new);
        let owners: Vec<_> = ms.iter().map(|m| m.manager.as_str()).collect();
        assert_eq!(owners, vec!["patch"], "{ms:?}");
        assert_eq!(ms[0].fields, [p("spec.a")].into_iter().collect());
        assert_eq!(
            managers_of(&json!({"metadata": {"managedFields": to_json(&ms)}})),
            ms
        );
    }
}
