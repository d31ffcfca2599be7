//! `--user USER[:GROUP]`: who the app runs as. Parses the option's value, and resolves names
//! against the image's `/etc/passwd` and `/etc/group` (a `FROM scratch` image may have neither:
//! numeric ids then). The parsers take the files' text, so they are tested without files; the
//! one function that reads (`resolve`) reads each file once, bounded. Nothing here changes
//! credentials: the forked child does that (`sys::prepare_child`), so hecd-init stays root.

use crate::error::UsageError;
use crate::sys::Identity;

/// Longest `/etc/passwd` or `/etc/group` read; a longer file is an error (the image is as
/// hostile as any other input, and a real one is a few KiB).
const MAX_FILE: u64 = 4 << 20;

/// One side of `USER[:GROUP]`: a name to look up or a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Name(String),
    Id(u32),
}

/// The value of `--user`, checked for form but not yet looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSpec {
    pub user: Who,
    pub group: Option<Who>,
}

/// The resolved user: the ids to switch to and the home directory for `HOME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub identity: Identity,
    /// The passwd entry's home, or `/` for a uid without one (as su-exec does).
    pub home: String,
}

const FORM: &str =
    "expected USER[:GROUP], a name or a number each, such as nobody, 65534:65534 or app:staff";

/// Parses `USER[:GROUP]`. Names are what `/etc/passwd` can hold: no `:`, no white space or
/// control characters; numbers are ids below 4294967295 (which means "unchanged" to the kernel).
pub fn parse_spec(text: &str, source: &str) -> Result<UserSpec, UsageError> {
    let bad = || UsageError::new(source, format!("{FORM}, got {text:?}"));
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    let who = |part: &str| -> Option<Who> {
        if part.is_empty() || part.len() > 256 {
            return None;
        }
        if part.bytes().all(|b| b.is_ascii_digit()) {
            return part
                .parse::<u32>()
                .ok()
                .filter(|&n| n != u32::MAX)
                .map(Who::Id);
        }
        let ok = part
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != ':');
        ok.then(|| Who::Name(part.to_owned()))
    };
    Ok(UserSpec {
        user: who(user).ok_or_else(bad)?,
        group: match group {
            Some(g) => Some(who(g).ok_or_else(bad)?),
            None => None,
        },
    })
}

/// One line of `/etc/passwd` that matters here.
#[derive(Debug, PartialEq, Eq)]
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        // name:password:uid:gid:gecos:home:shell; malformed lines are skipped, like the C
        // library's getpwent does.
        let f: Vec<&str> = line.splitn(8, ':').collect();
        if f.len() < 7 || f[0].is_empty() || f[0].starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// One line of `/etc/group`: name, gid, members.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    text.lines().filter_map(|line| {
        let f: Vec<&str> = line.splitn(5, ':').collect();
        if f.len() < 4 || f[0].is_empty() || f[0].starts_with('#') {
            return None;
        }
        let members = f[3]
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` against the text of `/etc/passwd` and `/etc/group` (empty when absent):
///
/// - a name must be in `/etc/passwd`; a number may be (then that entry's group and home count),
///   or not: then its group is the same number and its home `/` (never root's group 0, which
///   Docker's `--user 1000` would give);
/// - `:GROUP` replaces the primary group, and then the supplementary groups are that group
///   alone; without it they are the primary group plus every group of `/etc/group` that lists
///   the user by name (what `initgroups` gives). Never root's own.
pub fn resolve_in(
    spec: &UserSpec,
    passwd: &str,
    group: &str,
    source: &str,
) -> Result<Resolved, UsageError> {
    // A name must have an entry; a number may.
    let (uid, entry) = match &spec.user {
        Who::Name(name) => {
            let e = passwd_entries(passwd)
                .find(|e| e.name == name)
                .ok_or_else(|| {
                    UsageError::new(
                        source,
                        format!("unknown user {name:?} (not in /etc/passwd)"),
                    )
                })?;
            (e.uid, Some(e))
        }
        Who::Id(uid) => (*uid, passwd_entries(passwd).find(|e| e.uid == *uid)),
    };
    let explicit_gid = match &spec.group {
        None => None,
        Some(Who::Id(gid)) => Some(*gid),
        Some(Who::Name(name)) => Some(
            group_entries(group)
                .find(|(n, _, _)| n == name)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    UsageError::new(
                        source,
                        format!("unknown group {name:?} (not in /etc/group)"),
                    )
                })?,
        ),
    };
    let gid = explicit_gid.unwrap_or(entry.as_ref().map_or(uid, |e| e.gid));
    let mut groups = vec![gid];
    if explicit_gid.is_none()
        && let Some(e) = &entry
    {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let home = entry
        .as_ref()
        .map(|e| e.home)
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_owned();
    Ok(Resolved {
        identity: Identity { uid, gid, groups },
        home,
    })
}

/// Reads `/etc/passwd` and `/etc/group` and resolves `spec` (see [`resolve_in`]). A missing
/// file is empty (numeric ids still work); an unreadable or oversized one is an error.
pub fn resolve(spec: &UserSpec, source: &str) -> Result<Resolved, UsageError> {
    let passwd = read_small("/etc/passwd", source)?;
    let group = read_small("/etc/group", source)?;
    resolve_in(spec, &passwd, &group, source)
}

fn read_small(path: &str, source: &str) -> Result<String, UsageError> {
    match crate::file::read_bounded(std::path::Path::new(path), MAX_FILE) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(UsageError::new(source, format!("cannot read {path}: {e}"))),
    }
}

/// The `HOME` the app gets: the user's home when `current` (hecd-init's own `HOME`, which the
/// app would inherit) is unset, empty, or root's home `/root` (what Docker sets for a root
/// container, which is no home for another user); an explicit other `HOME` is kept.
pub fn app_home(current: Option<&str>, resolved: &Resolved) -> Option<String> {
    match current {
        None | Some("") | Some("/root") if resolved.identity.uid != 0 => {
            Some(resolved.home.clone())
        }
        None | Some("") => Some(resolved.home.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        broken line\n\
        app:x:1000:1000:App,,,:/home/app:/bin/sh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        nohome:x:1001:1001:::/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        staff:x:50:app,other\n\
        audio:x:29: app \n\
        app:x:1000:\n\
        nogroup:x:65534:\n\
        badgid:x:zz:app\n";

    fn spec(text: &str) -> UserSpec {
        parse_spec(text, "--user").expect(text)
    }

    fn res(text: &str) -> Result<Resolved, String> {
        resolve_in(&spec(text), PASSWD, GROUP, "--user").map_err(|e| e.to_string())
    }

    fn ids(text: &str) -> (u32, u32, Vec<u32>, String) {
        let r = res(text).expect(text);
        (r.identity.uid, r.identity.gid, r.identity.groups, r.home)
    }

    #[test]
    fn forms() {
        assert_eq!(
            spec("app"),
            UserSpec {
                user: Who::Name("app".into()),
                group: None
            }
        );
        assert_eq!(
            spec("1000:staff"),
            UserSpec {
                user: Who::Id(1000),
                group: Some(Who::Name("staff".into()))
            }
        );
        for bad in [
            "",
            ":",
            "app:",
            ":staff",
            "a b",
            "a\nb",
            "1:2:3",
            "4294967295",
            "99999999999",
            "a\t",
        ] {
            let e = parse_spec(bad, "--user").expect_err(bad).to_string();
            assert!(
                e.starts_with("--user: expected USER[:GROUP]"),
                "{bad:?}: {e}"
            );
        }
        let long = "x".repeat(5000);
        assert!(parse_spec(&long, "HECD_USER").is_err());
    }

    #[test]
    fn names_take_the_entry_and_its_groups() {
        assert_eq!(
            ids("app"),
            (1000, 1000, vec![1000, 50, 29], "/home/app".into())
        );
        assert_eq!(
            ids("nobody"),
            (65534, 65534, vec![65534], "/nonexistent".into())
        );
        assert_eq!(ids("nohome"), (1001, 1001, vec![1001], "/".into()));
    }

    #[test]
    fn a_known_uid_takes_its_entry_an_unknown_one_its_own_number() {
        assert_eq!(
            ids("1000"),
            (1000, 1000, vec![1000, 50, 29], "/home/app".into())
        );
        assert_eq!(ids("4242"), (4242, 4242, vec![4242], "/".into()));
    }

    #[test]
    fn an_explicit_group_replaces_all_groups() {
        assert_eq!(ids("app:staff"), (1000, 50, vec![50], "/home/app".into()));
        assert_eq!(ids("app:7"), (1000, 7, vec![7], "/home/app".into()));
        assert_eq!(
            ids("65534:65534"),
            (65534, 65534, vec![65534], "/nonexistent".into())
        );
        assert_eq!(ids("4242:4243"), (4242, 4243, vec![4243], "/".into()));
    }

    #[test]
    fn unknown_names_are_usage_errors_naming_the_option() {
        assert_eq!(
            res("bob").unwrap_err(),
            "--user: unknown user \"bob\" (not in /etc/passwd)"
        );
        assert_eq!(
            res("app:wheel").unwrap_err(),
            "--user: unknown group \"wheel\" (not in /etc/group)"
        );
        // A FROM-scratch image: no files at all, numbers still work, names do not.
        let r = resolve_in(&spec("65534:65534"), "", "", "--user").expect("numeric");
        assert_eq!(r.identity.groups, vec![65534]);
        assert!(resolve_in(&spec("nobody"), "", "", "--user").is_err());
    }

    #[test]
    fn home_replaces_unset_and_roots_home_only() {
        let r = res("app").expect("app");
        assert_eq!(app_home(None, &r).as_deref(), Some("/home/app"));
        assert_eq!(app_home(Some("/root"), &r).as_deref(), Some("/home/app"));
        assert_eq!(app_home(Some("/data"), &r), None);
        let root = res("root").expect("root");
        assert_eq!(app_home(Some("/root"), &root), None);
        assert_eq!(app_home(None, &root).as_deref(), Some("/root"));
    }

    #[test]
    fn hostile_files_never_panic() {
        let s = spec("app");
        for text in [
            "app:x:99999999999:1:a:b:c\n",
            "app:x:-1:-1:a:b:c\n",
            ":::::::::::::\n",
            "app\n",
            "\u{0}\u{0}:x:1:1:::\n",
        ] {
            let _ = resolve_in(&s, text, text, "--user");
        }
        let mut m = crate::fuzz::Mutator::new(16);
        for _ in 0..3000 {
            let text = m.mutate(PASSWD.as_bytes());
            let _ = resolve_in(&s, &text, &text, "--user");
        }
    }
}
