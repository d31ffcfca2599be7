//! An ACME (RFC 8555) client for one account, blocking, over the project's HTTP client (ureq
//! with rustls, every request bounded in time and size): the directory, a nonce, the account
//! (found again by its key, or created), and one order for one host with the HTTP-01
//! challenge, from `newOrder` to the certificate chain.
//!
//! Everything the CA sends is hostile: an answer that is not the JSON expected, a missing
//! header or URL, a status that never settles is an error (polls are bounded), never a panic.
//! A `badNonce` answer is tried again with the nonce it came with (RFC 8555, 6.5); so is a
//! request the CA answers with 5xx once. The order's key and CSR are made with rcgen (ECDSA
//! P-256).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::jws::{AccountKey, b64url, key_authorization};
use crate::http::{Http, Method, Reply};

/// Deadline of one request to the CA.
const CALL: Duration = Duration::from_secs(10);

/// How long an authorization or an order may take to settle.
const SETTLE: Duration = Duration::from_secs(90);

/// Longest wait between two polls (the CA's `Retry-After` is taken up to this).
const MAX_POLL: Duration = Duration::from_secs(5);

/// Why an ACME step failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcmeError {
    /// No usable answer (unreachable, timed out, broken, not JSON, not what RFC 8555 says).
    Ca(String),
    /// The CA said no: its problem document's type and detail.
    Problem(String),
    /// Our side failed (etcd for the challenge, the lock lost, the key or CSR).
    Local(String),
}

impl std::fmt::Display for AcmeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcmeError::Ca(e) | AcmeError::Problem(e) | AcmeError::Local(e) => f.write_str(e),
        }
    }
}

/// What an order needs from the balancer while it runs.
pub trait Hooks {
    /// Makes `key_authorization` the answer to `/.well-known/acme-challenge/TOKEN` on every
    /// balancer (etcd); the CA may ask any of them.
    fn publish(&mut self, token: &str, key_authorization: &str) -> Result<(), String>;
    /// Withdraws it.
    fn unpublish(&mut self, token: &str);
    /// Called between steps: keeps the lock's lease alive; an error ends the order.
    fn alive(&mut self) -> Result<(), String>;
}

/// A certificate issued: the chain (PEM, leaf first) and its private key (PKCS#8 PEM).
pub struct Issued {
    pub chain: String,
    pub key: String,
}

/// The CA's directory.
#[derive(Clone, Debug)]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

/// One account at one CA.
pub struct Acme {
    http: Http,
    directory_url: String,
    directory: Option<Directory>,
    nonce: Option<String>,
    key: AccountKey,
    /// The account's URL, once known.
    kid: Option<String>,
}

/// An answer's JSON body, or why it is not one.
fn json_of(reply: &Reply, what: &str) -> Result<Value, AcmeError> {
    serde_json::from_str(&reply.body).map_err(|e| AcmeError::Ca(format!("{what}: not JSON ({e})")))
}

/// A string member of `v`, or an error naming it.
fn text<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a str, AcmeError> {
    v[name]
        .as_str()
        .ok_or_else(|| AcmeError::Ca(format!("{what}: no \"{name}\" in the answer")))
}

fn header<'a>(reply: &'a Reply, name: &str) -> Option<&'a str> {
    reply
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The answer's `Replay-Nonce`, if it has a usable one (not empty, bounded).
fn nonce_of(reply: &Reply) -> Option<String> {
    header(reply, "replay-nonce")
        .filter(|n| n.len() <= 256 && !n.is_empty())
        .map(str::to_owned)
}

/// A URL the CA gave: `https://` (or `http://`, for a CA on loopback in tests), short, one line.
fn url_from(text: &str, what: &str) -> Result<String, AcmeError> {
    let ok = (text.starts_with("https://") || text.starts_with("http://"))
        && text.len() <= 2048
        && !text.chars().any(|c| c.is_control() || c == ' ');
    if ok {
        Ok(text.to_owned())
    } else {
        Err(AcmeError::Ca(format!("{what}: not a URL: {:.80}", text)))
    }
}

impl Acme {
    pub fn new(http: Http, directory_url: &str, key: AccountKey) -> Self {
        Self {
            http,
            directory_url: directory_url.to_owned(),
            directory: None,
            nonce: None,
            key,
            kid: None,
        }
    }

    pub fn key(&self) -> &AccountKey {
        &self.key
    }

    fn directory(&mut self) -> Result<Directory, AcmeError> {
        if let Some(d) = &self.directory {
            return Ok(d.clone());
        }
        let reply = self
            .http
            .request(Method::Get, &self.directory_url, &[], None, CALL)
            .map_err(|e| AcmeError::Ca(format!("{}: {e}", self.directory_url)))?;
        if reply.status != 200 {
            return Err(AcmeError::Ca(format!(
                "{}: status {}",
                self.directory_url, reply.status
            )));
        }
        let v = json_of(&reply, "the directory")?;
        let d = Directory {
            new_nonce: url_from(text(&v, "newNonce", "the directory")?, "newNonce")?,
            new_account: url_from(text(&v, "newAccount", "the directory")?, "newAccount")?,
            new_order: url_from(text(&v, "newOrder", "the directory")?, "newOrder")?,
        };
        self.directory = Some(d.clone());
        Ok(d)
    }

    fn fresh_nonce(&mut self) -> Result<String, AcmeError> {
        if let Some(n) = self.nonce.take() {
            return Ok(n);
        }
        let url = self.directory()?.new_nonce;
        let reply = self
            .http
            .request(Method::Get, &url, &[], None, CALL)
            .map_err(|e| AcmeError::Ca(format!("newNonce: {e}")))?;
        nonce_of(&reply).ok_or_else(|| AcmeError::Ca("newNonce: no Replay-Nonce".into()))
    }

    /// A signed POST to `url` (`payload` `None`: POST-as-GET), identified by the account's
    /// URL, or by the key itself before there is one. Problems come back as
    /// [`AcmeError::Problem`]; `badNonce` and a 5xx are tried again (twice at most).
    fn post(
        &mut self,
        url: &str,
        payload: Option<&Value>,
        accept: &str,
    ) -> Result<Reply, AcmeError> {
        let mut last = None;
        for _ in 0..3 {
            let nonce = self.fresh_nonce()?;
            let mut protected = json!({"nonce": nonce, "url": url});
            match &self.kid {
                Some(kid) => protected["kid"] = json!(kid),
                None => protected["jwk"] = self.key.jwk(),
            }
            let body = self
                .key
                .sign(protected, payload)
                .map_err(AcmeError::Local)?;
            let reply = self
                .http
                .request(
                    Method::Post,
                    url,
                    &[("accept", accept)],
                    Some(("application/jose+json", &body)),
                    CALL,
                )
                .map_err(|e| AcmeError::Ca(format!("{url}: {e}")))?;
            self.nonce = nonce_of(&reply);
            if reply.status < 400 {
                return Ok(reply);
            }
            let problem: Value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
            let kind = problem["type"].as_str().unwrap_or("").to_owned();
            let detail = problem["detail"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>();
            let text = format!("{url}: status {}: {kind} {detail}", reply.status);
            if kind.ends_with(":badNonce") || reply.status >= 500 {
                last = Some(if reply.status >= 500 {
                    AcmeError::Ca(text)
                } else {
                    AcmeError::Problem(text)
                });
                continue;
            }
            return Err(AcmeError::Problem(text));
        }
        Err(last.unwrap_or_else(|| AcmeError::Ca(format!("{url}: no answer"))))
    }

    /// The account of this key: found (or created) with `newAccount`, its URL kept.
    pub fn register(&mut self, email: Option<&str>) -> Result<String, AcmeError> {
        if let Some(kid) = &self.kid {
            return Ok(kid.clone());
        }
        let url = self.directory()?.new_account;
        let mut payload = json!({"termsOfServiceAgreed": true});
        if let Some(email) = email {
            payload["contact"] = json!([format!("mailto:{email}")]);
        }
        let reply = self.post(&url, Some(&payload), "application/json")?;
        let kid = header(&reply, "location")
            .ok_or_else(|| AcmeError::Ca("newAccount: no Location".into()))
            .and_then(|l| url_from(l, "the account's Location"))?;
        self.kid = Some(kid.clone());
        Ok(kid)
    }

    /// Polls `url` (POST-as-GET) until its status is one of `done`; `invalid` is an error
    /// with the CA's reason. Bounded by [`SETTLE`].
    fn poll(
        &mut self,
        url: &str,
        done: &[&str],
        hooks: &mut dyn Hooks,
    ) -> Result<Value, AcmeError> {
        let deadline = Instant::now() + SETTLE;
        loop {
            hooks.alive().map_err(AcmeError::Local)?;
            let reply = self.post(url, None, "application/json")?;
            let v = json_of(&reply, url)?;
            let status = text(&v, "status", url)?;
            if done.contains(&status) {
                return Ok(v);
            }
            if status == "invalid" {
                let why = v["challenges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(std::iter::once(&v))
                    .find_map(|c| c["error"]["detail"].as_str())
                    .unwrap_or("no reason given");
                return Err(AcmeError::Problem(format!(
                    "{url}: invalid: {}",
                    why.chars().take(300).collect::<String>()
                )));
            }
            if Instant::now() > deadline {
                return Err(AcmeError::Ca(format!(
                    "{url}: still {status} after {} s",
                    SETTLE.as_secs()
                )));
            }
            let wait = header(&reply, "retry-after")
                .and_then(|r| r.trim().parse::<u64>().ok())
                .map_or(Duration::from_millis(250), Duration::from_secs)
                .min(MAX_POLL);
            std::thread::sleep(wait);
        }
    }

    /// Orders a certificate for `host`: the order, each authorization's HTTP-01 challenge
    /// published through `hooks` and answered, a new key and its CSR, the finalization, the
    /// chain.
    pub fn order(&mut self, host: &str, hooks: &mut dyn Hooks) -> Result<Issued, AcmeError> {
        self.register(None)?;
        let new_order = self.directory()?.new_order;
        let payload = json!({"identifiers": [{"type": "dns", "value": host}]});
        let reply = self.post(&new_order, Some(&payload), "application/json")?;
        let order_url = header(&reply, "location")
            .ok_or_else(|| AcmeError::Ca("newOrder: no Location".into()))
            .and_then(|l| url_from(l, "the order's Location"))?;
        let order = json_of(&reply, "newOrder")?;
        let finalize = url_from(text(&order, "finalize", "the order")?, "finalize")?;
        let authorizations: Vec<String> = order["authorizations"]
            .as_array()
            .ok_or_else(|| AcmeError::Ca("the order: no authorizations".into()))?
            .iter()
            .take(10)
            .map(|a| {
                a.as_str()
                    .ok_or_else(|| AcmeError::Ca("the order: an authorization is not a URL".into()))
                    .and_then(|a| url_from(a, "an authorization"))
            })
            .collect::<Result<_, _>>()?;
        for authz_url in authorizations {
            self.authorize(&authz_url, hooks)?;
        }
        self.poll(&order_url, &["ready", "valid"], hooks)?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AcmeError::Local(format!("cannot make a key: {e}")))?;
        let csr = rcgen::CertificateParams::new(vec![host.to_owned()])
            .and_then(|p| p.serialize_request(&key))
            .map_err(|e| AcmeError::Local(format!("cannot make the CSR: {e}")))?;
        self.post(
            &finalize,
            Some(&json!({"csr": b64url(csr.der())})),
            "application/json",
        )?;
        let order = self.poll(&order_url, &["valid"], hooks)?;
        let cert_url = url_from(
            text(&order, "certificate", "the valid order")?,
            "certificate",
        )?;
        let reply = self.post(&cert_url, None, "application/pem-certificate-chain")?;
        if !reply.body.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AcmeError::Ca(format!("{cert_url}: not a PEM chain")));
        }
        Ok(Issued {
            chain: reply.body,
            key: crate::consumer::certs::pem("PRIVATE KEY", &key.serialize_der()),
        })
    }

    /// One authorization: nothing to do when it is valid already; else its HTTP-01
    /// challenge, published, answered and polled until valid, then withdrawn.
    fn authorize(&mut self, url: &str, hooks: &mut dyn Hooks) -> Result<(), AcmeError> {
        let reply = self.post(url, None, "application/json")?;
        let authz = json_of(&reply, url)?;
        if text(&authz, "status", url)? == "valid" {
            return Ok(());
        }
        let challenge = authz["challenges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "http-01")
            .ok_or_else(|| AcmeError::Problem(format!("{url}: no http-01 challenge offered")))?;
        let token = text(challenge, "token", "the challenge")?.to_owned();
        // RFC 8555, 8.3: base64url characters only (it becomes a path segment and a key).
        if token.is_empty()
            || token.len() > 256
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(AcmeError::Ca(format!(
                "{url}: a token that is not base64url"
            )));
        }
        let challenge_url = url_from(text(challenge, "url", "the challenge")?, "the challenge")?;
        let answer = key_authorization(&token, &self.key.thumbprint());
        hooks.publish(&token, &answer).map_err(AcmeError::Local)?;
        let result = self
            .post(&challenge_url, Some(&json!({})), "application/json")
            .and_then(|_| self.poll(url, &["valid"], hooks));
        hooks.unpublish(&token);
        result.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A CA that is not one: answers each request with the reply its path maps to (`{base}`
    /// in a reply is the server's own URL), for as long as the test runs.
    fn hostile(replies: Vec<(&'static str, String)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let me = base.clone();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if c.read(&mut byte).unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                // Read (and drop) a body, if any.
                let length = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = c.read_exact(&mut body);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let reply = replies
                    .iter()
                    .find(|(p, _)| path.starts_with(p))
                    .map_or_else(
                        || "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
                        |(_, r)| {
                            // The body's length once `{base}` is in it.
                            let r = r.replace("{base}", &me);
                            let body = r.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
                            r.replace("{len}", &body.to_string())
                        },
                    );
                let _ = c.write_all(reply.as_bytes());
            }
        });
        base
    }

    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {{len}}\r\nConnection: close\r\n\r\n{body}"
        )
    }

    fn register(base: &str) -> Result<String, AcmeError> {
        let key = AccountKey::generate().unwrap();
        Acme::new(Http::new(None), &format!("{base}/dir"), key).register(Some("a@b.example"))
    }

    const DIRECTORY: &str =
        r#"{"newNonce":"{base}/nonce","newAccount":"{base}/acct","newOrder":"{base}/order"}"#;

    #[test]
    fn a_ca_that_answers_garbage_is_an_error_never_a_panic() {
        let huge = "x".repeat(2 << 20);
        for dir in [
            answer("200 OK", "", "garbage"),
            answer("200 OK", "", "{}"),
            answer(
                "200 OK",
                "",
                r#"{"newNonce":"ftp://x","newAccount":"a","newOrder":"b"}"#,
            ),
            answer(
                "200 OK",
                "",
                r#"{"newNonce":"{base}/n\u0000","newAccount":"{base}/a","newOrder":"{base}/o"}"#,
            ),
            answer("500 Oops", "", DIRECTORY),
            answer("200 OK", "", &huge),
            "SSH-2.0-OpenSSH\r\n".to_owned(),
        ] {
            let base = hostile(vec![("/dir", dir)]);
            match register(&base) {
                Err(AcmeError::Ca(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        // A directory, then a nonce endpoint without a nonce.
        let base = hostile(vec![
            ("/dir", answer("200 OK", "", DIRECTORY)),
            ("/nonce", answer("204 No Content", "", "")),
        ]);
        let r = register(&base);
        assert!(
            matches!(&r, Err(AcmeError::Ca(e)) if e.contains("Replay-Nonce")),
            "{r:?}"
        );
        // The CA refuses: its problem, with its reason.
        let nonce = "Replay-Nonce: n1\r\n";
        let base = hostile(vec![
            ("/dir", answer("200 OK", "", DIRECTORY)),
            ("/nonce", answer("204 No Content", nonce, "")),
            (
                "/acct",
                answer(
                    "403 Forbidden",
                    nonce,
                    r#"{"type":"urn:ietf:params:acme:error:unauthorized","detail":"no"}"#,
                ),
            ),
        ]);
        assert!(
            matches!(register(&base), Err(AcmeError::Problem(e)) if e.contains(":unauthorized no"))
        );
        // badNonce for ever: tried three times, then an error.
        let base = hostile(vec![
            ("/dir", answer("200 OK", "", DIRECTORY)),
            ("/nonce", answer("204 No Content", nonce, "")),
            (
                "/acct",
                answer(
                    "400 Bad Request",
                    nonce,
                    r#"{"type":"urn:ietf:params:acme:error:badNonce"}"#,
                ),
            ),
        ]);
        assert!(matches!(register(&base), Err(AcmeError::Problem(e)) if e.contains("badNonce")));
        // An account without a Location, or with one that is not a URL.
        for location in ["", "Location: javascript:alert(1)\r\n"] {
            let base = hostile(vec![
                ("/dir", answer("200 OK", "", DIRECTORY)),
                ("/nonce", answer("204 No Content", nonce, "")),
                (
                    "/acct",
                    answer("201 Created", &format!("{nonce}{location}"), "{}"),
                ),
            ]);
            assert!(
                matches!(register(&base), Err(AcmeError::Ca(_))),
                "{location:?}"
            );
        }
        // And one that works.
        let base = hostile(vec![
            ("/dir", answer("200 OK", "", DIRECTORY)),
            ("/nonce", answer("204 No Content", nonce, "")),
            (
                "/acct",
                answer(
                    "201 Created",
                    &format!("{nonce}Location: {{base}}/acct/1\r\n"),
                    "{}",
                ),
            ),
        ]);
        assert_eq!(register(&base).unwrap(), format!("{base}/acct/1"));
    }
}
