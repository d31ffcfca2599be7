//! etcd access for both programs, read and checked before anything starts: the TLS files
//! (`--etcd-cacert`, `--etcd-cert`, `--etcd-key`) and the password file, each problem a usage
//! error naming its option; and the credentials scrubbed from the process's environment once
//! read. It sends nothing anywhere.

use crate::error::UsageError;
use crate::etcd::{Credentials, Endpoint};
use crate::http::{PemFile, Tls};

/// CA bundle used for `https://` endpoints when `--etcd-cacert` is not given.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The etcd access options both programs take, as given: TLS files and credentials.
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    pub cacert: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub credentials: Option<Credentials>,
    /// `--etcd-password-file`: read by [`load`] into the credentials' password.
    pub password_file: Option<String>,
}

/// Both programs' way to etcd, read before anything starts: the TLS settings for `endpoints`,
/// and the password file's password put into the credentials. Every file is read (and a
/// problem with each reported) before either is used.
pub fn load(
    endpoints: &[Endpoint],
    access: &mut EtcdAccess,
) -> Result<Option<Tls>, Vec<UsageError>> {
    let tls = tls(
        endpoints,
        access.cacert.as_deref(),
        access.cert.as_deref(),
        access.key.as_deref(),
    );
    let password = access
        .password_file
        .as_deref()
        .map(password_file)
        .transpose();
    match (tls, password) {
        (Ok(tls), Ok(password)) => {
            if let (Some(p), Some(creds)) = (password, &mut access.credentials) {
                creds.password = Some(p);
            }
            Ok(tls)
        }
        (t, p) => Err(t.err().into_iter().flatten().chain(p.err()).collect()),
    }
}

/// The TLS settings for `endpoints`: `None` when no endpoint is `https://` and no CA is given.
/// Every file named is read (a client certificate and key even then: a typo shows now, not
/// when the endpoints move to `https://`) and parsed, so a bad one is a usage error naming its
/// option; every unreadable file is reported.
pub fn tls(
    endpoints: &[Endpoint],
    cacert: Option<&str>,
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<Option<Tls>, Vec<UsageError>> {
    let uses_tls = endpoints.iter().any(|e| e.tls) || cacert.is_some();
    let mut errors = Vec::new();
    let ca_path = match cacert {
        Some(p) => Some(p.to_owned()),
        None if !uses_tls => None,
        None if std::path::Path::new(SYSTEM_CA_BUNDLE).exists() => {
            Some(SYSTEM_CA_BUNDLE.to_owned())
        }
        None => {
            errors.push(UsageError::new(
                "--etcd-cacert",
                format!(
                    "https:// endpoints need a CA bundle: give --etcd-cacert FILE ({SYSTEM_CA_BUNDLE} does not exist)"
                ),
            ));
            None
        }
    };
    let mut load = |option: &str, path: Option<&str>| {
        path.and_then(|p| read(option, p).map_err(|e| errors.push(e)).ok())
    };
    let ca = load("--etcd-cacert", ca_path.as_deref());
    let cert_data = load("--etcd-cert", cert);
    let key_data = load("--etcd-key", key);
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some(ca_path), Some(ca)) = (ca_path, ca) else {
        // No TLS in use: a client certificate and key given anyway are still checked.
        if let (Some(cp), Some(c), Some(kp), Some(k)) = (cert, &cert_data, key, &key_data) {
            let (cert, key) = (PemFile { path: cp, data: c }, PemFile { path: kp, data: k });
            crate::http::check_client_cert(&cert, &key)
                .map_err(|(option, e)| vec![UsageError::new(option, e)])?;
        }
        return Ok(None);
    };
    let client = match (cert, cert_data, key, key_data) {
        (Some(cp), Some(c), Some(kp), Some(k)) => Some((cp, c, kp, k)),
        _ => None,
    };
    let client = client
        .as_ref()
        .map(|(cp, c, kp, k)| (PemFile { path: cp, data: c }, PemFile { path: kp, data: k }));
    let ca = PemFile {
        path: &ca_path,
        data: &ca,
    };
    Tls::from_pem(ca, client)
        .map(Some)
        .map_err(|(option, e)| vec![UsageError::new(option, e)])
}

/// Overwrites the etcd password where this process's `/proc/<pid>/environ` shows it: all of
/// `HECD_ETCD_PASSWORD`, and `HECD_ETCD_USER` from its `:` on (`USER:PASSWORD` → `USER`). Both
/// programs call it once everything is read and before any thread starts; what the C library
/// reads afterwards (the app's environment included) is what is left.
pub fn scrub_credentials() {
    crate::sys::scrub_env_value("HECD_ETCD_PASSWORD", false);
    crate::sys::scrub_env_value("HECD_ETCD_USER", true);
}

/// The password in the file at `path` (`--etcd-password-file`): one line, one trailing
/// newline dropped.
pub fn password_file(path: &str) -> Result<String, UsageError> {
    let text = read("--etcd-password-file", path)?;
    let text = String::from_utf8(text).map_err(|_| {
        UsageError::new("--etcd-password-file", format!("{path} is not UTF-8 text"))
    })?;
    // Secret files usually end with one newline (echo, most editors); it is not part of
    // the password.
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.contains(['\r', '\n']) || password.is_empty() {
        return Err(UsageError::new(
            "--etcd-password-file",
            format!("{path}: expected one line with the password"),
        ));
    }
    Ok(password.to_owned())
}

/// Longest file an etcd or ACME access option may name: a CA bundle of every public CA is
/// about 200 KiB.
pub const MAX_FILE: u64 = 4 << 20;

/// The file `option` names, a regular file of at most [`MAX_FILE`] bytes (`/dev/zero` or a
/// FIFO is an error at once, not memory without end or a start that never finishes).
pub fn read(option: &str, path: &str) -> Result<Vec<u8>, UsageError> {
    crate::file::read_bounded(std::path::Path::new(path), MAX_FILE)
        .map_err(|e| UsageError::new(option, format!("cannot read {path}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> Vec<Endpoint> {
        vec![Endpoint {
            tls: false,
            host: "e".into(),
            port: 2379,
        }]
    }

    #[test]
    fn every_named_file_is_read_and_errors_name_their_option() {
        // http:// endpoints use no TLS, but missing client files are still errors now, each
        // reported under its option.
        let e = tls(
            &http(),
            None,
            Some("/nonexistent/c.pem"),
            Some("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].to_string()
                .starts_with("--etcd-cert: cannot read /nonexistent/c.pem")
        );
        assert!(
            e[1].to_string()
                .starts_with("--etcd-key: cannot read /nonexistent/k.pem")
        );
        // A bad file does not stop the check of the others.
        let mut given = EtcdAccess {
            cacert: Some("/nonexistent/ca".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..EtcdAccess::default()
        };
        let e = load(&http(), &mut given).unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].to_string().starts_with("--etcd-cacert: "), "{e:?}");
        assert!(
            e[1].to_string().starts_with("--etcd-password-file: "),
            "{e:?}"
        );
        let dir = std::env::temp_dir().join(format!("hecd-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        std::fs::write(&cert, "x").unwrap();
        let cert = cert.to_str().unwrap();
        // A CA that parses with a key that does not: the key's option is named.
        let ca = "/etc/ssl/certs/ca-certificates.crt";
        if std::path::Path::new(ca).exists() {
            let mut https = http();
            https[0].tls = true;
            let e = tls(&https, Some(ca), Some(ca), Some(cert)).unwrap_err();
            assert!(e[0].to_string().starts_with("--etcd-key: "), "{e:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
