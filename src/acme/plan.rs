//! Which hosts get a certificate from ACME, and when: pure decisions, no I/O.
//!
//! A host is ordered for when a live route declaration names it, it is equal to or under one
//! of `--acme-domains`, no `--certs` file covers it, and the store (`CERT_PREFIX/certs/HOST`)
//! has no certificate for it that is good for another `--acme-renew-before` (less a spread of
//! up to a third of that, drawn from the host's name, so that hosts issued together do not all
//! renew in the same minute). A failed order is tried again after 10 s, then 20 s, 40 s, ...
//! up to an hour, each host on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rustls::pki_types::UnixTime;

/// Whether `host` is one of `domains` or under one (`a.example.com` is under `example.com`;
/// `badexample.com` is not). Both in lower case.
pub fn covered(host: &str, domains: &[String]) -> bool {
    domains.iter().any(|d| {
        host == d
            || host
                .strip_suffix(d.as_str())
                .is_some_and(|rest| rest.ends_with('.'))
    })
}

/// Whether a certificate file's names cover `host` (exactly, or by a one-label wildcard).
pub fn names_cover(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n == host
            || n.strip_prefix("*.").is_some_and(|parent| {
                host.split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent)
            })
    })
}

/// How much earlier than `renew_before` a host renews: up to a third of it, fixed per host.
pub fn spread(host: &str, renew_before: Duration) -> Duration {
    let window = renew_before.as_secs() / 3;
    if window == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(crate::etcd::identity_hash(host) % window)
}

/// A stored certificate younger than this is never ordered again, whatever the renewal
/// window says (a window longer than the CA's certificates would otherwise order without end).
pub const MIN_REORDER: Duration = Duration::from_secs(30);

/// The first line of a stored certificate: when it was ordered (seconds since the epoch) and
/// by which balancer. PEM parsers skip it.
pub fn ordered_line(at: UnixTime, lb_id: &str) -> String {
    format!("# ordered at {} by {lb_id}\n", at.as_secs())
}

/// When a stored certificate was ordered, from its first line.
pub fn ordered_at(stored: &str) -> Option<u64> {
    stored
        .lines()
        .next()?
        .strip_prefix("# ordered at ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Whether the stored certificate for `host` (its text, if there is one) needs replacing at
/// `now`: none, unusable, or not good for `renew_before` less the host's spread; but never
/// one ordered less than [`MIN_REORDER`] ago.
pub fn due(host: &str, stored: Option<&str>, now: UnixTime, renew_before: Duration) -> bool {
    let Some(pem) = stored else {
        return true;
    };
    if ordered_at(pem).is_some_and(|at| now.as_secs() < at.saturating_add(MIN_REORDER.as_secs())) {
        return false;
    }
    let ahead = renew_before.saturating_sub(spread(host, renew_before));
    let then = UnixTime::since_unix_epoch(Duration::from_secs(now.as_secs()) + ahead);
    match crate::consumer::certs::inspect(pem.as_bytes(), then) {
        Ok(cert) => !names_cover(&cert.names, host),
        Err(_) => true,
    }
}

/// Failed orders, per host: when each may be tried again.
#[derive(Debug, Default)]
pub struct Retries(BTreeMap<String, (u32, Instant)>);

/// The first wait after a failure; it doubles up to [`MAX_WAIT`].
pub const FIRST_WAIT: Duration = Duration::from_secs(10);
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

impl Retries {
    /// Records a failure of `host` at `now`; the wait before the next try.
    pub fn failed(&mut self, host: &str, now: Instant) -> Duration {
        let failures = self.0.get(host).map_or(0, |(n, _)| *n) + 1;
        let wait = FIRST_WAIT
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(MAX_WAIT);
        self.0.insert(host.to_owned(), (failures, now + wait));
        wait
    }

    /// `host` is not for now (another balancer holds its lock): looked at again after `wait`,
    /// without counting as a failure.
    pub fn later(&mut self, host: &str, now: Instant, wait: Duration) {
        let failures = self.0.get(host).map_or(0, |(n, _)| *n);
        self.0.insert(host.to_owned(), (failures, now + wait));
    }

    /// `host` got its certificate: no more waiting.
    pub fn succeeded(&mut self, host: &str) {
        self.0.remove(host);
    }

    /// Whether `host` may be tried at `now`.
    pub fn ready(&self, host: &str, now: Instant) -> bool {
        self.0.get(host).is_none_or(|(_, at)| now >= *at)
    }

    /// Forgets hosts no longer wanted.
    pub fn keep(&mut self, wanted: &BTreeSet<String>) {
        self.0.retain(|h, _| wanted.contains(h));
    }

    /// The earliest time a waiting host may be tried, if any waits.
    pub fn next(&self) -> Option<Instant> {
        self.0.values().map(|(_, at)| *at).min()
    }
}

/// The hosts to order for, in order: declared (`hosts`), under `domains`, not covered by a
/// file's certificate (`file_names`), and due given what the store has (`stored`: host →
/// PEM).
pub fn wanted<'a>(
    hosts: impl IntoIterator<Item = &'a String>,
    domains: &[String],
    file_names: &[Vec<String>],
) -> BTreeSet<String> {
    hosts
        .into_iter()
        .filter(|h| covered(h, domains))
        .filter(|h| !file_names.iter().any(|names| names_cover(names, h)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn only_hosts_under_the_domains_and_not_covered_by_a_file() {
        let domains = s(&["example.com", "app.test"]);
        assert!(covered("example.com", &domains));
        assert!(covered("a.b.example.com", &domains));
        assert!(!covered("badexample.com", &domains));
        assert!(!covered("example.com.evil.org", &domains));
        assert!(!covered("test", &domains));
        let files = vec![s(&["*.example.com"]), s(&["www.app.test"])];
        let hosts = s(&[
            "example.com",
            "a.example.com",
            "a.b.example.com",
            "www.app.test",
            "api.app.test",
            "other.org",
        ]);
        let got = wanted(&hosts, &domains, &files);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            s(&["a.b.example.com", "api.app.test", "example.com"])
        );
    }

    #[test]
    fn renewal_is_due_within_the_window_less_a_spread_of_its_own() {
        let week = Duration::from_secs(7 * 86_400);
        for host in ["a.test", "b.test", "c.test"] {
            assert!(spread(host, week) < week / 3);
        }
        assert_ne!(spread("a.test", week), spread("b.test", week));
        assert_eq!(spread("a.test", Duration::from_secs(2)), Duration::ZERO);
        // The fixture is valid from 2026-12-06 for ten years; it names a.test and *.a.test.
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/certs/a.pem"
        ))
        .unwrap();
        let at =
            |year: u64| UnixTime::since_unix_epoch(Duration::from_secs((year - 1970) * 31_557_600));
        let thirty = Duration::from_secs(30 * 86_400);
        assert!(!due("a.test", Some(&pem), at(2030), thirty));
        assert!(
            !due("x.a.test", Some(&pem), at(2030), thirty),
            "the wildcard covers it"
        );
        assert!(due("b.test", Some(&pem), at(2030), thirty), "not its name");
        assert!(due("a.test", Some(&pem), at(2037), thirty), "expired");
        // Renew-before longer than the certificate's life: always due.
        assert!(due(
            "a.test",
            Some(&pem),
            at(2030),
            Duration::from_secs(20 * 365 * 86_400)
        ));
        assert!(due("a.test", None, at(2030), thirty));
        assert!(due("a.test", Some("garbage"), at(2030), thirty));
        // Just ordered: not again for MIN_REORDER, even with a window longer than its life.
        let t = at(2030);
        let fresh = format!("{}{pem}", ordered_line(t, "lb-a"));
        assert_eq!(ordered_at(&fresh), Some(t.as_secs()));
        let forever = Duration::from_secs(20 * 365 * 86_400);
        assert!(!due("a.test", Some(&fresh), t, forever));
        let later = UnixTime::since_unix_epoch(Duration::from_secs(t.as_secs()) + MIN_REORDER);
        assert!(due("a.test", Some(&fresh), later, forever));
        assert!(!due("a.test", Some(&fresh), later, thirty));
    }

    #[test]
    fn failures_back_off_per_host() {
        let t0 = Instant::now();
        let mut r = Retries::default();
        assert!(r.ready("a.test", t0));
        assert_eq!(r.failed("a.test", t0), FIRST_WAIT);
        assert_eq!(r.failed("a.test", t0), FIRST_WAIT * 2);
        assert!(!r.ready("a.test", t0 + FIRST_WAIT));
        assert!(r.ready("a.test", t0 + FIRST_WAIT * 2));
        assert!(r.ready("b.test", t0), "another host is not held up");
        for _ in 0..30 {
            r.failed("a.test", t0);
        }
        assert_eq!(r.failed("a.test", t0), MAX_WAIT);
        assert_eq!(r.next(), Some(t0 + MAX_WAIT));
        r.succeeded("a.test");
        assert!(r.ready("a.test", t0));
        r.failed("c.test", t0);
        r.keep(&BTreeSet::new());
        assert_eq!(r.next(), None);
    }
}
