use super::*;
use crate::types::Txn;

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("", "ConfigMap", "default", name)
}

fn cm(name: &str, data: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}, "data": {"k": data}})
}

fn put_op(name: &str, data: &str, expected_rv: Option<u64>) -> Op {
    Op::Put {
        key: key(name),
        object: cm(name, data),
        expected_rv,
        uid: format!("uid-{name}"),
    }
}

fn txn(ops: Vec<Op>) -> Txn {
    Txn {
        time_ms: 1_000,
        ops,
    }
}

fn apply(s: &mut State, ops: Vec<Op>) -> Result<TxnOutcome, TxnError> {
    s.apply_txn(&txn(ops)).0
}

fn actions(o: &TxnOutcome) -> Vec<Action> {
    o.results.iter().map(|r| r.action).collect()
}

#[test]
fn create_update_unchanged_with_revisions_and_generations() {
    let mut s = State::new(100);
    let o = apply(&mut s, vec![put_op("a", "1", None)]).unwrap();
    assert_eq!((o.revision, actions(&o)), (1, vec![Action::Created]));
    let a = s.get(&key("a")).unwrap();
    assert_eq!(a["metadata"]["generation"], 1);
    assert_eq!(a["metadata"]["resourceVersion"], "1");
    assert_eq!(a["metadata"]["uid"], "uid-a");
    assert_eq!(a["metadata"]["creationTimestamp"], "1970-01-01T00:00:01Z");

    let o = apply(&mut s, vec![put_op("a", "1", None)]).unwrap();
    assert_eq!(
        (o.revision, actions(&o)),
        (1, vec![Action::Unchanged]),
        "a no-op is not a revision"
    );

    let o = apply(&mut s, vec![put_op("a", "2", None)]).unwrap();
    assert_eq!((o.revision, actions(&o)), (2, vec![Action::Configured]));
    let a = s.get(&key("a")).unwrap();
    assert_eq!(a["metadata"]["generation"], 2);
    assert_eq!(a["metadata"]["uid"], "uid-a", "uid survives updates");

    let mut labelled = cm("a", "2");
    labelled["metadata"]["labels"] = json!({"x": "y"});
    let o = apply(
        &mut s,
        vec![Op::Put {
            key: key("a"),
            object: labelled,
            expected_rv: None,
            uid: "other".into(),
        }],
    )
    .unwrap();
    assert_eq!(o.revision, 3);
    assert_eq!(
        s.get(&key("a")).unwrap()["metadata"]["generation"],
        2,
        "labels do not bump generation"
    );
}

#[test]
fn status_is_a_subresource() {
    let mut s = State::new(100);
    apply(&mut s, vec![put_op("a", "1", None)]).unwrap();
    let status = json!({"observed": true});
    let o = apply(
        &mut s,
        vec![Op::Status {
            key: key("a"),
            status: status.clone(),
            expected_uid: None,
            expected_generation: Some(1),
            expected_rv: None,
        }],
    )
    .unwrap();
    assert_eq!((o.revision, actions(&o)), (2, vec![Action::StatusUpdated]));
    assert_eq!(s.get(&key("a")).unwrap()["metadata"]["generation"], 1);
    // A spec write neither takes nor drops the status.
    let mut with_status = cm("a", "9");
    with_status["status"] = json!({"forged": true});
    apply(
        &mut s,
        vec![Op::Put {
            key: key("a"),
            object: with_status,
            expected_rv: None,
            uid: String::new(),
        }],
    )
    .unwrap();
    assert_eq!(s.get(&key("a")).unwrap()["status"], status);
    // Stale preconditions skip the status write instead of failing.
    let o = apply(
        &mut s,
        vec![Op::Status {
            key: key("a"),
            status: json!({}),
            expected_uid: None,
            expected_generation: Some(1),
            expected_rv: None,
        }],
    )
    .unwrap();
    assert_eq!(actions(&o), vec![Action::Skipped]);
    let o = apply(
        &mut s,
        vec![Op::Status {
            key: key("zz"),
            status: json!({}),
            expected_uid: None,
            expected_generation: None,
            expected_rv: None,
        }],
    )
    .unwrap();
    assert_eq!(actions(&o), vec![Action::Skipped]);
    assert_eq!(s.revision(), 3);
    // A resourceVersion precondition fails the transaction instead.
    let stale = Op::Status {
        key: key("a"),
        status: json!({"x": 1}),
        expected_uid: None,
        expected_generation: None,
        expected_rv: Some(2),
    };
    assert!(matches!(
        apply(&mut s, vec![stale]),
        Err(TxnError::Conflict {
            expected: 2,
            actual: 3,
            ..
        })
    ));
}

#[test]
fn transactions_are_all_or_nothing() {
    let mut s = State::new(100);
    apply(&mut s, vec![put_op("a", "1", None)]).unwrap();
    let before = s.hash();
    let err = apply(
        &mut s,
        vec![put_op("b", "1", None), put_op("a", "2", Some(7))],
    )
    .unwrap_err();
    assert_eq!(
        err,
        TxnError::Conflict {
            key: key("a"),
            expected: 7,
            actual: 1
        }
    );
    assert!(
        s.get(&key("b")).is_none(),
        "nothing of a refused transaction is applied"
    );
    assert_eq!(s.hash(), before);
    let o = apply(
        &mut s,
        vec![put_op("b", "1", None), put_op("a", "2", Some(1))],
    )
    .unwrap();
    assert_eq!(
        (o.revision, actions(&o)),
        (2, vec![Action::Created, Action::Configured])
    );
    assert_eq!(
        s.events_after(1).unwrap()[0].events.len(),
        2,
        "one revision, all its events"
    );
    assert!(matches!(
        apply(&mut s, vec![put_op("c", "1", None), put_op("c", "2", None)]),
        Err(TxnError::Duplicate { .. })
    ));
}

#[test]
fn optimistic_concurrency_lets_exactly_one_writer_win() {
    let mut s = State::new(100);
    apply(&mut s, vec![put_op("a", "1", None)]).unwrap();
    let first = apply(&mut s, vec![put_op("a", "x", Some(1))]);
    let second = apply(&mut s, vec![put_op("a", "y", Some(1))]);
    assert!(first.is_ok());
    assert_eq!(
        second.unwrap_err(),
        TxnError::Conflict {
            key: key("a"),
            expected: 1,
            actual: 2
        }
    );
    assert!(matches!(
        apply(&mut s, vec![put_op("new", "1", Some(3))]),
        Err(TxnError::Conflict { actual: 0, .. })
    ));
    // Expected resourceVersion 0: create only if absent.
    assert!(apply(&mut s, vec![put_op("new", "1", Some(0))]).is_ok());
    assert_eq!(
        apply(&mut s, vec![put_op("new", "2", Some(0))]).unwrap_err(),
        TxnError::Conflict {
            key: key("new"),
            expected: 0,
            actual: 3
        }
    );
}

#[test]
fn deletes() {
    let mut s = State::new(100);
    apply(&mut s, vec![put_op("a", "1", None)]).unwrap();
    let missing = Op::Delete {
        key: key("nope"),
        expected_rv: None,
        ignore_missing: false,
    };
    assert_eq!(
        apply(&mut s, vec![missing]).unwrap_err(),
        TxnError::NotFound { key: key("nope") }
    );
    let o = apply(
        &mut s,
        vec![
            Op::Delete {
                key: key("a"),
                expected_rv: Some(1),
                ignore_missing: false,
            },
            Op::Delete {
                key: key("nope"),
                expected_rv: None,
                ignore_missing: true,
            },
        ],
    )
    .unwrap();
    assert_eq!(
        (o.revision, actions(&o)),
        (2, vec![Action::Deleted, Action::NotFound])
    );
    let ev = &s.events_after(1).unwrap()[0].events[0];
    assert_eq!(ev.kind, EventKind::Delete);
    assert_eq!(ev.object["metadata"]["resourceVersion"], "2");
    assert!(s.is_empty());
}

#[test]
fn history_window_and_compaction() {
    let mut s = State::new(3);
    for i in 0..5 {
        apply(&mut s, vec![put_op("a", &i.to_string(), None)]).unwrap();
    }
    assert_eq!(s.revision(), 5);
    assert_eq!(s.compact_revision(), 2);
    let revs: Vec<u64> = s
        .events_after(2)
        .unwrap()
        .iter()
        .map(|e| e.revision)
        .collect();
    assert_eq!(revs, vec![3, 4, 5]);
    assert_eq!(
        s.events_after(1).unwrap_err(),
        Compacted {
            requested: 1,
            compact_revision: 2
        }
    );
    assert!(s.events_after(5).unwrap().is_empty());
}

#[test]
fn snapshot_round_trip() {
    let mut s = State::new(10);
    apply(&mut s, vec![put_op("a", "1", None), put_op("b", "2", None)]).unwrap();
    let mut t = State::new(10);
    t.install_snapshot(&s.to_snapshot()).unwrap();
    assert_eq!(t.hash(), s.hash());
    assert_eq!(t.revision(), 1);
    assert_eq!(
        t.events_after(0).unwrap(),
        s.events_after(0).unwrap(),
        "the watch history travels with the snapshot"
    );
    assert_eq!(ObjectKey::of_stored(t.get(&key("b")).unwrap()), key("b"));
    // A member with a smaller window keeps only the newest revisions, and says where its history starts.
    for i in 0..4 {
        apply(&mut s, vec![put_op("a", &i.to_string(), None)]).unwrap();
    }
    let mut small = State::new(2);
    small.install_snapshot(&s.to_snapshot()).unwrap();
    assert_eq!(small.compact_revision(), 3);
    assert!(small.events_after(2).is_err());
    assert_eq!(small.events_after(3).unwrap().len(), 2);
}

#[test]
fn committed_time_never_goes_back() {
    let mut s = State::new(10);
    s.apply_txn(&Txn {
        time_ms: 5_000,
        ops: vec![],
    })
    .0
    .unwrap();
    s.apply_txn(&Txn {
        time_ms: 3_000,
        ops: vec![put_op("a", "1", None)],
    })
    .0
    .unwrap();
    assert_eq!(s.time_ms(), 5_000);
    assert_eq!(
        s.get(&key("a")).unwrap()["metadata"]["creationTimestamp"],
        "1970-01-01T00:00:05Z"
    );
}

#[test]
fn preview_changes_nothing() {
    let mut s = State::new(10);
    apply(&mut s, vec![put_op("a", "1", None)]).unwrap();
    let before = s.hash();
    let o = s
        .preview(&txn(vec![put_op("a", "2", None), put_op("b", "1", None)]))
        .unwrap();
    assert_eq!(
        (o.revision, actions(&o)),
        (2, vec![Action::Configured, Action::Created])
    );
    assert_eq!(s.hash(), before);
    assert!(s.preview(&txn(vec![put_op("a", "2", Some(9))])).is_err());
}

#[test]
fn the_session_sweep_index_follows_the_entries_and_survives_a_snapshot() {
    let k = affinity::key("d", "s1");
    let at = |s: &mut State, time_ms: u64, op: Op| {
        s.apply_txn(&Txn {
            time_ms,
            ops: vec![op],
        })
        .0
    };
    let spec = gw_model::affinity::SessionSpec {
        scope: "HTTPRoute/d/r/rules/0".into(),
        backend: "b".into(),
        issued_ms: 1_000,
        idle_timeout_ms: Some(2_000),
        absolute_timeout_ms: None,
    };
    let mut s = State::new(100);
    let window = spec.window_ms();
    let touch = Op::SessionTouch {
        key: k.clone(),
        spec,
        uid: "u".into(),
    };
    at(&mut s, 1_000, touch.clone()).unwrap();
    assert!(s.sessions_to_sweep(3_000, 10).is_empty());
    assert_eq!(s.sessions_to_sweep(3_001, 10), vec![k.clone()]);
    // Activity moves the deadline. It is recorded beside the entry: no new revision, no event for
    // watchers; but it is committed state, in the hash and in snapshots.
    let (revision, hash) = (s.revision(), s.hash());
    let events = s.events_after(0).unwrap().len();
    at(&mut s, 2_500, touch).unwrap();
    assert!(s.sessions_to_sweep(3_001, 10).is_empty());
    assert_eq!(s.sessions_to_sweep(4_501, 10), vec![k.clone()]);
    assert_eq!(s.revision(), revision);
    assert_eq!(s.events_after(0).unwrap().len(), events);
    assert_ne!(s.hash(), hash);
    let mut restored = State::new(100);
    restored.install_snapshot(&s.to_snapshot()).unwrap();
    assert_eq!(restored.hash(), s.hash());
    assert!(restored.sessions_to_sweep(3_001, 10).is_empty());
    // Activity by key alone (the leader found the entry recorded): the same, and nothing for a
    // session without an entry.
    let active = |name: &str| Op::SessionActive {
        key: affinity::key("d", name),
    };
    at(&mut restored, 2_600, active("s1")).unwrap();
    assert_ne!(restored.hash(), s.hash());
    assert_eq!(restored.sessions_to_sweep(4_601, 10), vec![k.clone()]);
    assert!(restored.sessions_to_sweep(4_600, 10).is_empty());
    at(&mut s, 2_600, active("s1")).unwrap();
    assert_eq!(restored.hash(), s.hash());
    let missing = at(&mut s, 2_600, active("none")).unwrap();
    assert_eq!(missing.results[0].action, Action::NotFound);
    assert_eq!(restored.hash(), s.hash());
    // Expired: next due when purgeable; purged: gone.
    let expire = Op::SessionExpire {
        key: k.clone(),
        evict: false,
    };
    at(&mut s, 4_501, expire.clone()).unwrap();
    assert!(s.get(&k).unwrap()["status"].get("expiredMs").is_none());
    at(&mut s, 4_601, expire.clone()).unwrap();
    assert_eq!(s.revision(), revision + 1);
    assert_eq!(s.get(&k).unwrap()["status"]["lastActiveMs"], 2_600);
    let purge_at = 1_000 + window + affinity::CLOCK_SKEW_MS;
    assert!(s.sessions_to_sweep(purge_at - 1, 10).is_empty());
    let mut restored = State::new(100);
    restored.install_snapshot(&s.to_snapshot()).unwrap();
    assert_eq!(restored.sessions_to_sweep(purge_at, 10), vec![k.clone()]);
    at(&mut s, purge_at, expire).unwrap();
    assert!(s.get(&k).is_none());
    assert!(s.sessions_to_sweep(u64::MAX, 10).is_empty());
}

fn delete_op(name: &str) -> Op {
    Op::Delete {
        key: key(name),
        expected_rv: None,
        ignore_missing: false,
    }
}

fn data_at(s: &State, revision: u64) -> Vec<(String, String)> {
    s.list_at(revision, "", "ConfigMap", "default")
        .unwrap()
        .into_iter()
        .map(|(k, o)| (k.name, o["data"]["k"].as_str().unwrap_or("").to_string()))
        .collect()
}

#[test]
fn pages_at_a_revision_join_into_the_list_at_it() {
    let mut s = State::new(100);
    let names: Vec<String> = (0..20).map(|i| format!("o{i:02}")).collect();
    apply(&mut s, names.iter().map(|n| put_op(n, "1", None)).collect()).unwrap(); // 1
    // Changes after revision 1 inside and around the pages: deletes, a re-creation, new objects.
    apply(
        &mut s,
        vec![delete_op("o03"), delete_op("o04"), put_op("o05", "2", None)],
    )
    .unwrap();
    apply(
        &mut s,
        vec![put_op("o03", "3", None), put_op("o07a", "1", None)],
    )
    .unwrap();
    for (revision, limit) in [(1, 3), (1, 1), (2, 4), (3, 7), (3, 100)] {
        let whole = s.list_at(revision, "", "ConfigMap", "default").unwrap();
        let mut joined = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .page_at(revision, "", "ConfigMap", "default", after.as_ref(), limit)
                .unwrap();
            assert!(page.len() <= limit);
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            joined.extend(page);
        }
        assert_eq!(joined, whole, "revision {revision}, pages of {limit}");
    }
}

#[test]
fn lists_at_an_earlier_revision_undo_the_changes_since() {
    let mut s = State::new(4);
    apply(&mut s, vec![put_op("a", "1", None), put_op("b", "1", None)]).unwrap(); // 1
    apply(&mut s, vec![put_op("a", "2", None)]).unwrap(); // 2
    apply(&mut s, vec![delete_op("b"), put_op("c", "1", None)]).unwrap(); // 3
    apply(&mut s, vec![put_op("d", "1", None)]).unwrap(); // 4
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(data_at(&s, 4), pairs(&[("a", "2"), ("c", "1"), ("d", "1")]));
    assert_eq!(data_at(&s, 2), pairs(&[("a", "2"), ("b", "1")]));
    assert_eq!(data_at(&s, 1), pairs(&[("a", "1"), ("b", "1")]));
    assert!(data_at(&s, 0).is_empty());
    assert_eq!(
        s.list_at(2, "", "ConfigMap", "default").unwrap()[1].1["metadata"]["resourceVersion"],
        "1",
        "the object as it was, its resourceVersion included"
    );
    // One more revision pushes revision 1 out of a four-revision history.
    apply(&mut s, vec![put_op("e", "1", None)]).unwrap(); // 5
    assert!(s.list_at(0, "", "ConfigMap", "default").is_err());
    assert_eq!(data_at(&s, 1), pairs(&[("a", "1"), ("b", "1")]));
    // A snapshot keeps what is needed to go back.
    let mut restored = State::new(4);
    restored.install_snapshot(&s.to_snapshot()).unwrap();
    assert_eq!(data_at(&restored, 2), data_at(&s, 2));
}

#[test]
fn finalizers_hold_a_delete_until_the_last_one_is_removed() {
    let mut s = State::new(100);
    let mut held = cm("a", "1");
    held["metadata"]["finalizers"] = json!(["example.com/cleanup"]);
    let put_obj = |object: Value| Op::Put {
        key: key("a"),
        object,
        expected_rv: None,
        uid: "u".into(),
    };
    apply(&mut s, vec![put_obj(held.clone())]).unwrap();
    let o = apply(&mut s, vec![delete_op("a")]).unwrap();
    assert_eq!((o.revision, actions(&o)), (2, vec![Action::Terminating]));
    let a = s.get(&key("a")).unwrap().clone();
    assert!(a["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(a["metadata"]["generation"], 2);
    // Deleting again changes nothing; an update keeps the mark.
    let o = apply(&mut s, vec![delete_op("a")]).unwrap();
    assert_eq!((o.revision, actions(&o)), (2, vec![Action::Terminating]));
    let mut changed = held.clone();
    changed["data"]["k"] = json!("2");
    apply(&mut s, vec![put_obj(changed.clone())]).unwrap();
    assert_eq!(
        s.get(&key("a")).unwrap()["metadata"]["deletionTimestamp"],
        a["metadata"]["deletionTimestamp"]
    );
    // The last finalizer removed: the object is gone, and the delete event says so.
    changed["metadata"]["finalizers"] = json!([]);
    let (o, events) = s.apply_txn(&txn(vec![put_obj(changed)]));
    assert_eq!(actions(&o.unwrap()), vec![Action::Deleted]);
    assert_eq!(events.unwrap().events[0].kind, EventKind::Delete);
    assert!(s.get(&key("a")).is_none());
}

#[test]
fn managed_fields_stay_unless_a_document_brings_new_ones() {
    let mut s = State::new(100);
    let mut with = cm("a", "1");
    with["metadata"]["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
    let put_obj = |object: Value| Op::Put {
        key: key("a"),
        object,
        expected_rv: None,
        uid: "u".into(),
    };
    apply(&mut s, vec![put_obj(with)]).unwrap();
    let o = apply(&mut s, vec![put_obj(cm("a", "1"))]).unwrap();
    assert_eq!(actions(&o), vec![Action::Unchanged]);
    apply(&mut s, vec![put_obj(cm("a", "2"))]).unwrap();
    assert_eq!(
        s.get(&key("a")).unwrap()["metadata"]["managedFields"][0]["manager"],
        "kubectl"
    );
}

#[test]
fn the_config_revision_skips_gws_own_bookkeeping() {
    let mut s = State::new(100);
    apply(&mut s, vec![put_op("a", "1", None), put_op("b", "1", None)]).unwrap(); // 1
    let lease = gw_model::registry::key("n1");
    let registration = Op::Put {
        key: lease.clone(),
        object: json!({"apiVersion": "gw.dev/v1alpha1", "kind": "GatewayNode", "metadata": {"name": "n1"}, "spec": {}}),
        expected_rv: None,
        uid: "uid-n1".into(),
    };
    apply(&mut s, vec![registration]).unwrap(); // 2
    assert_eq!((s.revision(), s.config_revision()), (2, 1));
    apply(&mut s, vec![delete_op("b")]).unwrap(); // 3
    apply(
        &mut s,
        vec![Op::Delete {
            key: lease,
            expected_rv: None,
            ignore_missing: false,
        }],
    )
    .unwrap(); // 4
    assert_eq!(
        (s.revision(), s.config_revision()),
        (4, 3),
        "a config delete counts"
    );
}
