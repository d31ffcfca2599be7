//! Everything the registrar needs, prepared and checked before the app starts: the TLS files
//! read and parsed ([`crate::access`], shared with hecd-haproxy), the Docker API chosen. A
//! missing or bad file is a usage error (exit 2), not something to find out later on the
//! registrar thread.

use crate::access;
use crate::config::Registration;
use crate::discovery::DockerApi;
use crate::error::UsageError;
use crate::http::Tls;

/// The registrar's inputs.
pub struct Plan {
    pub registration: Registration,
    pub tls: Option<Tls>,
    /// `--docker`, or the default socket when it exists.
    pub docker: Option<DockerApi>,
}

/// The Docker Engine API socket used when `--docker` is not given and it exists.
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Reads the TLS files and the password file and picks the Docker API. Every file is read,
/// so every problem is reported, not only the first.
pub fn plan(registration: Registration) -> Result<Plan, Vec<UsageError>> {
    let docker = registration.docker.clone().or_else(|| {
        std::path::Path::new(DOCKER_SOCKET)
            .exists()
            .then(|| DockerApi::Unix(DOCKER_SOCKET.to_owned()))
    });
    let mut registration = registration;
    let tls = access::load(&registration.endpoints, &mut registration.access)?;
    Ok(Plan {
        registration,
        tls,
        docker,
    })
}
