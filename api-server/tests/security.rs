//! Nobody gets in: every call to a member is authenticated by its client certificate and authorized by
//! the identity in it. The tests play the attacker with real processes: a client with no certificate,
//! with another CA's, with a node's calling Apply, with an admin's or a member's sending forged Raft
//! messages (the forged Vote that used to depose the leader, the forged AppendEntries that used to
//! commit an object no validation saw), a kube sync agent touching another cluster's objects; and the
//! operator: Secrets shown redacted, a learner that cannot serve refused as a voter.

#![allow(clippy::disallowed_methods)] // a test: it times its own waits

use gw_client::pki::Ca;
use gw_client::{Identity, TlsArgs};
use gw_proto as pb;
use gw_testkit::cluster::{Cluster, ClusterOptions};
use gw_testkit::procs::free_port;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;
use tonic::transport::{Channel, Endpoint, Uri};

const ELECTION: Duration = Duration::from_secs(20);

/// A Raft message as the transport carries it.
fn payload<T: serde::Serialize>(m: &T) -> pb::RaftPayload {
    pb::RaftPayload {
        data: serde_json::to_vec(m).unwrap(),
    }
}

/// A client that trusts any server and presents `cert` (or nothing): what an attacker controls.
#[derive(Clone)]
struct Attacker {
    cert: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
}

#[derive(Debug)]
struct TrustAnything;

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl tower_service::Service<Uri> for Attacker {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect((
                uri.host().unwrap_or("127.0.0.1"),
                uri.port_u16().unwrap_or(0),
            ))
            .await?;
            let b = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(TrustAnything));
            let mut cfg = match me.cert {
                Some((chain, key)) => b.with_client_auth_cert(chain, key.clone_key())?,
                None => b.with_no_client_auth(),
            };
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(ServerName::try_from("member").unwrap(), tcp)
                .await?;
            Ok(TokioIo::new(s))
        })
    }
}

fn read_cert(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A channel to `addr` presenting the certificate (PEM) and key, if any.
fn attacker(addr: &str, cert: Option<(&str, &str)>) -> Channel {
    let cert = cert.map(|(c, k)| {
        (
            read_cert(c),
            Arc::new(PrivateKeyDer::from_pem_slice(k.as_bytes()).unwrap()),
        )
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector_lazy(Attacker { cert })
}

fn files_pem(c: &Cluster, name: &str) -> (String, String) {
    let dir = c.pki().dir();
    (
        std::fs::read_to_string(dir.join(format!("{name}.crt"))).unwrap(),
        std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
    )
}

fn apply_request(name: &str) -> pb::ApplyRequest {
    pb::ApplyRequest {
        documents: vec![pb::Document {
            json: serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}).to_string(),
            source: "attacker".into(),
            index: 1,
        }],
        dry_run: false,
    }
}

/// A member's current term (its status asked until it answers: the machine may be busy).
async fn term_of(c: &Cluster, id: u64) -> u64 {
    let deadline = std::time::Instant::now() + ELECTION;
    loop {
        if let Some(s) = c.member_status(id).await {
            return s.term;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member {id} never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No certificate, another CA's certificate, a node's certificate calling Apply: each refused with a
/// status naming who was refused and for what; nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn callers_without_the_right_certificate_are_refused_by_name() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = Cluster::start(
        1,
        ClusterOptions {
            metrics: true,
            ..Default::default()
        },
    )
    .unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let addr = c.addr(1).to_string();

    let e = pb::config_client::ConfigClient::new(attacker(&addr, None))
        .apply(apply_request("no-cert"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("no client certificate"), "{e:?}");

    let foreign = Ca::generate().unwrap();
    let (crt, key) = foreign
        .issue(
            &Identity::Admin {
                name: "mallory".into(),
            },
            1,
            &[],
        )
        .unwrap();
    let e = pb::config_client::ConfigClient::new(attacker(&addr, Some((&crt, &key))))
        .apply(apply_request("foreign"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("spiffe://gw/admin/mallory")
            && e.message().contains("not issued by this cluster's CA"),
        "{e:?}"
    );

    c.pki()
        .issue(
            "node-a",
            &Identity::Node {
                class: "gw".into(),
                name: "a".into(),
            },
        )
        .unwrap();
    let (crt, key) = files_pem(&c, "node-a");
    let e = pb::config_client::ConfigClient::new(attacker(&addr, Some((&crt, &key))))
        .apply(apply_request("by-node"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .starts_with("spiffe://gw/node/gw/a may not apply ConfigMap default/by-node"),
        "{e:?}"
    );

    let listed = String::from_utf8_lossy(&c.gwadm(&addr, &["get", "cm", "-A"]).stdout).to_string();
    assert!(
        !listed.contains("no-cert") && !listed.contains("foreign") && !listed.contains("by-node"),
        "nothing was stored: {listed}"
    );
    // The refusal is counted, by identity and action.
    let body = c.scrape(1).await.unwrap();
    assert!(
        body.contains(
            r#"gw_store_permission_denied_total{identity="spiffe://gw/node/gw/a",action="apply"} 1"#
        ),
        "{body}"
    );
}

/// The forged Raft messages of the issue: a Vote for a made-up member id with a huge term (it used to
/// depose the leader), and an AppendEntries carrying an object (it used to commit it unvalidated). Sent
/// with an admin's certificate, with member 2's certificate in member 9's name, and with none: all
/// refused, and no member's term moves to the forged one.
#[tokio::test(flavor = "multi_thread")]
async fn forged_raft_messages_are_refused_and_no_term_moves() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let leader = c.wait_for_leader(ELECTION).await.unwrap();
    let follower = c.ids().into_iter().find(|i| *i != leader).unwrap();
    let term = term_of(&c, leader).await;
    use gw_store::types::{Command, Op, Txn, TypeConfig};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
    let forged_term = term + 100;
    let vote = openraft::raft::VoteRequest::<u64> {
        vote: Vote::new(forged_term, 9),
        last_log_id: Some(LogId::new(
            CommittedLeaderId::new(forged_term, 9),
            1_000_000,
        )),
    };
    let object = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "forged", "namespace": "default"}});
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(forged_term, 9),
        prev_log_id: None,
        entries: vec![Entry {
            log_id: LogId::new(CommittedLeaderId::new(forged_term, 9), 1),
            payload: EntryPayload::Normal(Command::Txns(vec![Txn {
                time_ms: 0,
                ops: vec![Op::Put {
                    key: gw_model::ObjectKey::new("", "ConfigMap", "default", "forged"),
                    object,
                    expected_rv: None,
                    uid: "forged".into(),
                }],
            }])),
        }],
        leader_commit: Some(LogId::new(CommittedLeaderId::new(forged_term, 9), 1)),
    };
    let (admin_crt, admin_key) = files_pem(&c, "admin");
    let (m2_crt, m2_key) = files_pem(&c, "member-2");
    for (who, cert) in [
        ("an admin", Some((admin_crt.as_str(), admin_key.as_str()))),
        (
            "member 2 as member 9",
            Some((m2_crt.as_str(), m2_key.as_str())),
        ),
        ("nobody", None),
    ] {
        for target in [leader, follower] {
            let mut raft = pb::raft_client::RaftClient::new(attacker(c.peer_addr(target), cert));
            let e = raft.vote(payload(&vote)).await.unwrap_err();
            assert!(
                matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
                "{who} → member {target}: {e:?}"
            );
            let e = raft.append_entries(payload(&append)).await.unwrap_err();
            assert!(
                matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
                "{who} → member {target}: {e:?}"
            );
        }
    }
    // Had a forged Vote been heard, the member's term would have jumped to the forged one (a busy
    // machine may still hold an honest election or two, which moves the term by one each).
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.wait_for_leader(ELECTION).await.unwrap();
    for id in c.ids() {
        let now = term_of(&c, id).await;
        assert!(
            now < term + 10,
            "member {id}'s term moved from {term} to {now} (forged: {forged_term})"
        );
    }
    let o = c.gwadm(&c.servers(), &["get", "cm", "forged"]);
    assert!(!o.status.success(), "the forged entry never committed");
    // The client API does not serve Raft at all: it has its own port.
    let e = pb::raft_client::RaftClient::new(attacker(c.addr(leader), Some((&m2_crt, &m2_key))))
        .vote(payload(&vote))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
}

fn as_identity(c: &Cluster, name: &str, identity: &Identity) -> Vec<String> {
    TlsArgs::of(&c.pki().issue(name, identity).unwrap()).to_args()
}

fn gwadm_as(c: &Cluster, tls: &[String], args: &[&str]) -> std::process::Output {
    std::process::Command::new(gw_testkit::procs::bin("gwadm").unwrap())
        .args(["--server", &c.servers()])
        .args(tls)
        .args(args)
        .output()
        .unwrap()
}

fn write(c: &Cluster, name: &str, yaml: &str) -> String {
    let f = c.dir.join(name);
    std::fs::write(&f, yaml).unwrap();
    f.display().to_string()
}

/// A kube sync agent for cluster A writes objects that become cluster A's; it can neither create an
/// object in cluster B's name, nor change or delete one of cluster B's.
#[tokio::test(flavor = "multi_thread")]
async fn a_kube_sync_agent_touches_only_its_own_clusters_objects() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let a = as_identity(
        &c,
        "sync-a",
        &Identity::KubeSync {
            cluster: "a".into(),
        },
    );
    let b = as_identity(
        &c,
        "sync-b",
        &Identity::KubeSync {
            cluster: "b".into(),
        },
    );
    let cm = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default{extra}}}\ndata: {{k: v}}\n"
        )
    };
    let of_b = write(&c, "b.yaml", &cm("from-b", ""));
    let o = gwadm_as(&c, &b, &["apply", "-f", &of_b]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = String::from_utf8_lossy(
        &c.gwadm(&c.servers(), &["get", "cm", "from-b", "-o", "json"])
            .stdout,
    )
    .to_string();
    assert!(
        shown.contains("\"gw.dev/origin-cluster\": \"b\""),
        "the member stamps the origin: {shown}"
    );

    let changed = write(&c, "a-change.yaml", &cm("from-b", ""));
    for (what, args) in [
        ("change", vec!["apply", "-f", changed.as_str()]),
        ("delete", vec!["delete", "cm", "from-b"]),
    ] {
        let o = gwadm_as(&c, &a, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}");
        assert!(
            err.contains("spiffe://gw/kube-sync/a may not")
                && err.contains("belongs to cluster \"b\""),
            "{what}: {err}"
        );
    }
    let impersonate = write(
        &c,
        "a-as-b.yaml",
        &cm("sneaky", ", labels: {gw.dev/origin-cluster: b}"),
    );
    let o = gwadm_as(&c, &a, &["apply", "-f", &impersonate]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("would belong to cluster \"b\""),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let own = write(&c, "a.yaml", &cm("from-a", ""));
    assert!(gwadm_as(&c, &a, &["apply", "-f", &own]).status.success());
    assert!(
        gwadm_as(&c, &a, &["delete", "cm", "from-a"])
            .status
            .success()
    );
    assert!(
        c.gwadm(&c.servers(), &["get", "cm", "from-b"])
            .status
            .success(),
        "B's object is untouched"
    );
}

/// `gwadm get secret -o yaml` shows the keys of a Secret but none of its values; an admin asking with
/// `--show-secret-values` sees them; nobody but the gateway nodes ever sees the session keys.
#[tokio::test(flavor = "multi_thread")]
async fn secret_values_stay_secret() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let key_material = "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCg=="; // base64 of a PEM header
    let f = write(
        &c,
        "s.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: tls, namespace: default}}\ntype: kubernetes.io/tls\ndata: {{tls.key: {key_material}, tls.crt: {key_material}}}\n"
        ),
    );
    assert!(c.gwadm(&c.servers(), &["apply", "-f", &f]).status.success());
    let plain = String::from_utf8_lossy(
        &c.gwadm(&c.servers(), &["get", "secret", "tls", "-o", "yaml"])
            .stdout,
    )
    .to_string();
    assert!(
        plain.contains("tls.key") && plain.contains("REDACTED"),
        "{plain}"
    );
    assert!(!plain.contains(key_material), "no key material: {plain}");
    let listed = String::from_utf8_lossy(
        &c.gwadm(&c.servers(), &["get", "secret", "-A", "-o", "json"])
            .stdout,
    )
    .to_string();
    assert!(
        !listed.contains(key_material),
        "not in lists either: {listed}"
    );
    let watched = String::from_utf8_lossy(
        &c.gwadm(
            &c.servers(),
            &["watch", "secret", "-o", "json", "--timeout", "1"],
        )
        .stdout,
    )
    .to_string();
    assert!(
        watched.contains("REDACTED") && !watched.contains(key_material),
        "nor in watches: {watched}"
    );
    let shown = String::from_utf8_lossy(
        &c.gwadm(
            &c.servers(),
            &["get", "secret", "tls", "-o", "yaml", "--show-secret-values"],
        )
        .stdout,
    )
    .to_string();
    assert!(
        shown.contains(key_material),
        "an admin who asks sees them: {shown}"
    );

    // The session keys: made on the leader, shown to nobody but nodes.
    as_identity(
        &c,
        "node-x",
        &Identity::Node {
            class: "gw".into(),
            name: "x".into(),
        },
    );
    let channel = gw_client::Dialer::new(
        TlsArgs {
            tls_ca: Some(c.pki().dir().join("ca.crt")),
            tls_cert: Some(c.pki().dir().join("node-x.crt")),
            tls_key: Some(c.pki().dir().join("node-x.key")),
            insecure: false,
        }
        .security()
        .unwrap(),
    );
    let node_client =
        gw_client::Client::new(&[c.servers()], Duration::from_secs(10), &channel).unwrap();
    node_client.ensure_keys().await.unwrap();
    let keys = gw_model::ObjectKey::new("", "Secret", "gw-system", "gw-session-keys");
    let seen_by_node = node_client.get_object(&keys).await.unwrap().unwrap();
    assert_ne!(
        seen_by_node["data"]["current"], "REDACTED",
        "a node reads the keys"
    );
    let by_admin = String::from_utf8_lossy(
        &c.gwadm(
            &c.servers(),
            &[
                "get",
                "secret",
                "gw-session-keys",
                "-n",
                "gw-system",
                "-o",
                "json",
                "--show-secret-values",
            ],
        )
        .stdout,
    )
    .to_string();
    assert!(
        by_admin.contains("REDACTED"),
        "not even an admin reads them: {by_admin}"
    );
    assert!(
        !by_admin.contains(seen_by_node["data"]["current"].as_str().unwrap()),
        "{by_admin}"
    );
}

/// `promote` of a learner that cannot serve — never started, or gone — is refused, and says why; the
/// one-member store keeps accepting writes (it used to wedge in a joint configuration for good).
#[tokio::test(flavor = "multi_thread")]
async fn a_learner_that_cannot_serve_is_not_promoted() {
    let mut c = Cluster::start(1, ClusterOptions::default()).unwrap();
    c.wait_for_leader(ELECTION).await.unwrap();
    let nowhere = format!("127.0.0.1:{}", free_port());
    let o = c.gwadm(
        &c.servers(),
        &[
            "cluster",
            "add-learner",
            "--id",
            "2",
            "--addr",
            &nowhere,
            "--peer-addr",
            &nowhere,
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not answer as member 2"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A real learner, added, then gone.
    let (addr, peer) = c.add_process(3, &[]).unwrap();
    let deadline = std::time::Instant::now() + ELECTION;
    while c.member_status(3).await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "member 3 never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let o = c.gwadm(
        &c.servers(),
        &[
            "cluster",
            "add-learner",
            "--id",
            "3",
            "--addr",
            &addr,
            "--peer-addr",
            &peer,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.kill(3);
    let o = c.gwadm(
        &c.servers(),
        &["--retry-for", "2", "cluster", "promote", "3"],
    );
    assert!(
        !o.status.success(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("learner 3 does not answer"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let f = write(
        &c,
        "after.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after}\n",
    );
    let o = c.gwadm(&c.servers(), &["apply", "-f", &f]);
    assert!(
        o.status.success(),
        "writes go on: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let status = String::from_utf8_lossy(
        &c.gwadm(&c.servers(), &["cluster", "status", "-o", "json"])
            .stdout,
    )
    .to_string();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        v["configs"],
        serde_json::json!([[1]]),
        "one voter set, no joint configuration: {status}"
    );
}
