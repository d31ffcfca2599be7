//! Signal names and numbers (`TERM`, `15`, `RTMIN+2`) and the `--rewrite` table: pure
//! parsing, shared by the command line (`config`) and the supervisor, which owns neither.

use crate::sys;

/// Standard signal names, without the `SIG` prefix, by number (Linux x86_64/arm64 numbering).
const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// A human name for a signal number: `TERM`, `RTMIN+2`, or the number itself.
pub fn name(sig: i32) -> String {
    if let Some((n, _)) = NAMES.iter().find(|(_, num)| *num == sig) {
        return (*n).to_string();
    }
    let (min, max) = (sys::RTMIN, sys::MAX_SIGNAL);
    if sig == min {
        return "RTMIN".to_owned();
    }
    if (min..=max).contains(&sig) {
        return format!("RTMIN+{}", sig - min);
    }
    sig.to_string()
}

/// Parses `TERM`, `SIGTERM`, `term`, `15`, `RTMIN+3` or `RTMAX-1` into a signal number.
/// `allow_zero` accepts `0`, which `--rewrite` uses for "do not pass on".
pub fn parse(text: &str, allow_zero: bool) -> Option<i32> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let (min, max) = (sys::RTMIN, sys::MAX_SIGNAL);
    let sig = if let Ok(n) = bare.parse::<i32>() {
        n
    } else if let Some((_, n)) = NAMES.iter().find(|(n, _)| *n == bare) {
        *n
    } else if let Some(off) = bare.strip_prefix("RTMIN") {
        min + rt_offset(off, '+')?
    } else if let Some(off) = bare.strip_prefix("RTMAX") {
        max - rt_offset(off, '-')?
    } else {
        return None;
    };
    let valid = (1..=max).contains(&sig) || (allow_zero && sig == 0);
    // Real-time names must stay inside the real-time range (RTMIN+40 is no signal).
    let rt_ok = !bare.starts_with("RT") || (min..=max).contains(&sig);
    (valid && rt_ok).then_some(sig)
}

fn rt_offset(text: &str, sign: char) -> Option<i32> {
    if text.is_empty() {
        return Some(0);
    }
    text.strip_prefix(sign)?.parse::<i32>().ok()
}

/// The `--rewrite FROM:TO` table: received signal → signal passed on (0 = not passed on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrites(Vec<(i32, i32)>);

impl Rewrites {
    /// Parses one `FROM:TO` pair; `None` when either side is not a signal.
    pub fn parse_pair(text: &str) -> Option<(i32, i32)> {
        let (from, to) = text.split_once(':')?;
        Some((parse(from, false)?, parse(to, true)?))
    }

    /// Builds the table; a later pair for the same signal wins.
    ///
    /// With `own_session` (the default mode), as in dumb-init's setsid mode, SIGTSTP, SIGTTIN
    /// and SIGTTOU are passed on as SIGSTOP unless rewritten: the app leads its own session, so
    /// its process group is orphaned and the kernel discards those three stop signals for it
    /// (POSIX), where SIGSTOP still works. Without it (`--single-child`, dumb-init's `-c`) the
    /// app shares hecd-init's group, which is not orphaned, and gets them as themselves.
    pub fn new(pairs: Vec<(i32, i32)>, own_session: bool) -> Self {
        let defaults = [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU].map(|s| (s, libc::SIGSTOP));
        let defaults = defaults.into_iter().filter(|_| own_session);
        Self(defaults.chain(pairs).collect())
    }

    /// The signal to pass on for a received one.
    pub fn map(&self, sig: i32) -> i32 {
        self.0
            .iter()
            .rev()
            .find(|(from, _)| *from == sig)
            .map_or(sig, |(_, to)| *to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_realtime() {
        assert_eq!(parse("TERM", false), Some(15));
        assert_eq!(parse("sigquit", false), Some(3));
        assert_eq!(parse("SIGUSR1", false), Some(10));
        assert_eq!(parse("15", false), Some(15));
        assert_eq!(parse("RTMIN", false), Some(sys::RTMIN));
        assert_eq!(parse("RTMIN+2", false), Some(sys::RTMIN + 2));
        assert_eq!(parse("RTMAX-1", false), Some(sys::MAX_SIGNAL - 1));
        assert_eq!(parse("0", true), Some(0));
    }

    #[test]
    fn rejects_non_signals() {
        for bad in [
            "",
            "0",
            "65",
            "-1",
            "TERMINATE",
            "RTMIN+99",
            "RTMIN-1",
            "RTMAX+1",
            "1.5",
        ] {
            assert_eq!(parse(bad, false), None, "{bad:?}");
        }
    }

    #[test]
    fn rtmin_is_34_as_docker_and_bash_say_whatever_the_libc() {
        assert_eq!(parse("RTMIN", false), Some(34));
        assert_eq!(parse("SIGRTMIN+1", false), Some(35));
        assert_eq!(parse("RTMAX", false), Some(64));
        assert_eq!(name(34), "RTMIN");
        assert_eq!(name(32), "32");
        assert_eq!(name(33), "33");
        assert_eq!(parse("32", false), Some(32));
    }

    #[test]
    fn names_round_trip() {
        for sig in 1..=sys::MAX_SIGNAL {
            if (32..sys::RTMIN).contains(&sig) {
                continue; // reserved by the libc, no name
            }
            assert_eq!(parse(&name(sig), false), Some(sig), "{}", name(sig));
        }
    }

    #[test]
    fn rewrite_maps_and_later_pairs_win() {
        let r = Rewrites::new(vec![(15, 3), (1, 0), (15, 10)], true);
        assert_eq!(r.map(15), 10);
        assert_eq!(r.map(1), 0);
        assert_eq!(r.map(2), 2);
        assert_eq!(r.map(libc::SIGTSTP), libc::SIGSTOP);
        let r = Rewrites::new(vec![(libc::SIGTSTP, libc::SIGTSTP)], true);
        assert_eq!(r.map(libc::SIGTSTP), libc::SIGTSTP);
        assert_eq!(r.map(libc::SIGTTIN), libc::SIGSTOP);
        let shared = Rewrites::new(vec![], false);
        assert_eq!(shared.map(libc::SIGTSTP), libc::SIGTSTP);
        assert_eq!(shared.map(libc::SIGTTOU), libc::SIGTTOU);
        assert_eq!(Rewrites::parse_pair("TERM:QUIT"), Some((15, 3)));
        assert_eq!(Rewrites::parse_pair("15:3"), Some((15, 3)));
        assert_eq!(Rewrites::parse_pair("HUP:0"), Some((1, 0)));
        assert_eq!(Rewrites::parse_pair("0:HUP"), None);
        assert_eq!(Rewrites::parse_pair("TERM"), None);
    }
}
