//! Properties of a 3-member store cluster of real `gw-api-server` processes, driven through `gwadm` and
//! the gRPC API (issue: "The Raft config store"). Each test starts its own cluster on free loopback ports
//! in a temporary directory.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use gw_testkit::cluster::{Cluster, ClusterOptions};
use serde_json::Value;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

const ELECTION: Duration = Duration::from_secs(20);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "gwadm failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The API addresses of every member but `except`, comma-separated.
fn others(c: &Cluster, except: u64) -> String {
    let live: Vec<String> = c
        .ids()
        .into_iter()
        .filter(|id| *id != except)
        .map(|id| c.addr(id).to_string())
        .collect();
    live.join(",")
}

const GATEWAY_ROUTE_SERVICE: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: shop}
spec:
  gatewayClassName: gw
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: store, namespace: shop}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /store}}]
    backendRefs: [{name: store, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: store, namespace: shop}
spec:
  ports: [{name: http, port: 80}]
";

/// Member `id`'s status once `done` holds of it (or the election timeout passed).
async fn status_once(
    c: &Cluster,
    id: u64,
    done: impl Fn(&gw_proto::MemberStatus) -> bool,
) -> gw_proto::MemberStatus {
    let deadline = std::time::Instant::now() + ELECTION;
    loop {
        let s = c.member_status(id).await.unwrap();
        if done(&s) || std::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader's status once it has purged its log behind a snapshot (or the election timeout passed).
async fn purged_status(c: &Cluster, leader: u64) -> gw_proto::MemberStatus {
    status_once(c, leader, |s| s.purged_index > 5).await
}

/// Writes ConfigMaps `cm-0` .. `cm-{n-1}` through `servers`, one apply each.
fn apply_config_maps(c: &Cluster, servers: &str, n: usize) {
    for i in 0..n {
        let f = write(
            &c.dir,
            "n.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{i: '{i}'}}\n"
            ),
        );
        ok(c.gwadm(servers, &["apply", "-f", &f]));
    }
}

/// Starts a stopped member again and waits until it has applied `revision`; its status then.
async fn restarted_at(c: &mut Cluster, member: u64, revision: u64) -> gw_proto::MemberStatus {
    c.spawn(member).unwrap();
    c.wait_for_revision(member, revision, ELECTION)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(member, 40)))
}

fn revision_of(apply_output: &str) -> u64 {
    apply_output
        .lines()
        .find_map(|l| l.strip_prefix("revision "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision line in {apply_output}"))
}

/// A write sent to a follower is forwarded to the leader, and once acknowledged it is readable
/// (linearizably) through each of the other members: the JSON each of them returns is the same object.
#[tokio::test(flavor = "multi_thread")]
async fn apply_via_follower_is_readable_from_every_member() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let file = write(&c.dir, "objs.yaml", GATEWAY_ROUTE_SERVICE);
    let out = ok(c.gwadm(c.addr(follower), &["apply", "-f", &file]));
    assert!(
        out.contains("httproute.gateway.networking.k8s.io/store (namespace shop) created"),
        "{out}"
    );
    let mut seen = Vec::new();
    for other in c.ids().into_iter().filter(|id| *id != follower) {
        for (kind, name) in [
            ("gateway", "gw"),
            ("httproute", "store"),
            ("service", "store"),
        ] {
            let json = ok(c.gwadm(
                c.addr(other),
                &["get", kind, name, "-n", "shop", "-o", "json"],
            ));
            let obj: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(obj["metadata"]["name"], name);
            assert_eq!(obj["metadata"]["resourceVersion"], "1");
            seen.push((other, kind, obj));
        }
    }
    for (_, kind, obj) in &seen {
        let same = seen.iter().find(|(_, k, _)| k == kind).unwrap();
        assert_eq!(obj, &same.2, "members disagree about {kind}");
    }
}

/// After `kill -9` of the leader a new leader is elected, a second apply succeeds, and the old leader,
/// restarted from its data directory, has both objects: no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread")]
async fn leader_crash_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let old = c.wait_for_leader(ELECTION).await.unwrap();
    let first = write(
        &c.dir,
        "first.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: first}\ndata: {k: v1}\n",
    );
    let second = write(
        &c.dir,
        "second.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: second}\ndata: {k: v2}\n",
    );
    assert_eq!(
        revision_of(&ok(c.gwadm(&c.servers(), &["apply", "-f", &first]))),
        1
    );
    c.kill(old);
    let new = c.wait_for_leader(ELECTION).await.unwrap();
    assert_ne!(new, old);
    assert_eq!(
        revision_of(&ok(c.gwadm(&c.servers(), &["apply", "-f", &second]))),
        2
    );
    c.spawn(old).unwrap();
    c.wait_for_revision(old, 2, ELECTION)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(old, 30)));
    for name in ["first", "second"] {
        let json = ok(c.gwadm(
            c.addr(old),
            &["get", "cm", name, "-o", "json", "--serializable"],
        ));
        let obj: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(obj["metadata"]["name"], name);
    }
}

/// A member that is down while the leader snapshots and purges its log cannot catch up by replaying log
/// entries; it installs a snapshot and ends in the same state (revision, objects, state hash).
#[tokio::test(flavor = "multi_thread")]
async fn lagging_member_catches_up_by_snapshot() {
    let opts = ClusterOptions {
        extra_args: ["--snapshot-logs", "10", "--keep-logs", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let mut c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let lagging = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let f = write(
        &c.dir,
        "a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before}\n",
    );
    ok(c.gwadm(&c.servers(), &["apply", "-f", &f]));
    c.wait_for_revision(lagging, 1, ELECTION).await.unwrap();
    c.stop(lagging);
    apply_config_maps(&c, &others(&c, lagging), 40);
    // openraft purges behind a snapshot once no replication request is using those entries (the
    // requests to the stopped member time out and back off).
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let ls = purged_status(&c, leader).await;
    assert!(
        ls.purged_index > 5,
        "the leader purged its log behind a snapshot: {ls:?}"
    );
    let s = restarted_at(&mut c, lagging, ls.applied_revision).await;
    assert!(
        s.snapshot_index > 0,
        "the lagging member installed a snapshot: {s:?}"
    );
    let ls = c.member_status(leader).await.unwrap();
    assert_eq!(s.applied_revision, ls.applied_revision);
    assert_eq!(
        s.state_hash, ls.state_hash,
        "same objects at the same revision"
    );
    let json = ok(c.gwadm(
        c.addr(lagging),
        &["get", "cm", "-o", "json", "--serializable"],
    ));
    let list: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 41);
}

/// `gwadm cluster compact-log` snapshots the member it is sent to and purges its log at once (the
/// snapshot policy here would not for 5 000 entries); a member stopped before that catches up by
/// snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn compact_log_purges_at_once_and_a_stopped_member_catches_up_by_snapshot() {
    let mut c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let lagging = c.ids().into_iter().find(|id| *id != leader).unwrap();
    c.stop(lagging);
    apply_config_maps(&c, &others(&c, lagging), 5);
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let before = c.member_status(leader).await.unwrap();
    assert_eq!(before.purged_index, 0, "nothing purged yet: {before:?}");
    let out = ok(c.gwadm(c.addr(leader), &["cluster", "compact-log"]));
    let ls = c.member_status(leader).await.unwrap();
    assert!(
        ls.snapshot_index >= before.applied_index && ls.purged_index >= before.applied_index,
        "snapshot and purge reach what was applied ({}): {ls:?}\n{out}",
        before.applied_index
    );
    assert!(
        out.contains(&format!("log purged up to {}", ls.purged_index)),
        "{out}"
    );
    let s = restarted_at(&mut c, lagging, ls.applied_revision).await;
    assert!(
        s.snapshot_index >= ls.purged_index,
        "the stopped member installed the snapshot: {s:?}"
    );
    assert_eq!(
        s.state_hash,
        c.member_status(leader).await.unwrap().state_hash
    );
}

/// A write to a leader cut off from its quorum is not held for ever: the member gives up waiting for
/// the commit, and gwadm says the outcome is unknown (not that it failed): the entry is in the leader's
/// log, and commits if the leader keeps its leadership once the quorum is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_without_quorum_has_an_unknown_outcome() {
    let mut c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let followers: Vec<u64> = c.ids().into_iter().filter(|id| *id != leader).collect();
    for f in &followers {
        c.stop(*f);
    }
    let f = write(
        &c.dir,
        "a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: maybe}\n",
    );
    let o = c.gwadm(c.addr(leader), &["--retry-for", "1", "apply", "-f", &f]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("the outcome is unknown") && stderr(&o).contains("may still commit"),
        "{}",
        stderr(&o)
    );
}

/// A follower cut off from the other members for several election timeouts does not raise its term
/// (its pre-votes find no majority), and when it can reach them again it follows the leader they kept
/// all along: same leader, same term, and it catches up. Without pre-vote (openraft 0.9 has none), it
/// started an election at every timeout, and its higher term deposed the leader when it came back.
/// Needs root and iptables (as the fault suite does).
#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_follower_rejoins_without_deposing_the_leader() {
    let prefix = format!("127.78.{}.", std::process::id() % 250);
    let opts = ClusterOptions {
        ip_prefix: Some(prefix.clone()),
        ..Default::default()
    };
    let c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let term = c.member_status(leader).await.unwrap().term;
    let isolated = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let fw = gw_testkit::firewall::Firewall::new("gwprevote").expect("iptables (needs root)");
    let ip = |id: u64| format!("{prefix}{id}");
    for other in c.ids().into_iter().filter(|id| *id != isolated) {
        fw.drop(&ip(isolated), &ip(other)).unwrap();
        fw.drop(&ip(other), &ip(isolated)).unwrap();
    }
    // Without pre-vote, a member cut off started its first election after 4.5–6 s (openraft 0.9's
    // leader lease, then its election timeout) and the next ones 1.5–3 s apart: 10 s is time for two.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cut_off = c.member_status(isolated).await.unwrap();
    assert_eq!(
        cut_off.term,
        term,
        "the isolated member raised its term: {cut_off:?}\n{}",
        c.log_tail(isolated, 20)
    );
    fw.heal().unwrap();
    let f = write(
        &c.dir,
        "after.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after}\n",
    );
    let revision = revision_of(&ok(c.gwadm(&c.servers(), &["apply", "-f", &f])));
    c.wait_for_revision(isolated, revision, ELECTION)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(isolated, 30)));
    for id in c.ids() {
        let s = c.member_status(id).await.unwrap();
        assert_eq!((s.leader, s.term), (leader, term), "member {id}: {s:?}");
    }
}

/// A member that missed several large entries (together more than one replication call carries) catches
/// up: the leader sends them in smaller batches instead of timing out on the same big call for ever.
#[tokio::test(flavor = "multi_thread")]
async fn large_entries_reach_a_lagging_member_in_smaller_batches() {
    let mut c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let lagging = c.ids().into_iter().find(|id| *id != leader).unwrap();
    c.stop(lagging);
    let live = others(&c, lagging);
    // Twelve applies of a ConfigMap of 500,000 bytes: 6 MB of entries, four times what one
    // replication call may carry.
    let value = "x".repeat(500_000);
    for i in 0..12 {
        let docs: Vec<String> = (0..1)
            .map(|j| {
                format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big-{i}-{j}}}\ndata: {{v: {value}}}\n")
            })
            .collect();
        let f = write(&c.dir, "big.yaml", &docs.join("---\n"));
        ok(c.gwadm(&live, &["apply", "-f", &f]));
    }
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let ls = c.wait_for_revision(leader, 12, ELECTION).await.unwrap();
    c.spawn(lagging).unwrap();
    // (Generous: under a loaded CI machine a debug build takes its time.)
    let s = c
        .wait_for_revision(lagging, ls.applied_revision, ELECTION * 3)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(lagging, 40)));
    assert_eq!(
        s.snapshot_index, 0,
        "caught up by replication, not a snapshot"
    );
    assert_eq!(s.state_hash, ls.state_hash);
}

/// `gwadm watch --from R` against any member prints exactly the events after R, in order, once each; a
/// resume from a compacted revision gets an explicit snapshot instead of a gap.
#[tokio::test(flavor = "multi_thread")]
async fn watch_from_revision_on_every_member() {
    let opts = ClusterOptions {
        extra_args: vec!["--history-revisions".into(), "8".into()],
        ..Default::default()
    };
    let c = Cluster::start(3, opts).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    for i in 1..=12 {
        let f = write(
            &c.dir,
            "w.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{}}}\ndata: {{i: '{i}'}}\n",
                i % 3
            ),
        );
        assert_eq!(
            revision_of(&ok(c.gwadm(&c.servers(), &["apply", "-f", &f]))),
            i
        );
    }
    for id in c.ids() {
        c.wait_for_revision(id, 12, ELECTION).await.unwrap();
        let out = ok(c.gwadm(
            c.addr(id),
            &[
                "watch",
                "--from",
                "6",
                "-o",
                "json",
                "--until",
                "12",
                "--timeout",
                "10",
            ],
        ));
        let revs: Vec<u64> = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|e| {
                assert_eq!(e["type"], "PUT");
                e["revision"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(
            revs,
            (7..=12).collect::<Vec<_>>(),
            "member {id}: exactly the events after 6, in order, once"
        );
        let out = ok(c.gwadm(
            c.addr(id),
            &[
                "watch",
                "--from",
                "2",
                "-o",
                "json",
                "--until",
                "12",
                "--timeout",
                "10",
            ],
        ));
        let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(first["type"], "SNAPSHOT", "member {id}: {out}");
        assert_eq!(first["compacted"], true);
        assert_eq!(first["revision"], 12);
        assert_eq!(first["objects"].as_array().unwrap().len(), 3);
    }
}

/// Invalid documents are refused with an error naming the file, the document, the object and the field,
/// and nothing of the refused apply is stored.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_documents_are_refused_whole() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let good = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: innocent}\n---\n";
    let refs: Vec<String> = (0..17)
        .map(|i| format!("{{name: s{i}, port: 80}}"))
        .collect();
    let too_many = write(
        &c.dir,
        "too-many.yaml",
        &format!(
            "{good}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: big, namespace: app}}\nspec:\n  rules:\n  - backendRefs: [{}]\n",
            refs.join(", ")
        ),
    );
    let permanent = write(
        &c.dir,
        "permanent.yaml",
        &format!(
            "{good}apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: BackendLBPolicy\nmetadata: {{name: lb}}\nspec:\n  targetRefs: [{{group: '', kind: Service, name: s}}]\n  sessionPersistence:\n    cookieConfig: {{lifetimeType: Permanent}}\n"
        ),
    );
    let syntax = write(
        &c.dir,
        "syntax.yaml",
        &format!(
            "{good}apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: two}}\n---\nmetadata: [oops\n"
        ),
    );
    // One apply over the store's limit (a 2 MiB ConfigMap): refused before it is sent, saying the
    // size and the limit.
    let big = write(
        &c.dir,
        "big.yaml",
        &format!(
            "{good}apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{v: {}}}\n",
            "x".repeat(2 << 20)
        ),
    );
    let cases = [
        (
            big,
            "bytes, over the store's limit of 1572864 bytes for one apply: split the documents into several applies",
        ),
        (
            too_many,
            "too-many.yaml: document 2 (HTTPRoute app/big): spec.rules[0].backendRefs: Too many: 17: must have at most 16 items",
        ),
        (
            permanent,
            "permanent.yaml: document 2 (BackendLBPolicy default/lb): spec.sessionPersistence: Invalid value: AbsoluteTimeout must be specified when cookie lifetimeType is Permanent",
        ),
        (
            syntax,
            "syntax.yaml: document 3 (starting at line 9): YAML syntax error at line 9",
        ),
    ];
    for (file, expected) in cases {
        let o = c.gwadm(&c.servers(), &["apply", "-f", &file]);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(expected),
            "expected {expected:?} in {}",
            stderr(&o)
        );
    }
    // The member checks too (for clients that do not): the same error, as INVALID_ARGUMENT.
    let channel = gw_client::Dialer::new(c.pki().admin_security())
        .connect(c.addr(1))
        .await
        .unwrap();
    let huge = gw_proto::Document {
        json: serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "big", "namespace": "default"}, "data": {"v": "x".repeat(2 << 20)}})
        .to_string(),
        source: "raw".into(),
        index: 1,
    };
    let refused = gw_client::Client::config(channel)
        .apply(gw_proto::ApplyRequest {
            documents: vec![huge],
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("over the store's limit"),
        "{refused:?}"
    );
    let o = c.gwadm(&c.servers(), &["get", "cm", "innocent"]);
    assert!(
        !o.status.success() && stderr(&o).contains("not found"),
        "nothing from a refused apply is stored"
    );
    let status = ok(c.gwadm(&c.servers(), &["cluster", "status", "-o", "json"]));
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["revision"], 0);
}

/// Two concurrent applies that expect the same resourceVersion: exactly one wins, the other gets a
/// conflict (optimistic concurrency; no silent overwrite).
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_conditional_applies_one_wins() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let f = write(
        &c.dir,
        "base.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\ndata: {owner: nobody}\n",
    );
    let rv = revision_of(&ok(c.gwadm(&c.servers(), &["apply", "-f", &f])));
    for round in 0..5 {
        let current: Value = serde_json::from_str(&ok(
            c.gwadm(&c.servers(), &["get", "cm", "shared", "-o", "json"])
        ))
        .unwrap();
        let rv_now = current["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(rv_now.parse::<u64>().unwrap() >= rv);
        let files: Vec<String> = ["alice", "bob"]
            .iter()
            .map(|who| {
                write(&c.dir, &format!("{who}.yaml"), &format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: shared, resourceVersion: '{rv_now}'}}\ndata: {{owner: {who}-{round}}}\n"
                ))
            })
            .collect();
        let servers: Vec<String> = c
            .ids()
            .into_iter()
            .map(|id| c.addr(id).to_string())
            .collect();
        let handles: Vec<_> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let mut args = c.pki().admin().to_args();
                args.extend([
                    "--server".to_string(),
                    servers[i % servers.len()].clone(),
                    "apply".into(),
                    "-f".into(),
                    f.clone(),
                ]);
                std::thread::spawn(move || {
                    std::process::Command::new(gw_testkit::procs::bin("gwadm").unwrap())
                        .args(args)
                        .output()
                        .unwrap()
                })
            })
            .collect();
        let outs: Vec<Output> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners = outs.iter().filter(|o| o.status.success()).count();
        assert_eq!(
            winners,
            1,
            "round {round}: exactly one writer wins: {:?}",
            outs.iter().map(stderr).collect::<Vec<_>>()
        );
        let loser = outs.iter().find(|o| !o.status.success()).unwrap();
        assert!(
            stderr(loser).contains("conflict: ConfigMap default/shared: expected resourceVersion"),
            "{}",
            stderr(loser)
        );
    }
}

/// `kill -9` of every member at once, then a restart: every acknowledged write is still there, on every
/// member (the state machine is rebuilt from the last snapshot and the synced log).
#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_crash_keeps_acknowledged_writes() {
    let opts = ClusterOptions {
        extra_args: vec!["--snapshot-logs".into(), "7".into()],
        ..Default::default()
    };
    let mut c = Cluster::start(3, opts).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    for i in 0..20 {
        let f = write(
            &c.dir,
            "x.yaml",
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\n"),
        );
        assert_eq!(
            revision_of(&ok(c.gwadm(&c.servers(), &["apply", "-f", &f]))),
            i + 1
        );
    }
    for id in c.ids() {
        c.kill(id);
    }
    for id in c.ids() {
        c.spawn(id).unwrap();
    }
    c.wait_for_leader(ELECTION).await.unwrap();
    for id in c.ids() {
        let s = c
            .wait_for_revision(id, 20, ELECTION)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(id, 30)));
        assert_eq!(s.applied_revision, 20);
        let json = ok(c.gwadm(c.addr(id), &["get", "cm", "-o", "json", "--serializable"]));
        let list: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 20, "member {id}");
    }
    // History survives too: a watch can resume from before the crash.
    let out = ok(c.gwadm(
        &c.servers(),
        &[
            "watch",
            "--from",
            "15",
            "-o",
            "json",
            "--until",
            "20",
            "--timeout",
            "10",
        ],
    ));
    assert_eq!(out.lines().count(), 5, "{out}");
}

/// Regression (found by gw-jepsen's watch checker under the membership nemesis): a watcher that
/// resumes on a lagging member after a revision the member has not reached yet must not be sent back
/// in time when the member then catches up by installing a snapshot — it used to get a "compacted"
/// snapshot older than what it had, followed by revisions it had already received.
#[tokio::test(flavor = "multi_thread")]
async fn watch_resumed_ahead_of_a_member_survives_its_snapshot_install() {
    use gw_proto as pb;
    use tokio_stream::StreamExt;
    let opts = ClusterOptions {
        extra_args: ["--snapshot-logs", "10", "--keep-logs", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    let c = Cluster::start(3, opts).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let lagging = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let cm = |i: usize| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{i: '{i}'}}\n")
    };
    ok(c.gwadm(
        &c.servers(),
        &["apply", "-f", &write(&c.dir, "a.yaml", &cm(0))],
    ));
    c.wait_for_revision(lagging, 1, ELECTION).await.unwrap();
    c.pause(lagging);
    let live = others(&c, lagging);
    for i in 1..=45 {
        ok(c.gwadm(&live, &["apply", "-f", &write(&c.dir, "n.yaml", &cm(i))]));
    }
    let ls = purged_status(&c, leader).await;
    assert!(ls.purged_index > 5, "the leader purged its log: {ls:?}");
    let resume_after = ls.applied_revision;
    // The watch request reaches the paused member first; its snapshot install comes after.
    let channel = gw_client::Dialer::new(c.pki().admin_security())
        .lazy(c.addr(lagging))
        .unwrap();
    let req = pb::WatchRequest {
        after_revision: Some(resume_after),
        kinds: vec![],
        namespace: String::new(),
        bookmark_interval_ms: 200,
        show_secret_values: false,
    };
    let watch = tokio::spawn(async move {
        let mut stream = pb::config_client::ConfigClient::new(channel)
            .watch(req)
            .await
            .unwrap()
            .into_inner();
        // Until the stream has been quiet but for bookmarks for 3 s (bookmarks come every 200 ms).
        let mut got = Vec::new();
        let mut quiet_since = std::time::Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(3) {
            match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
                Ok(Some(Ok(m))) => {
                    if !matches!(m.body, Some(pb::watch_response::Body::Bookmark(_))) {
                        quiet_since = std::time::Instant::now();
                    }
                    got.push(m.body);
                }
                _ => break,
            }
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.resume(lagging);
    c.wait_for_revision(lagging, resume_after, ELECTION)
        .await
        .unwrap();
    for i in 46..=48 {
        ok(c.gwadm(&live, &["apply", "-f", &write(&c.dir, "n.yaml", &cm(i))]));
    }
    let got = watch.await.unwrap();
    let mut last = resume_after;
    let mut new_events = 0;
    for body in got {
        match body {
            Some(pb::watch_response::Body::Snapshot(s)) => {
                assert!(
                    s.revision >= resume_after,
                    "a snapshot at {} sent to a watcher that had {resume_after}",
                    s.revision
                );
                last = last.max(s.revision);
            }
            Some(pb::watch_response::Body::Events(e)) => {
                assert!(
                    e.revision > last,
                    "revision {} delivered after {last}",
                    e.revision
                );
                last = e.revision;
                new_events += 1;
            }
            _ => {}
        }
    }
    assert_eq!(
        new_events, 3,
        "the three writes after the resume, once each"
    );
}

/// A list comes in pages, all at the first page's revision whatever is written between them; gwadm
/// pages through lists larger than one page; a malformed continue token is refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn lists_come_in_pages_at_one_revision() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let names: Vec<String> = (0..1234).map(|i| format!("cm-{i:04}")).collect();
    let yaml: String = names
        .iter()
        .map(|n| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {n}, namespace: pg}}\ndata: {{v: \"1\"}}\n"))
        .collect();
    ok(c.gwadm(
        c.addr(1),
        &["apply", "-f", &write(&c.dir, "many.yaml", &yaml)],
    ));
    let client = gw_client::Client::new(
        &[c.addr(1).to_string()],
        Duration::from_secs(10),
        &gw_client::Dialer::new(c.pki().admin_security()),
    )
    .unwrap();
    let req = gw_proto::ListRequest {
        kind: "ConfigMap".into(),
        namespace: "pg".into(),
        limit: 500,
        ..Default::default()
    };
    let first = client.list(req.clone()).await.unwrap();
    assert_eq!(first.objects_json.len(), 500);
    assert!(!first.continue_token.is_empty(), "more pages follow");
    // Between the pages: objects of the later pages deleted, changed and added.
    let changes = "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-0999a, namespace: pg}\n\
                   ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-1000, namespace: pg}\ndata: {v: \"2\"}\n";
    ok(c.gwadm(
        c.addr(1),
        &["apply", "-f", &write(&c.dir, "changes.yaml", changes)],
    ));
    ok(c.gwadm(c.addr(1), &["delete", "configmap", "cm-1200", "-n", "pg"]));
    let mut seen: Vec<Value> = Vec::new();
    let mut token = first.continue_token.clone();
    seen.extend(
        first
            .objects_json
            .iter()
            .map(|o| serde_json::from_str(o).unwrap()),
    );
    while !token.is_empty() {
        let page = client
            .list(gw_proto::ListRequest {
                continue_token: token,
                ..req.clone()
            })
            .await
            .unwrap();
        assert_eq!(page.revision, first.revision, "every page at one revision");
        seen.extend(
            page.objects_json
                .iter()
                .map(|o| serde_json::from_str(o).unwrap()),
        );
        token = page.continue_token;
    }
    let seen_names: Vec<&str> = seen
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(seen_names, names, "the list as it was at the first page");
    assert!(seen.iter().all(|o| o["data"]["v"] == "1"));
    // gwadm pages through the list as it is now.
    let json = ok(c.gwadm(c.addr(1), &["get", "configmaps", "-n", "pg", "-o", "json"]));
    let list: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 1234);
    let affinity = ok(c.gwadm(c.addr(1), &["affinity", "ls", "-o", "json"]));
    assert_eq!(
        serde_json::from_str::<Value>(&affinity).unwrap(),
        serde_json::json!([])
    );
    let bad = client
        .list(gw_proto::ListRequest {
            continue_token: "not-a-token".into(),
            ..req
        })
        .await
        .unwrap_err();
    assert!(
        bad.to_string()
            .contains("continue token \"not-a-token\" is malformed"),
        "{bad}"
    );
}

/// The value of one sample (`name{labels}` as printed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A member's /metrics shows Raft, the store, proposals, fsyncs and every RPC by method and code.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_exports_raft_rpc_and_storage_metrics() {
    let c = Cluster::start(
        1,
        ClusterOptions {
            metrics: true,
            ..Default::default()
        },
    )
    .unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m, namespace: d}\ndata: {a: b}\n";
    ok(c.gwadm(c.addr(1), &["apply", "-f", &write(&c.dir, "cm.yaml", cm)]));
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m, namespace: d}\ndata: {a: 1}\n";
    let o = c.gwadm(c.addr(1), &["apply", "-f", &write(&c.dir, "bad.yaml", bad)]);
    assert!(!o.status.success());
    let text = c.scrape(1).await.unwrap();
    let has = |series: &str, min: f64| {
        let v = sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(v >= min, "{series} = {v}");
    };
    has("gw_store_raft_term", 1.0);
    has("gw_store_raft_is_leader", 1.0);
    has("gw_store_raft_leader", 1.0);
    has("gw_store_raft_applied_index", 2.0);
    has("gw_store_revision", 1.0);
    has("gw_store_objects", 1.0);
    has("gw_store_proposals_total{outcome=\"committed\"}", 1.0);
    has("gw_store_proposal_duration_seconds_count", 1.0);
    has("gw_store_fsync_duration_seconds_count", 1.0);
    has(
        "gw_store_rpc_requests_total{method=\"/gw.v1.Config/Apply\",code=\"0\"}",
        1.0,
    );
    has(
        "gw_store_rpc_requests_total{method=\"/gw.v1.Config/Apply\",code=\"3\"}",
        1.0,
    );
    has(
        "gw_store_rpc_duration_seconds_count{method=\"/gw.v1.Config/Apply\"}",
        2.0,
    );
    has("gw_store_watchers", 0.0);
}

/// Session activity sent at once through a follower and the leader is gathered on the leader: every
/// call is answered once its sessions have committed, with the results of its own sessions only
/// (a session named by two calls is in both answers), and every session has its entry.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_session_activity_is_committed_and_answered_per_call() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    let client = |member: u64| {
        gw_client::Client::new(
            &[c.addr(member).to_string()],
            Duration::from_secs(10),
            &gw_client::Dialer::new(c.pki().admin_security()),
        )
        .unwrap()
    };
    let session = |i: usize| gw_proto::Session {
        namespace: "shop".into(),
        id: format!("s{i}"),
        scope: "HTTPRoute/shop/store/rules/0".into(),
        backend: "shop/store:80|a|127.0.0.1:1".into(),
        issued_ms: gw_client::clock::now_ms(),
        idle_timeout_ms: Some(60_000),
        absolute_timeout_ms: None,
    };
    let calls: Vec<(u64, std::ops::Range<usize>)> = vec![
        (follower, 0..300),
        (leader, 250..400),
        (follower, 400..401),
        (leader, 401..1400),
    ];
    let answers = futures::future::join_all(calls.iter().map(|(member, ids)| {
        let client = client(*member);
        let sessions = ids.clone().map(session).collect();
        async move { client.touch(sessions).await }
    }))
    .await;
    for ((_, ids), answer) in calls.iter().zip(answers) {
        let answer = answer.unwrap();
        let mut named: Vec<String> = answer
            .results
            .iter()
            .map(|r| r.target.as_ref().unwrap().name.clone())
            .collect();
        named.sort();
        let mut mine: Vec<String> = ids.clone().map(|i| format!("s{i}")).collect();
        mine.sort();
        assert_eq!(named, mine, "the answer names this call's sessions");
        assert!(answer.revision > 0);
    }
    let json = ok(c.gwadm(c.addr(follower), &["affinity", "ls", "-o", "json"]));
    let entries: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(entries.len(), 1400);
}

/// Member 1's snapshot index, once it is past `index`.
async fn snapshot_after(c: &Cluster, index: u64) -> u64 {
    let now = status_once(c, 1, |s| s.snapshot_index > index)
        .await
        .snapshot_index;
    assert!(now > index, "no snapshot after {index}");
    now
}

/// Snapshots wait for the log since the last one to hold a quarter of its bytes, not only for
/// `--snapshot-logs` entries: after a snapshot of a large state, many small writes do not make
/// another; as many large ones do.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_state_is_snapshotted_again_only_once_the_log_has_grown_by_a_quarter_of_it() {
    let opts = ClusterOptions {
        extra_args: ["--snapshot-logs", "5"].map(String::from).to_vec(),
        ..Default::default()
    };
    let c = Cluster::start(1, opts).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    // ConfigMaps `big-{i}` of 200 kB each, one apply each.
    let apply_big = |ids: std::ops::Range<usize>| {
        for i in ids {
            let doc = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big-{i}}}\ndata: {{v: '{}'}}\n",
                "x".repeat(200_000)
            );
            ok(c.gwadm(
                c.addr(1),
                &["apply", "-f", &write(&c.dir, "big.yaml", &doc)],
            ));
        }
    };
    // Five large objects: the entries make the first snapshot due (there is none to grow from).
    apply_big(0..5);
    snapshot_after(&c, 0).await;
    // One that covers them all (the rule's first snapshot may have come before the last ones).
    ok(c.gwadm(c.addr(1), &["cluster", "compact-log"]));
    let first = c.member_status(1).await.unwrap().snapshot_index;
    // Twenty small writes: four times the entries, a sliver of the snapshot's bytes.
    apply_config_maps(&c, c.addr(1), 20);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.member_status(1).await.unwrap().snapshot_index,
        first,
        "small writes alone made a snapshot"
    );
    // A quarter of the state's bytes again (its history holds each object twice): due.
    apply_big(5..10);
    snapshot_after(&c, first).await;
}

/// A GatewayClass's transition rules are checked against its stored version and the write pinned to
/// it: status updates written meanwhile (a gateway node's, every few milliseconds here) make the
/// member check again, not refuse the apply; a resourceVersion the caller gave still conflicts.
#[tokio::test(flavor = "multi_thread")]
async fn applies_checked_by_transition_rules_do_not_conflict_with_status_updates() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let client = gw_client::Client::new(
        &[c.addr(1).to_string()],
        Duration::from_secs(10),
        &gw_client::Dialer::new(c.pki().admin_security()),
    )
    .unwrap();
    let class = |annotation: &str, rv: Option<u64>| {
        let mut metadata = serde_json::json!({"name": "gw", "annotations": {"n": annotation}});
        if let Some(rv) = rv {
            metadata["resourceVersion"] = rv.to_string().into();
        }
        let class = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": metadata,
            "spec": {"controllerName": "gw.dev/gateway-node"},
        });
        vec![gw_proto::Document {
            json: class.to_string(),
            source: "class".into(),
            index: 1,
        }]
    };
    let first = client.apply(class("0", None), false).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let update = gw_proto::StatusUpdate {
                    target: Some(gw_proto::ObjectRef {
                        group: "gateway.networking.k8s.io".into(),
                        kind: "GatewayClass".into(),
                        namespace: String::new(),
                        name: "gw".into(),
                    }),
                    status_json: format!("{{\"conditions\": [], \"n\": {n}}}"),
                    ..Default::default()
                };
                client.update_status(vec![update]).await.unwrap();
            }
            n
        })
    };
    for i in 1..=30 {
        client
            .apply(class(&i.to_string(), None), false)
            .await
            .unwrap_or_else(|e| panic!("apply {i}: {e}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = writer.await.unwrap();
    assert!(updates > 30, "status updates ran alongside: {updates}");
    let stale = client
        .apply(class("stale", Some(first.revision)), false)
        .await
        .unwrap_err();
    assert!(
        stale
            .to_string()
            .contains("conflict: GatewayClass gw: expected resourceVersion"),
        "{stale}"
    );
}
