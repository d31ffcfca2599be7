//! The certificate store's key layout under `--cert-prefix` (default `/hecd-certs`), shared by
//! every balancer:
//!
//! | key | value | lease |
//! |---|---|---|
//! | `CERT_PREFIX/account` | `{"key": BASE64 PKCS#8}`: the ACME account's key | none |
//! | `CERT_PREFIX/certs/HOST` | the chain (leaf first) and its private key, PEM | none |
//! | `CERT_PREFIX/locks/HOST` | the `--lb-id` ordering for HOST | the orderer's |
//! | `CERT_PREFIX/challenges/TOKEN` | the key authorization `TOKEN.THUMBPRINT` | the orderer's |
//!
//! The lock is created only if absent (one transaction), under a lease its balancer keeps
//! alive while it orders: a balancer that dies frees it within the lease's TTL.

use crate::contract;

/// `--cert-prefix`'s default.
pub const DEFAULT_CERT_PREFIX: &str = "/hecd-certs";

/// Largest certificate value taken from the store (as for a file).
pub const MAX_CERT: usize = crate::consumer::certs::MAX_FILE as usize;

/// `CERT_PREFIX/`: everything of the store.
pub fn dir(prefix: &str) -> String {
    format!("{prefix}/")
}

pub fn account(prefix: &str) -> String {
    format!("{prefix}/account")
}

pub fn cert(prefix: &str, host: &str) -> String {
    format!("{prefix}/certs/{host}")
}

pub fn lock(prefix: &str, host: &str) -> String {
    format!("{prefix}/locks/{host}")
}

pub fn challenge(prefix: &str, token: &str) -> String {
    format!("{prefix}/challenges/{token}")
}

/// What a key of the store is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    Account,
    Cert(String),
    Lock(String),
    Challenge(String),
}

/// A host as a route declares it: a DNS name in lower case (the rule of [`contract::Route`]).
pub fn valid_host(host: &str) -> bool {
    contract::Route::parse(host).is_ok_and(|r| r.path.is_none() && r.host == host)
}

/// A token as RFC 8555 makes them: base64url characters, not empty, bounded.
pub fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The key `key` under `prefix`, if it is one of the store's (a host that is a valid DNS name,
/// a valid token).
pub fn parse(prefix: &str, key: &str) -> Option<Item> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    if rest == "account" {
        return Some(Item::Account);
    }
    let (kind, name) = rest.split_once('/')?;
    match kind {
        "certs" if valid_host(name) => Some(Item::Cert(name.to_owned())),
        "locks" if valid_host(name) => Some(Item::Lock(name.to_owned())),
        "challenges" if valid_token(name) => Some(Item::Challenge(name.to_owned())),
        _ => None,
    }
}

/// A certificate value worth checking: bounded, PEM-looking (the check proper is
/// [`crate::consumer::certs::inspect`]'s).
pub fn valid_cert_value(value: &str) -> bool {
    value.len() <= MAX_CERT && value.contains("-----BEGIN CERTIFICATE-----")
}

/// A key authorization for `token`: `TOKEN.THUMBPRINT`, the thumbprint base64url (43
/// characters for SHA-256). Only these go into HAProxy's map, as they are the answer sent.
pub fn valid_key_authorization(token: &str, value: &str) -> bool {
    value
        .strip_prefix(token)
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|thumb| thumb.len() == 43 && valid_token(thumb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_nothing_else_does() {
        let p = "/hecd-certs";
        assert_eq!(parse(p, &account(p)), Some(Item::Account));
        assert_eq!(
            parse(p, &cert(p, "a.test")),
            Some(Item::Cert("a.test".into()))
        );
        assert_eq!(
            parse(p, &lock(p, "a.test")),
            Some(Item::Lock("a.test".into()))
        );
        assert_eq!(
            parse(p, &challenge(p, "Ab-_9")),
            Some(Item::Challenge("Ab-_9".into()))
        );
        for bad in [
            "/hecd-certs/certs/a b",
            "/hecd-certs/certs/a.test/x",
            "/hecd-certs/challenges/a.b",
            "/hecd-certs/challenges/",
            "/hecd-certsx/certs/a.test",
            "/other/certs/a.test",
            "/hecd-certs/unknown/a.test",
            "/hecd-certs",
        ] {
            assert_eq!(parse(p, bad), None, "{bad}");
        }
        let thumb = "a".repeat(43);
        assert!(valid_key_authorization("tok", &format!("tok.{thumb}")));
        assert!(!valid_key_authorization("tok", &format!("tok.{thumb} ")));
        assert!(!valid_key_authorization("tok", &format!("other.{thumb}")));
        assert!(!valid_key_authorization("tok", "tok.short"));
        assert!(valid_cert_value("-----BEGIN CERTIFICATE-----\n"));
        assert!(!valid_cert_value("garbage"));
        assert!(!valid_cert_value(&format!(
            "-----BEGIN CERTIFICATE-----{}",
            "x".repeat(MAX_CERT)
        )));
    }
}
