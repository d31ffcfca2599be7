//! Everything the registrar needs, prepared and checked before the app starts: the TLS files
//! read and parsed, the Docker API chosen. A missing or bad file is a usage error (exit 2), not
//! something to find out later on the registrar thread.

use crate::config::{DockerApi, Registration};
use crate::error::UsageError;
use crate::http::{PemFile, Tls};

/// The registrar's inputs.
pub struct Plan {
    pub registration: Registration,
    pub tls: Option<Tls>,
    /// `--docker`, or the default socket when it exists.
    pub docker: Option<DockerApi>,
}

/// The Docker Engine API socket used when `--docker` is not given and it exists.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// CA bundle used for `https://` endpoints when `--etcd-cacert` is not given.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Reads the TLS files and picks the Docker API.
pub fn plan(registration: Registration) -> Result<Plan, UsageError> {
    let docker = registration.docker.clone().or_else(|| {
        std::path::Path::new(DOCKER_SOCKET)
            .exists()
            .then(|| DockerApi::Unix(DOCKER_SOCKET.to_owned()))
    });
    let wants_tls = registration.endpoints.iter().any(|e| e.tls);
    let tls = if wants_tls || registration.cacert.is_some() {
        let ca_path = match &registration.cacert {
            Some(p) => p.clone(),
            None if std::path::Path::new(SYSTEM_CA_BUNDLE).exists() => SYSTEM_CA_BUNDLE.to_owned(),
            None => {
                return Err(UsageError::new(
                    "--etcd-cacert",
                    format!(
                        "https:// endpoints need a CA bundle: give --etcd-cacert FILE ({SYSTEM_CA_BUNDLE} does not exist)"
                    ),
                ));
            }
        };
        let ca = read("--etcd-cacert", &ca_path)?;
        let client = match (&registration.cert, &registration.key) {
            (Some(c), Some(k)) => Some(((c, read("--etcd-cert", c)?), (k, read("--etcd-key", k)?))),
            _ => None,
        };
        let client = client.as_ref().map(|((cp, c), (kp, k))| {
            (PemFile { path: cp, data: c }, PemFile { path: kp, data: k })
        });
        let ca = PemFile {
            path: &ca_path,
            data: &ca,
        };
        Some(Tls::from_pem(ca, client).map_err(|e| UsageError::new("--etcd-cacert", e))?)
    } else {
        None
    };
    let mut registration = registration;
    if let (Some(path), Some(creds)) = (&registration.password_file, &mut registration.credentials)
    {
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
        creds.password = Some(password.to_owned());
    }
    Ok(Plan {
        registration,
        tls,
        docker,
    })
}

fn read(option: &str, path: &str) -> Result<Vec<u8>, UsageError> {
    std::fs::read(path).map_err(|e| UsageError::new(option, format!("cannot read {path}: {e}")))
}
