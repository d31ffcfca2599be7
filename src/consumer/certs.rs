//! HTTPS certificates as hecd-haproxy keeps them: a file checked ([`inspect`]) and the pure
//! model ([`Certs`]) of which certificates HAProxy should serve and which it does.
//!
//! A certificate file holds a chain and its private key (PEM). It is served when it parses,
//! has exactly one private key that matches its leaf certificate, names at least one DNS name
//! (subjectAltName), and is neither expired nor not yet valid; it serves exactly those names
//! (a wildcard `*.example.com` covers one label, as TLS defines it). What HAProxy gets is the
//! chain and key written out again from what was parsed, nothing else of the file.
//!
//! In HAProxy, a certificate is named by its contents (`DIR/certs/<sha256>.pem`): a file that
//! changes is a new certificate added beside the old one, then the old one removed, so every
//! handshake meets one of the two and none fails (no `set` on a certificate in use, no moment
//! without one). A file that turns bad changes nothing: the last good version of that file
//! keeps serving until the file is removed. Order of one pass, so no client is sent to HTTPS
//! for a host that has no certificate there: 1. new certificates are loaded (`new ssl cert`,
//! `set ssl cert`, `commit ssl cert`, `add ssl crt-list`); 2. the hosts map (the names that
//! have a certificate, for the redirect) is made equal to what is served; 3. certificates no
//! file wants any more are removed (`del ssl crt-list`, `del ssl cert`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer,
    UnixTime,
};

use crate::haproxy::RuntimeError;

/// The source name of a certificate from the store: `etcd/HOST` (a file's name has no `/`).
pub const STORE: &str = "etcd/";

/// Largest certificate file read (a chain of a few certificates and a key is a few KiB).
pub const MAX_FILE: u64 = 256 * 1024;

/// A certificate that can be served: its chain and key as HAProxy gets them, and its names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cert {
    /// SHA-256 of `pem`, in hex: the certificate's name in HAProxy.
    pub id: String,
    /// The chain, then the key, in PEM, written from what was parsed (no blank line in it:
    /// the runtime API ends a payload at the first one).
    pub pem: String,
    /// Its DNS names, lower case, sorted (wildcards as `*.example.com`).
    pub names: Vec<String>,
}

/// The wall clock as the certificate checks take it.
pub fn unix_now() -> UnixTime {
    UnixTime::since_unix_epoch(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// Checks one certificate file's contents at `now`; the reason it cannot be served, else the
/// certificate.
pub fn inspect(data: &[u8], now: UnixTime) -> Result<Cert, String> {
    let mut chain: Vec<CertificateDer<'static>> = Vec::new();
    let mut keys: Vec<PrivateKeyDer<'static>> = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(data) {
        let (kind, der) = section.map_err(|e| format!("not PEM ({e})"))?;
        match kind {
            SectionKind::Certificate => chain.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => keys.push(PrivatePkcs8KeyDer::from(der).into()),
            SectionKind::RsaPrivateKey => keys.push(PrivatePkcs1KeyDer::from(der).into()),
            SectionKind::EcPrivateKey => keys.push(PrivateSec1KeyDer::from(der).into()),
            // Parameters and the like: not passed on.
            _ => {}
        }
    }
    let leaf = chain.first().ok_or("no PEM certificate in it")?;
    let key = match keys.len() {
        0 => return Err("no private key in it (the key goes in the same file)".into()),
        1 => keys.remove(0),
        n => return Err(format!("{n} private keys in it (one is expected)")),
    };
    let parsed = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("its first certificate does not parse ({e})"))?;
    let mut names: Vec<String> = parsed
        .valid_dns_names()
        .map(str::to_ascii_lowercase)
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err("its certificate names no DNS name (subjectAltName)".into());
    }
    // Only the certificate itself is in question here (its dates, that it is one, its usage):
    // without trust anchors, one that passes those checks ends at "unknown issuer", and any
    // other error is about the certificate (dates in the wrong order, a CA certificate).
    match parsed.verify_for_usage(
        &[],
        &[],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Err(webpki::Error::CertExpired { time, not_after }) => {
            let days = time.as_secs().saturating_sub(not_after.as_secs()) / 86_400;
            return Err(format!("its certificate expired {days} days ago"));
        }
        Err(webpki::Error::CertNotValidYet { .. }) => {
            return Err("its certificate is not valid yet".into());
        }
        Err(e @ webpki::Error::RequiredEkuNotFoundContext(_)) => {
            return Err(format!("its certificate is not for servers ({e})"));
        }
        // As far as a check without trust anchors goes, it is fine. A self-signed certificate
        // from `openssl req -x509` says it is a CA: served all the same (its dates were
        // checked first; the usage check comes after this one).
        Err(webpki::Error::UnknownIssuer | webpki::Error::CaUsedAsEndEntity) => {}
        Err(e) => return Err(format!("its certificate is not usable ({e})")),
        Ok(_) => {}
    }
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("unusable private key ({e})"))?;
    match rustls::sign::CertifiedKey::new(chain.clone(), signing).keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            return Err("cannot tell whether the key matches the certificate".into());
        }
        Err(_) => return Err("its private key does not match its certificate".into()),
    }
    let mut pem = String::new();
    for c in &chain {
        pem_block(&mut pem, "CERTIFICATE", c.as_ref());
    }
    let label = match &key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    pem_block(&mut pem, label, key.secret_der());
    let digest = ring::digest::digest(&ring::digest::SHA256, pem.as_bytes());
    let id = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Cert { id, pem, names })
}

/// `der` as one PEM block labelled `label`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let mut out = String::new();
    pem_block(&mut out, label, der);
    out
}

fn pem_block(out: &mut String, label: &str, der: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
}

/// What a look at the certificate directory found: each `*.pem` file's name and verdict.
pub type Found = BTreeMap<String, Result<Cert, String>>;

/// One operation on HAProxy's certificates or hosts map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertOp {
    /// Write `DIR/certs/ID.pem`, then `new ssl cert`, `set ssl cert`, `commit ssl cert`,
    /// `add ssl crt-list` with the certificate's names as SNI filters.
    Load {
        path: PathBuf,
        pem: String,
        names: Vec<String>,
        /// The files it comes from, for messages.
        files: Vec<String>,
    },
    /// `del ssl crt-list`, `del ssl cert`.
    Unload { path: PathBuf },
    /// The hosts map: `NAME 1` ([`crate::haproxy::Runtime::map_set`]).
    HostAdd { name: String },
    /// The hosts map: `del map NAME`.
    HostDel { name: String },
    /// The challenges map: `TOKEN ANSWER` ([`crate::haproxy::Runtime::map_set`]).
    AnswerSet { token: String, answer: String },
    /// The challenges map: `del map TOKEN`.
    AnswerDel { token: String },
}

/// The certificates: what the files want, what HAProxy serves.
#[derive(Debug, Default)]
pub struct Certs {
    /// Where HAProxy's copies live (`DIR/certs`).
    dir: PathBuf,
    /// Each file's last good certificate.
    wanted: BTreeMap<String, Cert>,
    /// What HAProxy serves: path → names.
    loaded: BTreeMap<PathBuf, Vec<String>>,
    /// The hosts map as HAProxy has it.
    hosts: BTreeSet<String>,
    /// Certificates HAProxy refused (by path): not tried again until their file changes.
    refused: BTreeSet<PathBuf>,
    /// An operation failed on the socket: the next pass plans again.
    pub retry: bool,
    /// The pending ACME challenges (token → key authorization), from the store.
    answers: BTreeMap<String, String>,
    /// The challenges map as HAProxy has it.
    answered: BTreeMap<String, String>,
}

impl Certs {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            ..Self::default()
        }
    }

    /// HAProxy's copy of `cert`.
    pub fn path(&self, cert: &Cert) -> PathBuf {
        self.dir.join(format!("{}.pem", cert.id))
    }

    /// Takes a look at the directory: a good file is wanted as it is now; a bad one keeps its
    /// last good version (if it had one); a file that is gone is no longer wanted. Whether
    /// anything changed.
    pub fn update(&mut self, found: &Found) -> bool {
        let before = self.wanted.clone();
        // Store sources (`etcd/HOST`: a file name has no `/`) are not the directory's.
        self.wanted
            .retain(|source, _| source.contains('/') || found.contains_key(source));
        for (file, verdict) in found {
            if let Ok(cert) = verdict {
                if self.wanted.get(file) != Some(cert) {
                    log::info!("certificate {file}: serving {}", cert.names.join(", "));
                }
                self.wanted.insert(file.clone(), cert.clone());
            }
        }
        let live: BTreeSet<PathBuf> = self.wanted.values().map(|c| self.path(c)).collect();
        self.refused.retain(|p| live.contains(p));
        before != self.wanted
    }

    /// The store's certificate for `host` (ACME, `CERT_PREFIX/certs/HOST`), checked at `now`:
    /// served under the source `etcd/HOST` when good; a bad one changes nothing (the last
    /// good one stays), and `None` (the key went) stops serving it. Whether anything changed.
    pub fn update_store(&mut self, host: &str, pem: Option<&str>, now: UnixTime) -> bool {
        let source = format!("{STORE}{host}");
        let Some(pem) = pem else {
            return self.wanted.remove(&source).is_some();
        };
        match inspect(pem.as_bytes(), now) {
            Ok(cert) if self.wanted.get(&source) == Some(&cert) => false,
            Ok(cert) => {
                log::info!("certificate {source}: serving {}", cert.names.join(", "));
                self.wanted.insert(source, cert);
                true
            }
            Err(e) => {
                log::warn!(
                    "certificate {source}: {e}; not served (what served it before still does)"
                );
                false
            }
        }
    }

    /// Everything the store holds (a full read): store sources it no longer has go, the
    /// others are updated as [`Certs::update_store`] does. Whether anything changed.
    pub fn replace_store(&mut self, certs: &BTreeMap<String, String>, now: UnixTime) -> bool {
        let before = self.wanted.len();
        self.wanted.retain(|source, _| {
            source
                .strip_prefix(STORE)
                .is_none_or(|host| certs.contains_key(host))
        });
        let mut changed = before != self.wanted.len();
        for (host, pem) in certs {
            changed |= self.update_store(host, Some(pem), now);
        }
        changed
    }

    /// The answer to the pending ACME challenge `token` (`None`: withdrawn).
    pub fn set_answer(&mut self, token: &str, answer: Option<&str>) {
        match answer {
            Some(a) => self.answers.insert(token.to_owned(), a.to_owned()),
            None => self.answers.remove(token),
        };
    }

    /// Every pending challenge's answer (a full read of the store).
    pub fn replace_answers(&mut self, answers: &BTreeMap<String, String>) {
        self.answers.clone_from(answers);
    }

    /// Step 0: the challenges map (`DIR/acme.map`) made equal to the pending challenges.
    pub fn plan_answers(&self) -> Vec<CertOp> {
        let sets = self
            .answers
            .iter()
            .filter(|(t, a)| self.answered.get(*t) != Some(*a))
            .map(|(t, a)| CertOp::AnswerSet {
                token: t.clone(),
                answer: a.clone(),
            });
        let dels = self
            .answered
            .keys()
            .filter(|t| !self.answers.contains_key(*t))
            .map(|t| CertOp::AnswerDel { token: t.clone() });
        sets.chain(dels).collect()
    }

    /// The challenges map file: `TOKEN ANSWER` per pending challenge.
    pub fn answers_map(&self) -> String {
        self.answered
            .iter()
            .map(|(t, a)| format!("{t} {a}\n"))
            .collect()
    }

    /// The names of each certificate from `--certs` (ACME leaves what they cover alone).
    pub fn file_names(&self) -> Vec<Vec<String>> {
        self.wanted
            .iter()
            .filter(|(source, _)| !source.starts_with(STORE))
            .map(|(_, c)| c.names.clone())
            .collect()
    }

    /// Wanted certificates by path, with the files that want each.
    fn wanted_paths(&self) -> BTreeMap<PathBuf, (&Cert, Vec<String>)> {
        let mut out: BTreeMap<PathBuf, (&Cert, Vec<String>)> = BTreeMap::new();
        for (file, cert) in &self.wanted {
            let path = self.path(cert);
            if !self.refused.contains(&path) {
                out.entry(path)
                    .or_insert((cert, Vec::new()))
                    .1
                    .push(file.clone());
            }
        }
        out
    }

    /// The steps of one pass, in order: the challenges' answers, new certificates, the hosts
    /// map, old certificates (see the module's doc for why this order).
    pub const STEPS: [fn(&Certs) -> Vec<CertOp>; 4] = [
        Certs::plan_answers,
        Certs::plan_loads,
        Certs::plan_hosts,
        Certs::plan_unloads,
    ];

    /// Step 1: the certificates to load.
    pub fn plan_loads(&self) -> Vec<CertOp> {
        self.wanted_paths()
            .into_iter()
            .filter(|(path, _)| !self.loaded.contains_key(path))
            .map(|(path, (cert, files))| CertOp::Load {
                path,
                pem: cert.pem.clone(),
                names: cert.names.clone(),
                files,
            })
            .collect()
    }

    /// Step 2: the hosts map made equal to the names of the certificates that are served and
    /// still wanted.
    pub fn plan_hosts(&self) -> Vec<CertOp> {
        let wanted = self.wanted_paths();
        let served: BTreeSet<&String> = self
            .loaded
            .iter()
            .filter(|(path, _)| wanted.contains_key(*path))
            .flat_map(|(_, names)| names)
            .collect();
        let adds = served
            .iter()
            .filter(|n| !self.hosts.contains(**n))
            .map(|n| CertOp::HostAdd { name: (*n).clone() });
        let dels = self
            .hosts
            .iter()
            .filter(|n| !served.contains(n))
            .map(|n| CertOp::HostDel { name: n.clone() });
        adds.chain(dels).collect()
    }

    /// Step 3: the certificates no file wants.
    pub fn plan_unloads(&self) -> Vec<CertOp> {
        let wanted = self.wanted_paths();
        self.loaded
            .keys()
            .filter(|p| !wanted.contains_key(*p))
            .map(|p| CertOp::Unload { path: p.clone() })
            .collect()
    }

    /// Takes the result of `op`; whether HAProxy changed. A refused certificate is not tried
    /// again (until its file changes); anything else that failed is planned again.
    pub fn applied(&mut self, op: &CertOp, result: Result<(), RuntimeError>) -> bool {
        match (op, result) {
            (CertOp::Load { path, names, .. }, Ok(())) => {
                self.loaded.insert(path.clone(), names.clone());
            }
            (CertOp::Load { path, files, .. }, Err(RuntimeError::Refused(e))) => {
                log::warn!(
                    "certificate {}: HAProxy refuses it, not served: {e}",
                    files.join(", ")
                );
                self.refused.insert(path.clone());
                return false;
            }
            (CertOp::Unload { path }, Ok(()) | Err(RuntimeError::Missing(_))) => {
                self.loaded.remove(path);
            }
            (CertOp::HostAdd { name }, Ok(())) => {
                self.hosts.insert(name.clone());
            }
            (CertOp::HostDel { name }, Ok(()) | Err(RuntimeError::Missing(_))) => {
                self.hosts.remove(name);
            }
            (CertOp::AnswerSet { token, answer, .. }, Ok(())) => {
                self.answered.insert(token.clone(), answer.clone());
            }
            (CertOp::AnswerDel { token }, Ok(()) | Err(RuntimeError::Missing(_))) => {
                self.answered.remove(token);
            }
            (op, Err(e)) => {
                log::warn!("{}: {e}; trying again", Short(op));
                self.retry = true;
                return false;
            }
        }
        true
    }

    /// The challenge tokens HAProxy answers.
    pub fn answered_tokens(&self) -> BTreeSet<String> {
        self.answered.keys().cloned().collect()
    }

    /// Everything wanted counted as served, for the files HAProxy starts from (a start, a
    /// restart, a reload: it then reads the certificates from the crt-list file itself).
    pub fn assume_loaded(&mut self) {
        let wanted = self.wanted_paths();
        self.loaded = wanted
            .iter()
            .map(|(p, (c, _))| (p.clone(), c.names.clone()))
            .collect();
        self.hosts = self.loaded.values().flatten().cloned().collect();
        self.answered.clone_from(&self.answers);
    }

    /// Nothing served (HAProxy refused to start with them: they are then loaded one by one).
    pub fn assume_none(&mut self) {
        self.loaded.clear();
        self.hosts.clear();
    }

    /// The crt-list file for what is served: `PATH NAME...` per certificate.
    pub fn crt_list(&self) -> String {
        self.loaded
            .iter()
            .map(|(p, names)| format!("{} {}\n", p.display(), names.join(" ")))
            .collect()
    }

    /// The hosts map file: `NAME 1` per name served.
    pub fn hosts_map(&self) -> String {
        self.hosts.iter().map(|n| format!("{n} 1\n")).collect()
    }

    /// The wanted certificates' copies for HAProxy: path and text.
    pub fn wanted_files(&self) -> Vec<(PathBuf, String)> {
        self.wanted_paths()
            .into_iter()
            .map(|(path, (cert, _))| (path, cert.pem.clone()))
            .collect()
    }

    /// The paths HAProxy serves (their files must stay on disk).
    pub fn loaded_paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.loaded.keys()
    }
}

/// An operation without its PEM, for messages.
struct Short<'a>(&'a CertOp);

impl std::fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            CertOp::Load { files, .. } => write!(f, "loading certificate {}", files.join(", ")),
            CertOp::Unload { path } => write!(f, "removing certificate {}", path.display()),
            CertOp::HostAdd { name } | CertOp::HostDel { name } => {
                write!(f, "hosts map entry {name}")
            }
            CertOp::AnswerSet { token, .. } | CertOp::AnswerDel { token } => {
                write!(f, "ACME challenge {token}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 1 January of `year` (roughly: 365.25 days a year), UTC.
    fn at(year: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs((year - 1970) * 31_557_600))
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/certs/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn a_good_file_serves_its_dns_names_and_nothing_else_of_it() {
        let cert = inspect(&fixture("a.pem"), at(2030)).unwrap();
        // Lower case, sorted; the CN is not a name it serves, only the subjectAltName.
        assert_eq!(cert.names, ["*.a.test", "a.test"]);
        assert_eq!(cert.pem.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(cert.pem.matches("BEGIN PRIVATE KEY").count(), 1);
        assert!(!cert.pem.contains("\n\n") && cert.pem.ends_with("-----\n"));
        assert_eq!(cert.id.len(), 64);
        // The same certificate written again is the same certificate.
        assert_eq!(inspect(cert.pem.as_bytes(), at(2030)).unwrap(), cert);
        // An RSA key in PKCS#1; IP addresses in the subjectAltName are not names.
        let rsa = inspect(&fixture("b-rsa.pem"), at(2030)).unwrap();
        assert_eq!(rsa.names, ["b.test"]);
        assert!(rsa.pem.contains("BEGIN RSA PRIVATE KEY"));
        assert_ne!(rsa.id, cert.id);
    }

    /// The compose file's and the stack's HTTPS secret is a file hecd-haproxy serves.
    #[test]
    fn the_demo_certificate_of_the_docker_files_is_served() {
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docker/secrets/app.localhost.pem"
        ))
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let cert = inspect(&data, UnixTime::since_unix_epoch(now)).unwrap();
        assert_eq!(cert.names, ["app.localhost"]);
        for file in ["docker-compose.yml", "stack.yml"] {
            let yaml =
                std::fs::read_to_string(format!("{}/docker/{file}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap();
            for needed in [
                "HECD_HTTPS: \":8443\"",
                "HECD_CERTS: /run/secrets",
                "target: app.localhost.pem",
                "file: ./secrets/app.localhost.pem",
            ] {
                assert!(yaml.contains(needed), "{file} lacks {needed}");
            }
        }
    }

    #[test]
    fn a_bad_file_says_why() {
        let a = fixture("a.pem");
        let text = String::from_utf8(a.clone()).unwrap();
        let cert_only = &text[..text.find("-----BEGIN PRIVATE KEY").unwrap()];
        let key_only = &text[text.find("-----BEGIN PRIVATE KEY").unwrap()..];
        let other = String::from_utf8(fixture("other.key")).unwrap();
        let cases: Vec<(String, &str)> = vec![
            ("garbage\n".into(), "no PEM certificate"),
            (String::new(), "no PEM certificate"),
            (cert_only.into(), "no private key"),
            (key_only.into(), "no PEM certificate"),
            (format!("{cert_only}{other}"), "does not match"),
            (format!("{text}{other}"), "2 private keys"),
            (
                String::from_utf8(fixture("nosan.pem")).unwrap(),
                "no DNS name",
            ),
            (
                String::from_utf8(fixture("client.pem")).unwrap(),
                "not for servers",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
                "not PEM",
            ),
            (
                format!("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n{key_only}"),
                "does not parse",
            ),
        ];
        for (data, why) in cases {
            let e = inspect(data.as_bytes(), at(2030)).unwrap_err();
            assert!(e.contains(why), "{why:?}: {e}");
        }
        let e = inspect(&a, at(2040)).unwrap_err();
        assert!(e.contains("expired") && e.contains("days ago"), "{e}");
        let e = inspect(&a, at(2020)).unwrap_err();
        assert!(e.contains("not valid yet"), "{e}");
        // Hostile bytes: an error, never a panic.
        // The PEM text edited, and the certificate's DER edited then written as PEM again (so
        // the X.509 parser meets almost-right input, not only broken base64).
        let mut m = crate::fuzz::Mutator::new(0x5e7);
        let good = inspect(&a, at(2030)).unwrap();
        let der = CertificateDer::pem_slice_iter(good.pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        for _ in 0..2_000 {
            let _ = inspect(m.mutate(&a).as_bytes(), at(2030));
            let mut bytes = der.as_ref().to_vec();
            for _ in 0..(1 + m.next() % 3) {
                let at_byte = (m.next() as usize) % bytes.len();
                match m.next() % 3 {
                    0 => bytes[at_byte] = m.next() as u8,
                    1 => bytes.truncate(at_byte.max(1)),
                    _ => bytes.insert(at_byte, m.next() as u8),
                }
            }
            let mut pem = String::new();
            pem_block(&mut pem, "CERTIFICATE", &bytes);
            pem.push_str(key_only);
            let _ = inspect(pem.as_bytes(), at(2030));
        }
    }

    fn found(files: &[(&str, Result<Cert, String>)]) -> Found {
        files
            .iter()
            .map(|(f, v)| ((*f).to_owned(), v.clone()))
            .collect()
    }

    fn cert(id: &str, names: &[&str]) -> Cert {
        Cert {
            id: id.into(),
            pem: format!("pem of {id}"),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    /// Runs a whole pass as the applier does, every operation succeeding; the operations.
    fn pass(certs: &mut Certs) -> Vec<CertOp> {
        let mut all = Vec::new();
        for step in Certs::STEPS {
            for op in step(certs) {
                certs.applied(&op, Ok(()));
                all.push(op);
            }
        }
        all
    }

    fn short(ops: &[CertOp]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                CertOp::Load { path, .. } => format!("load {}", path.display()),
                CertOp::Unload { path } => format!("unload {}", path.display()),
                CertOp::HostAdd { name } => format!("host+ {name}"),
                CertOp::HostDel { name } => format!("host- {name}"),
                CertOp::AnswerSet { token, .. } => format!("answer+ {token}"),
                CertOp::AnswerDel { token } => format!("answer- {token}"),
            })
            .collect()
    }

    #[test]
    fn a_replaced_file_is_served_new_before_old_goes_and_a_bad_one_changes_nothing() {
        let mut c = Certs::new(Path::new("/lb/certs"));
        let v1 = cert("v1", &["a.test"]);
        assert!(c.update(&found(&[("a.pem", Ok(v1.clone()))])));
        assert_eq!(
            short(&pass(&mut c)),
            ["load /lb/certs/v1.pem", "host+ a.test"]
        );
        assert_eq!(c.crt_list(), "/lb/certs/v1.pem a.test\n");
        assert!(pass(&mut c).is_empty(), "a second pass does nothing");
        // Rotation: the new one is loaded, then the old one removed; the host stays mapped.
        let v2 = cert("v2", &["a.test"]);
        c.update(&found(&[("a.pem", Ok(v2.clone()))]));
        assert_eq!(
            short(&pass(&mut c)),
            ["load /lb/certs/v2.pem", "unload /lb/certs/v1.pem"]
        );
        // The file turns bad: nothing changes.
        assert!(!c.update(&found(&[("a.pem", Err("garbage".into()))])));
        assert!(pass(&mut c).is_empty());
        assert_eq!(c.crt_list(), "/lb/certs/v2.pem a.test\n");
        // A new name: mapped once its certificate is served; the name left behind unmapped
        // before its certificate goes.
        let v3 = cert("v3", &["www.a.test"]);
        c.update(&found(&[("a.pem", Ok(v3))]));
        assert_eq!(
            short(&pass(&mut c)),
            [
                "load /lb/certs/v3.pem",
                "host+ www.a.test",
                "host- a.test",
                "unload /lb/certs/v2.pem"
            ]
        );
        // Removed: unmapped, then unloaded.
        assert!(c.update(&found(&[])));
        assert_eq!(
            short(&pass(&mut c)),
            ["host- www.a.test", "unload /lb/certs/v3.pem"]
        );
        assert_eq!(
            (c.crt_list(), c.hosts_map()),
            (String::new(), String::new())
        );
    }

    #[test]
    fn refused_or_failed_operations_are_handled_apart() {
        let mut c = Certs::new(Path::new("/lb/certs"));
        let good = cert("good", &["a.test"]);
        let odd = cert("odd", &["b.test"]);
        c.update(&found(&[
            ("a.pem", Ok(good.clone())),
            ("b.pem", Ok(odd.clone())),
        ]));
        // HAProxy refuses one, the socket fails for the other.
        for op in c.plan_loads() {
            let CertOp::Load { path, .. } = &op else {
                unreachable!()
            };
            let result = if path.ends_with("odd.pem") {
                Err(RuntimeError::Refused("no".into()))
            } else {
                Err(RuntimeError::Socket("busy".into()))
            };
            assert!(!c.applied(&op, result));
        }
        assert!(c.retry);
        // The refused one is not tried again; the other one is, and nothing maps b.test.
        assert_eq!(
            short(&pass(&mut c)),
            ["load /lb/certs/good.pem", "host+ a.test"]
        );
        // Its file changes: tried again.
        c.update(&found(&[
            ("a.pem", Ok(good)),
            ("b.pem", Ok(cert("odd2", &["b.test"]))),
        ]));
        assert_eq!(
            short(&pass(&mut c)),
            ["load /lb/certs/odd2.pem", "host+ b.test"]
        );
        // Two files with the same certificate: one certificate; it stays while either does.
        let mut c = Certs::new(Path::new("/lb/certs"));
        let same = cert("same", &["a.test"]);
        c.update(&found(&[
            ("a.pem", Ok(same.clone())),
            ("copy.pem", Ok(same.clone())),
        ]));
        assert_eq!(
            short(&pass(&mut c)),
            ["load /lb/certs/same.pem", "host+ a.test"]
        );
        c.update(&found(&[("copy.pem", Ok(same))]));
        assert!(pass(&mut c).is_empty());
    }

    #[test]
    fn a_start_counts_every_wanted_certificate_as_served() {
        let mut c = Certs::new(Path::new("/lb/certs"));
        c.update(&found(&[
            ("a.pem", Ok(cert("a", &["*.a.test", "a.test"]))),
            ("bad.pem", Err("expired".into())),
        ]));
        c.assume_loaded();
        assert_eq!(c.crt_list(), "/lb/certs/a.pem *.a.test a.test\n");
        assert_eq!(c.hosts_map(), "*.a.test 1\na.test 1\n");
        assert!(pass(&mut c).is_empty());
        assert_eq!(
            c.wanted_files(),
            [(PathBuf::from("/lb/certs/a.pem"), "pem of a".to_owned())]
        );
        c.assume_none();
        assert_eq!(
            short(&pass(&mut c)),
            ["load /lb/certs/a.pem", "host+ *.a.test", "host+ a.test"]
        );
    }
}
