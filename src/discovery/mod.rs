//! Picks the `HOST:PORT` to advertise and the port to check. This build takes both from
//! `--advertise HOST:PORT` (with `--port` for the check when the app listens on another port
//! than the one advertised); finding them from the container and the Docker API comes next.

use std::fmt;

use crate::config::Registration;

/// The advertised address, written as etcd values are: `10.0.0.5:8080`, `[fd00::5]:8080`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The address to advertise and the app's own port, or why they are not known.
pub fn resolve(reg: &Registration) -> Result<(Address, u16), String> {
    match (&reg.advertise.host, reg.advertise.port.or(reg.port)) {
        (Some(host), Some(port)) => Ok((
            Address {
                host: host.clone(),
                port,
            },
            reg.port.unwrap_or(port),
        )),
        _ => Err(
            "address discovery is not available in this build: set --advertise HOST:PORT".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_bracket_ipv6() {
        let a = |h: &str| {
            Address {
                host: h.into(),
                port: 80,
            }
            .to_string()
        };
        assert_eq!(a("10.0.0.5"), "10.0.0.5:80");
        assert_eq!(a("fd00::5"), "[fd00::5]:80");
        assert_eq!(a("web.local"), "web.local:80");
    }
}
