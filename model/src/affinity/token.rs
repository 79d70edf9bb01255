//! Session tokens: the binding (session id, scope, backend identity, issue time) in a small signed
//! payload, `v1.<key id>.<payload>.<mac>` (base64url), authenticated with HMAC-SHA256 under a key held in
//! the store (Secret `gw-system/gw-session-keys`: `current`, and `previous` after a rotation). Any
//! node verifies a token at once; nobody without the key can make one. The format lives with the
//! affinity table so that gateway nodes (which issue and verify tokens) and gwadm (which reads a
//! token's session) agree on it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// Where the keys are kept in the store.
pub const KEYS_NAMESPACE: &str = "gw-system";
pub const KEYS_SECRET: &str = "gw-session-keys";

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    #[serde(rename = "s")]
    pub session: String,
    #[serde(rename = "c")]
    pub scope: String,
    #[serde(rename = "b")]
    pub backend: String,
    #[serde(rename = "t")]
    pub issued_ms: u64,
}

struct Key {
    id: String,
    key: hmac::Key,
}

impl Key {
    fn new(secret: &[u8]) -> Key {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret);
        Key {
            id: B64.encode(&digest.as_ref()[..6]),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }
}

/// The signing key and the keys still accepted.
pub struct Keys {
    current: Key,
    previous: Option<Key>,
}

impl Keys {
    /// `current` signs; tokens under `previous` (the key before the last rotation) are still honoured.
    pub fn new(current: &[u8], previous: Option<&[u8]>) -> Keys {
        Keys {
            current: Key::new(current),
            previous: previous.map(Key::new),
        }
    }

    pub fn issue(&self, t: &Token) -> String {
        let payload = B64.encode(serde_json::to_vec(t).expect("a token serializes"));
        let signed = format!("v1.{}.{payload}", self.current.id);
        let mac = hmac::sign(&self.current.key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(mac.as_ref()))
    }

    /// The token's content if it is well formed and signed by a key in force; `None` otherwise (a
    /// tampered, foreign or stale token is no session at all).
    pub fn verify(&self, token: &str) -> Option<Token> {
        let (signed, mac) = token.rsplit_once('.')?;
        let mut parts = signed.splitn(3, '.');
        let (version, kid, payload) = (parts.next()?, parts.next()?, parts.next()?);
        if version != "v1" {
            return None;
        }
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == kid)?;
        hmac::verify(&key.key, signed.as_bytes(), &B64.decode(mac).ok()?).ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }
}

/// The Secret holding the keys as a document: `current` (the raw key) signs, `previous` (as stored,
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
    let [_, _, payload, _] = parts.as_slice() else {
        return None;
    };
    let bytes = B64.decode(payload).ok()?;
    serde_json::from_slice::<Token>(&bytes)
        .ok()
        .map(|t| t.session)
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

    #[test]
    fn issued_tokens_verify_and_tampering_is_refused() {
        let keys = Keys::new(b"k1", None);
        let t = keys.issue(&token());
        assert_eq!(keys.verify(&t), Some(token()));
        // Change the payload (point the session at another backend) and keep the MAC.
        let mut forged = token();
        forged.backend = "d/svc:80|pod-b|10.0.0.2:8080".into();
        let other = keys.issue(&forged);
        let (_, other_mac) = other.rsplit_once('.').unwrap();
        let (t_signed, _) = t.rsplit_once('.').unwrap();
        let (o_signed, _) = other.rsplit_once('.').unwrap();
        assert_eq!(
            keys.verify(&format!("{o_signed}.{}", t.rsplit_once('.').unwrap().1)),
            None
        );
        assert_eq!(keys.verify(&format!("{t_signed}.{other_mac}")), None);
        for junk in ["", "v1", "v1.x.y.z", "v2.a.b.c", &t[..t.len() - 2]] {
            assert_eq!(keys.verify(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_their_secret() {
        let doc = key_secret(b"k2", Some("azE="), "0");
        let keys = Keys::from_secret(&doc).unwrap();
        let t = Keys::new(b"k1", None).issue(&token());
        assert_eq!(
            keys.verify(&t),
            Some(token()),
            "the previous key is accepted"
        );
        assert_eq!(session_of(&t).as_deref(), Some("0123"));
        assert_eq!(session_of("plain-id"), None);
        assert!(Keys::from_secret(&serde_json::json!({"data": {}})).is_none());
    }

    #[test]
    fn a_foreign_key_is_refused_and_rotation_keeps_the_previous_key() {
        let old = Keys::new(b"k1", None);
        let t = old.issue(&token());
        assert_eq!(Keys::new(b"other", None).verify(&t), None);
        let rotated = Keys::new(b"k2", Some(b"k1"));
        assert_eq!(rotated.verify(&t), Some(token()));
        assert_eq!(Keys::new(b"k3", Some(b"k2")).verify(&t), None);
    }
}
