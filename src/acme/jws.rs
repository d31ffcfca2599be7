//! The ACME account key and the JSON Web Signatures of RFC 8555 (section 6.2) made with it:
//! ES256 (ECDSA P-256 with SHA-256, the signature as `r || s`), the key as a JWK (RFC 7517),
//! its thumbprint (RFC 7638) and the key authorization of a challenge (RFC 8555, 8.1). All
//! of the cryptography is ring's; this module only lays out the JSON.

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

/// Base64url without padding, as JOSE writes every binary field.
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ECDSA P-256 account key.
pub struct AccountKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        write!(f, "AccountKey({})", self.thumbprint())
    }
}

impl AccountKey {
    /// A new key from the system's random source.
    pub fn generate() -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "cannot generate an account key".to_owned())?;
        Self::from_pkcs8(pkcs8.as_ref())
    }

    /// A key from its PKCS#8 DER (as [`AccountKey::pkcs8`] gives it).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not an ECDSA P-256 PKCS#8 key ({e})"))?;
        Ok(Self {
            pair,
            pkcs8: der.to_vec(),
            rng,
        })
    }

    /// The private key, PKCS#8 DER: what is stored to use the same account again.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as a JWK, members in the order RFC 7638 hashes them.
    pub fn jwk(&self) -> Value {
        // The uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = self.pair.public_key().as_ref();
        json!({
            "crv": "P-256",
            "kty": "EC",
            "x": b64url(&point[1..33]),
            "y": b64url(&point[33..65]),
        })
    }

    /// The JWK thumbprint (RFC 7638): SHA-256 of the JWK's required members, lexically
    /// ordered, without white space.
    pub fn thumbprint(&self) -> String {
        let point = self.pair.public_key().as_ref();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            b64url(&point[1..33]),
            b64url(&point[33..65])
        );
        b64url(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// A flattened JWS (the body of every ACME POST): `protected` as given (with `alg`
    /// added), `payload` as JSON, or empty for POST-as-GET (`None`).
    pub fn sign(&self, mut protected: Value, payload: Option<&Value>) -> Result<String, String> {
        protected["alg"] = json!("ES256");
        let protected = b64url(protected.to_string().as_bytes());
        let payload = payload.map_or_else(String::new, |p| b64url(p.to_string().as_bytes()));
        let input = format!("{protected}.{payload}");
        let signature = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| "cannot sign".to_owned())?;
        Ok(json!({
            "protected": protected,
            "payload": payload,
            "signature": b64url(signature.as_ref()),
        })
        .to_string())
    }
}

/// The key authorization of a challenge: what the HTTP-01 resource answers.
pub fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    fn decode(text: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .unwrap()
    }

    #[test]
    fn a_signature_verifies_with_the_jwk_and_survives_a_round_trip_of_the_key() {
        let key = AccountKey::generate().unwrap();
        let body = key
            .sign(
                json!({"nonce": "n1", "url": "https://ca/new-order", "kid": "https://ca/acct/1"}),
                Some(&json!({"identifiers": [{"type": "dns", "value": "a.test"}]})),
            )
            .unwrap();
        let jws: Value = serde_json::from_str(&body).unwrap();
        let protected: Value =
            serde_json::from_slice(&decode(jws["protected"].as_str().unwrap())).unwrap();
        assert_eq!(protected["alg"], "ES256");
        assert_eq!(protected["nonce"], "n1");
        let payload: Value =
            serde_json::from_slice(&decode(jws["payload"].as_str().unwrap())).unwrap();
        assert_eq!(payload["identifiers"][0]["value"], "a.test");
        // Verify with the public key rebuilt from the JWK: 0x04 || x || y.
        let jwk = key.jwk();
        let mut point = vec![4u8];
        point.extend(decode(jwk["x"].as_str().unwrap()));
        point.extend(decode(jwk["y"].as_str().unwrap()));
        let signed = format!(
            "{}.{}",
            jws["protected"].as_str().unwrap(),
            jws["payload"].as_str().unwrap()
        );
        let signature = decode(jws["signature"].as_str().unwrap());
        assert_eq!(signature.len(), 64, "r || s, 32 bytes each");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(signed.as_bytes(), &signature)
            .unwrap();
        // POST-as-GET: an empty payload.
        let get: Value = serde_json::from_str(&key.sign(json!({}), None).unwrap()).unwrap();
        assert_eq!(get["payload"], "");
        // The same key back from its PKCS#8: the same thumbprint.
        let again = AccountKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(again.thumbprint(), key.thumbprint());
        assert!(AccountKey::from_pkcs8(b"garbage").is_err());
        assert!(!format!("{key:?}").contains("BEGIN"));
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638, 3.1, is for an RSA key; the same computation over an EC JWK: SHA-256 of
        // the members crv, kty, x, y in that order, no spaces. Checked against the JWK's own
        // serialisation (serde_json keeps the order json! wrote).
        let key = AccountKey::generate().unwrap();
        let jwk = key.jwk().to_string();
        assert!(
            jwk.starts_with(r#"{"crv":"P-256","kty":"EC","x":""#),
            "{jwk}"
        );
        let expected = b64url(ring::digest::digest(&ring::digest::SHA256, jwk.as_bytes()).as_ref());
        assert_eq!(key.thumbprint(), expected);
        assert_eq!(key.thumbprint().len(), 43);
        assert_eq!(key_authorization("tok", "thumb"), "tok.thumb");
    }
}
