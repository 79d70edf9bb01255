//! Session tokens: `v2.<key id>.<session id>.<sealed>` (base64url). The session id is random and says
//! nothing; what the session is bound to — its scope, the backend's identity, when it was issued — is
//! sealed with AES-256-GCM (ring) under a key held in the store (Secret `gw-system/gw-session-keys`:
//! `current`, and `previous` after a rotation), the version, key id and session id as associated data.
//! So a token is opaque to its holder (base64-decoding it shows no backend), any node opens it at once,
//! and nobody without the key can make or alter one. The format lives with the affinity table so that
//! gateway nodes (which issue and open tokens) and gwadm (which reads a token's session) agree on it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};

/// Where the keys are kept in the store.
pub const KEYS_NAMESPACE: &str = "gw-system";
pub const KEYS_SECRET: &str = "gw-session-keys";
const VERSION: &str = "v2";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub session: String,
    pub scope: String,
    pub backend: String,
    pub issued_ms: u64,
}

/// The sealed part of a token.
#[derive(Serialize, Deserialize)]
struct Sealed {
    #[serde(rename = "c")]
    scope: String,
    #[serde(rename = "b")]
    backend: String,
    #[serde(rename = "t")]
    issued_ms: u64,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    /// The AEAD key is derived from the stored secret (any length), its id from a hash of it.
    fn new(secret: &[u8]) -> Key {
        let id = ring::digest::digest(&ring::digest::SHA256, secret);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"gw session token key v2\0");
        ctx.update(secret);
        let material = ctx.finish();
        Key {
            id: B64.encode(&id.as_ref()[..6]),
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, material.as_ref())
                    .expect("a SHA-256 digest is an AES-256 key"),
            ),
        }
    }
}

/// The sealing key and the keys still accepted.
pub struct Keys {
    current: Key,
    previous: Option<Key>,
}

impl Keys {
    /// `current` seals; tokens under `previous` (the key before the last rotation) are still honoured.
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Keys {
        Keys {
            current: Key::new(current),
            previous: previous.map(Key::new),
        }
    }

    /// A token for `t`. `nonce` must never repeat under one key: 96 random bits per token.
    pub fn issue(&self, t: &Token, nonce: [u8; NONCE_LEN]) -> String {
        let head = format!("{VERSION}.{}.{}", self.current.id, t.session);
        let mut sealed = serde_json::to_vec(&Sealed {
            scope: t.scope.clone(),
            backend: t.backend.clone(),
            issued_ms: t.issued_ms,
        })
        .expect("a token serializes");
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(head.as_bytes()),
                &mut sealed,
            )
            .expect("sealing a small payload");
        let mut body = nonce.to_vec();
        body.extend(sealed);
        format!("{head}.{}", B64.encode(body))
    }

    /// The token's content if it is well formed and sealed by a key in force; `None` otherwise (a
    /// tampered, foreign or retired token is no session at all).
    pub fn verify(&self, token: &str) -> Option<Token> {
        let (head, body) = token.rsplit_once('.')?;
        let mut parts = head.splitn(3, '.');
        let (version, kid, session) = (parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION || session.is_empty() {
            return None;
        }
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == kid)?;
        let body = B64.decode(body).ok()?;
        if body.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(head.as_bytes()),
                &mut sealed,
            )
            .ok()?;
        let s: Sealed = serde_json::from_slice(plain).ok()?;
        Some(Token {
            session: session.to_string(),
            scope: s.scope,
            backend: s.backend,
            issued_ms: s.issued_ms,
        })
    }
}

/// The Secret holding the keys as a document: `current` (the raw key) seals, `previous` (as stored,
/// base64) is still accepted. `resource_version` "0" creates it only if it does not exist; otherwise it
/// is the version being replaced.
pub fn key_secret(
    current: &[u8],
    previous: Option<&str>,
    resource_version: &str,
) -> serde_json::Value {
    let mut data = serde_json::json!({
        "current": base64::engine::general_purpose::STANDARD.encode(current),
    });
    if let Some(p) = previous {
        data["previous"] = serde_json::json!(p);
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": KEYS_SECRET, "namespace": KEYS_NAMESPACE, "resourceVersion": resource_version},
        "type": "Opaque",
        "data": data,
    })
}

impl Keys {
    /// The keys a Secret holds (`None` without a usable `current`).
    pub fn from_secret(s: &serde_json::Value) -> Option<Keys> {
        let decode = |field: &str| {
            s["data"][field]
                .as_str()
                .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
                .filter(|k| !k.is_empty())
        };
        let current = decode("current")?;
        Some(Keys::new(&current, decode("previous").as_deref()))
    }
}

/// The session a token names, read without any key (the session id is random and reveals nothing;
/// `None` when `token` is not one).
pub fn session_of(token: &str) -> Option<String> {
    let parts: Vec<&str> = token.split('.').collect();
    match parts.as_slice() {
        [VERSION, _, session, _] if !session.is_empty() => Some(session.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token {
            session: "0123".into(),
            scope: "HTTPRoute/d/r/rules/0".into(),
            backend: "d/svc:80|pod-a|10.0.0.1:8080".into(),
            issued_ms: 42,
        }
    }

    const N1: [u8; 12] = [1; 12];
    const N2: [u8; 12] = [2; 12];

    #[test]
    fn issued_tokens_open_and_tampering_is_refused() {
        let keys = Keys::new(b"k1", None);
        let t = keys.issue(&token(), N1);
        assert_eq!(keys.verify(&t), Some(token()));
        // Another session's id over this sealed part (the id is authenticated).
        let (head, body) = t.rsplit_once('.').unwrap();
        let other_id = head.replace(".0123", ".9999");
        assert_eq!(keys.verify(&format!("{other_id}.{body}")), None);
        // One bit of the sealed part flipped.
        let mut raw = B64.decode(body).unwrap();
        raw[NONCE_LEN + 1] ^= 1;
        assert_eq!(keys.verify(&format!("{head}.{}", B64.encode(&raw))), None);
        for junk in ["", "v2", "v2.x.y.z", "v1.a.b.c", &t[..t.len() - 2]] {
            assert_eq!(keys.verify(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn a_token_reveals_nothing_of_its_backend() {
        let t = Keys::new(b"k1", None).issue(&token(), N1);
        for part in t.split('.') {
            let decoded = B64.decode(part).unwrap_or_default();
            let text = String::from_utf8_lossy(&decoded);
            for secret in ["svc", "pod-a", "10.0.0.1", "HTTPRoute", "d/r"] {
                assert!(
                    !text.contains(secret) && !part.contains(secret),
                    "{part}: {secret}"
                );
            }
        }
        assert_ne!(
            Keys::new(b"k1", None).issue(&token(), N2),
            t,
            "a fresh nonce, a different token"
        );
    }

    #[test]
    fn a_foreign_key_is_refused_and_rotation_keeps_the_previous_key() {
        let old = Keys::new(b"k1", None);
        let t = old.issue(&token(), N1);
        assert_eq!(Keys::new(b"other", None).verify(&t), None);
        let rotated = Keys::new(b"k2", Some(b"k1"));
        assert_eq!(rotated.verify(&t), Some(token()));
        assert_eq!(Keys::new(b"k3", Some(b"k2")).verify(&t), None);
    }

    #[test]
    fn keys_round_trip_through_their_secret() {
        let doc = key_secret(b"k2", Some("azE="), "0");
        let keys = Keys::from_secret(&doc).unwrap();
        let t = Keys::new(b"k1", None).issue(&token(), N1);
        assert_eq!(
            keys.verify(&t),
            Some(token()),
            "the previous key is accepted"
        );
        assert_eq!(session_of(&t).as_deref(), Some("0123"));
        assert_eq!(session_of("plain-id"), None);
        assert!(Keys::from_secret(&serde_json::json!({"data": {}})).is_none());
    }
}
