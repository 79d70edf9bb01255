//! What a caller learns when the store cannot answer: a write that never left is `Unavailable`, one
//! that was sent and never answered is `OutcomeUnknown` (it may have been applied), a read is never
//! "unknown", and an apply over the limit is refused before anything is sent.

use gw_client::{Client, Dialer, Error, MAX_APPLY_BYTES, Security};
use gw_proto as pb;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn client(addr: &str) -> Client {
    Client::new(
        &[addr.to_string()],
        Duration::from_millis(600),
        &Dialer::new(Security::Insecure).connect_timeout(Duration::from_millis(300)),
    )
    .unwrap()
    .with_call_timeout(Duration::from_millis(300))
}

fn delete() -> pb::DeleteRequest {
    pb::DeleteRequest {
        refs: vec![pb::ObjectRef {
            kind: "ConfigMap".into(),
            namespace: "d".into(),
            name: "c".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn get() -> pb::GetRequest {
    pb::GetRequest {
        target: Some(delete().refs[0].clone()),
        options: None,
    }
}

/// A port nothing listens on.
async fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().to_string()
}

/// A "member" that takes every connection and reads, and never answers (`cut`: it closes each
/// connection once the request has arrived).
async fn silent_member(cut: bool) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = 0;
                // The HTTP/2 preface and SETTINGS are ~40 bytes; a request's HEADERS follow.
                while let Ok(n) = s.read(&mut buf).await {
                    seen += n;
                    if n == 0 || (cut && seen > 100) {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_write_that_never_left_is_unavailable() {
    let err = client(&closed_port().await)
        .delete(delete())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn a_write_sent_and_never_answered_has_an_unknown_outcome() {
    for cut in [false, true] {
        let err = client(&silent_member(cut).await)
            .delete(delete())
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::OutcomeUnknown { .. }),
            "cut {cut}: {err:?}"
        );
        assert!(!err.is_definite());
        assert!(err.to_string().contains("may have been applied"), "{err}");
    }
}

#[tokio::test]
async fn a_read_is_never_unknown() {
    let err = client(&silent_member(false).await)
        .get(get())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

#[tokio::test]
async fn an_apply_over_the_limit_is_refused_before_it_is_sent() {
    let doc = pb::Document {
        json: format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big","namespace":"d"}},"data":{{"v":"{}"}}}}"#,
            "x".repeat(MAX_APPLY_BYTES)
        ),
        source: "big.yaml".into(),
        index: 1,
    };
    // A silent member: had anything been sent, the outcome would be unknown.
    let err = client(&silent_member(false).await)
        .apply(vec![doc], false)
        .await
        .unwrap_err();
    match &err {
        Error::TooLarge { size, limit } => assert!(size > limit && *limit == MAX_APPLY_BYTES),
        other => panic!("{other:?}"),
    }
    assert!(err.is_definite());
    assert!(
        err.to_string().contains(&MAX_APPLY_BYTES.to_string()),
        "{err}"
    );
}
