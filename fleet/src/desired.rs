//! Desired state: what the operations center wants a gateway to run, signed
//! with the operations center's ed25519 key.
//!
//! The signature covers the exact payload bytes (with a domain prefix, so a
//! signature made for anything else never verifies here). A gateway checks
//! it with the one operations-center key in its config, that the payload
//! names this gateway, and (in the agent) that the revision is newer than
//! the last one it applied: a replayed old desired state changes nothing.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey};
use outpost_package::ProviderKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bytes signed are this prefix followed by the payload.
const DOMAIN: &[u8] = b"outpost-fleet-desired-v1\n";
/// A desired state larger than this is refused before parsing.
pub const MAX_DESIRED_BYTES: usize = 256 * 1024;

/// One service the operations center pins on a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredService {
    pub version: String,
    /// sha256 (hex) of the signed `.opkg`; the package's own provider
    /// signature is checked again by the agent before use.
    pub digest: String,
    /// Where to download it: an `http(s)://` URL, or a path resolved
    /// against the agent's configured artifact base URL.
    pub artifact: String,
    /// Size of the `.opkg` in bytes (resumable downloads, progress).
    pub size: u64,
}

/// What one gateway should run, as far as the operations center manages it.
/// Services not named are left alone (installed locally by the site);
/// `None` means "must not be installed" (rolling back a first install).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub gateway: String,
    /// Grows with every change for this gateway.
    pub revision: u64,
    /// Milliseconds since the Unix epoch.
    pub issued_ms: u64,
    pub services: BTreeMap<String, Option<DesiredService>>,
}

/// The message on `outpost/fleet/{gw}/desired`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedDesired {
    /// The operations center's name (its key's name).
    pub ops: String,
    pub key_id: String,
    /// The JSON text of a [`DesiredState`], signed as is.
    pub payload: String,
    /// base64 ed25519 signature over `DOMAIN || payload`.
    pub signature: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DesiredError {
    #[error("desired state is {0} bytes, above the {MAX_DESIRED_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("desired state is not a signed envelope: {0}")]
    Malformed(String),
    #[error("desired state is signed by key {got} ({ops}), not by this gateway's operations center (key {want}); check [fleet] ops_key")]
    WrongKey { got: String, ops: String, want: String },
    #[error("desired state signature does not verify: it was altered or not made by the operations center's key")]
    BadSignature,
    #[error("desired state payload is malformed: {0}")]
    BadPayload(String),
    #[error("desired state is for gateway `{got}`, this is `{want}`")]
    WrongGateway { got: String, want: String },
    #[error("desired state is invalid: {0}")]
    Invalid(String),
}

impl DesiredState {
    /// Signs this state with the operations center's key.
    pub fn sign(&self, ops: &str, key: &SigningKey) -> SignedDesired {
        let payload = serde_json::to_string(self).unwrap_or_default();
        let mut msg = DOMAIN.to_vec();
        msg.extend_from_slice(payload.as_bytes());
        let signature = B64.encode(key.sign(&msg).to_bytes());
        SignedDesired {
            ops: ops.to_owned(),
            key_id: outpost_package::keys::key_id(&key.verifying_key()),
            payload,
            signature,
        }
    }

    /// Every problem at once, joined by `; `.
    fn validate(&self) -> Result<(), DesiredError> {
        let mut problems = Vec::new();
        for (name, svc) in &self.services {
            if outpost_package::keys::check_name(name).is_err() {
                problems.push(format!("service name `{name}` is not 1-64 of [A-Za-z0-9._-]"));
            }
            if let Some(s) = svc {
                if s.version.trim().is_empty() {
                    problems.push(format!("services.{name}.version is empty"));
                }
                if !outpost_package::format::is_digest(&s.digest) {
                    problems.push(format!("services.{name}.digest is not a sha256 hex digest"));
                }
                if s.artifact.trim().is_empty() {
                    problems.push(format!("services.{name}.artifact is empty"));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DesiredError::Invalid(problems.join("; ")))
        }
    }
}

impl SignedDesired {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Checks a desired-state message for `gateway` against the operations
/// center's public key and returns what it asks.
pub fn verify(bytes: &[u8], gateway: &str, ops_key: &ProviderKey) -> Result<DesiredState, DesiredError> {
    if bytes.len() > MAX_DESIRED_BYTES {
        return Err(DesiredError::TooLarge(bytes.len()));
    }
    let env: SignedDesired = serde_json::from_slice(bytes).map_err(|e| DesiredError::Malformed(e.to_string()))?;
    if env.key_id != ops_key.key_id {
        return Err(DesiredError::WrongKey { got: env.key_id, ops: env.ops, want: ops_key.key_id.clone() });
    }
    let sig = B64.decode(env.signature.as_bytes()).map_err(|_| DesiredError::BadSignature)?;
    let sig = Signature::from_slice(&sig).map_err(|_| DesiredError::BadSignature)?;
    let mut msg = DOMAIN.to_vec();
    msg.extend_from_slice(env.payload.as_bytes());
    ops_key.key.verify_strict(&msg, &sig).map_err(|_| DesiredError::BadSignature)?;
    let state: DesiredState =
        serde_json::from_str(&env.payload).map_err(|e| DesiredError::BadPayload(e.to_string()))?;
    if state.gateway != gateway {
        return Err(DesiredError::WrongGateway { got: state.gateway, want: gateway.to_owned() });
    }
    state.validate()?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> (SigningKey, ProviderKey) {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let p = ProviderKey::new("ops-eu", k.verifying_key()).expect("valid name");
        (k, p)
    }

    fn state() -> DesiredState {
        let mut services = BTreeMap::new();
        services.insert(
            "positioning".to_string(),
            Some(DesiredService {
                version: "1.2.0".into(),
                digest: "a".repeat(64),
                artifact: "/artifacts/sha256/aaaa".into(),
                size: 1234,
            }),
        );
        services.insert("leak-detection".to_string(), None);
        DesiredState { gateway: "gw-7".into(), revision: 3, issued_ms: 1, services }
    }

    #[test]
    fn a_signed_state_verifies_for_its_gateway_only() {
        let (k, p) = key(1);
        let bytes = state().sign("ops-eu", &k).to_json();
        assert_eq!(verify(&bytes, "gw-7", &p), Ok(state()));
        assert!(matches!(verify(&bytes, "gw-8", &p), Err(DesiredError::WrongGateway { .. })));
    }

    #[test]
    fn another_key_or_an_altered_payload_is_refused() {
        let (k, p) = key(1);
        let (other, _) = key(2);
        let forged = state().sign("ops-eu", &other).to_json();
        assert!(matches!(verify(&forged, "gw-7", &p), Err(DesiredError::WrongKey { .. })));
        // Same key id claimed, different key: the signature fails.
        let mut env = state().sign("ops-eu", &other);
        env.key_id = p.key_id.clone();
        assert_eq!(verify(&env.to_json(), "gw-7", &p), Err(DesiredError::BadSignature));
        let mut env = state().sign("ops-eu", &k);
        env.payload = env.payload.replace("1.2.0", "6.6.6");
        assert_eq!(verify(&env.to_json(), "gw-7", &p), Err(DesiredError::BadSignature));
    }

    #[test]
    fn garbage_and_invalid_states_are_named() {
        let (k, p) = key(1);
        assert!(matches!(verify(b"{", "gw-7", &p), Err(DesiredError::Malformed(_))));
        assert!(matches!(verify(&vec![b' '; MAX_DESIRED_BYTES + 1], "gw-7", &p), Err(DesiredError::TooLarge(_))));
        let mut s = state();
        if let Some(Some(svc)) = s.services.get_mut("positioning") {
            svc.digest = "nope".into();
            svc.version = String::new();
        }
        match verify(&s.sign("ops-eu", &k).to_json(), "gw-7", &p) {
            Err(DesiredError::Invalid(why)) => {
                assert!(why.contains("digest") && why.contains("version"), "{why}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    proptest::proptest! {
        #[test]
        fn verify_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let (_, p) = key(1);
            let _ = verify(&bytes, "gw-7", &p);
        }
    }
}
