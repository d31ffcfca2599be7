//! The command-line scanner both programs use: option tables (`OptSpec`; hecd-init's lives in
//! `config`, hecd-haproxy's in `consumer::config`), the scan with its `HECD_*` environment
//! fallback, and the option list of `--help` generated from a table. It only finds which option
//! got which text from where; turning text into typed values is each program's config's job.
//!
//! Options end at `--` or at the first word that is not an option: everything from there on is
//! the app's command line, so `hecd-init my-server --port 80` leaves `--port 80` to the app.
//! (A general-purpose parser that scans the whole argv would take it; that is why the scanner is
//! table-driven rather than pico-args.)

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

use crate::error::UsageError;

/// One option of the table.
#[derive(Clone, Copy, Debug)]
pub struct OptSpec {
    /// Long name without dashes, e.g. `check-interval`.
    pub long: &'static str,
    /// One-letter alias, if any.
    pub short: Option<char>,
    /// Placeholder of the value, or `None` for a flag.
    pub value: Option<&'static str>,
    /// The default, as shown in `--help`.
    pub default: &'static str,
    /// One-line description for `--help` and the README.
    pub help: &'static str,
    /// Whether `HECD_<LONG>` may set it.
    pub env: bool,
    /// Whether it may be given several times (values accumulate).
    pub repeat: bool,
}

pub const fn opt(
    long: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
) -> OptSpec {
    OptSpec {
        long,
        short: None,
        value: Some(value),
        default,
        help,
        env: true,
        repeat: false,
    }
}

/// The etcd access options, the same rows in both programs' tables (each program's table is
/// its own rows, these, then `-v`, `--help` and `--version`: see [`join`]).
pub const ETCD_ACCESS: [OptSpec; 5] = [
    opt(
        "etcd-cacert",
        "FILE",
        "/etc/ssl/certs/ca-certificates.crt for https://",
        "CA bundle to verify etcd's certificate",
    ),
    opt(
        "etcd-cert",
        "FILE",
        "none",
        "client certificate for etcd (with --etcd-key)",
    ),
    opt("etcd-key", "FILE", "none", "client key for etcd"),
    opt(
        "etcd-user",
        "USER[:PASSWORD]",
        "none",
        "etcd user; the password may come from HECD_ETCD_PASSWORD or --etcd-password-file",
    ),
    opt(
        "etcd-password-file",
        "FILE",
        "none",
        "read the etcd password from FILE (Docker/Swarm secrets: /run/secrets/NAME); one trailing newline is dropped",
    ),
];

/// `head`, then `tail`: one table out of two, at compile time (`N` must be `A + B`).
pub const fn join<const A: usize, const B: usize, const N: usize>(
    head: [OptSpec; A],
    tail: [OptSpec; B],
) -> [OptSpec; N] {
    assert!(A + B == N, "join: N must be A + B");
    let mut out = [HELP; N];
    let mut i = 0;
    while i < A {
        out[i] = head[i];
        i += 1;
    }
    while i < N {
        out[i] = tail[i - A];
        i += 1;
    }
    out
}

/// `-h`, `--help`, in every program's table.
pub const HELP: OptSpec = OptSpec {
    long: "help",
    short: Some('h'),
    value: None,
    default: "",
    help: "print this help and exit",
    env: false,
    repeat: false,
};

/// `-V`, `--version`, in every program's table.
pub const VERSION: OptSpec = OptSpec {
    long: "version",
    short: Some('V'),
    value: None,
    default: "",
    help: "print the version and exit",
    env: false,
    repeat: false,
};

/// `-v`, `--verbose` with its help line.
pub const fn verbose(help: &'static str) -> OptSpec {
    OptSpec {
        long: "verbose",
        short: Some('v'),
        value: None,
        default: "off",
        help,
        env: true,
        repeat: true,
    }
}

/// The environment variable of an option: `HECD_` + upper-case long name, `-` as `_`.
pub fn env_name(long: &str) -> String {
    format!("HECD_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// One value given for an option, and where it came from (`--ttl` or `HECD_TTL`), so errors
/// can name the source the user actually wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Given {
    pub value: String,
    pub source: String,
    /// Where a value from the command line sits: (index in the scanned `args`, byte offset of
    /// the value in that word), so a password can be overwritten where `/proc/<pid>/cmdline`
    /// shows it. `None` for a value from a variable.
    pub at: Option<(usize, usize)>,
}

/// The scanned command line: what each option got, and the app's command.
#[derive(Debug, Default)]
pub struct RawArgs {
    values: HashMap<&'static str, Vec<Given>>,
    /// The app's command and its arguments, untouched.
    pub command: Vec<OsString>,
    /// Unknown options: reported with every other problem the validation finds.
    pub unknown: Vec<UsageError>,
    /// The option table scanned against, for [`RawArgs::or_default`].
    options: &'static [OptSpec],
}

impl RawArgs {
    /// The value that counts for a single-valued option: a flag's last value, else the variable.
    pub fn get(&self, long: &str) -> Option<&Given> {
        self.values.get(long).and_then(|v| v.last())
    }

    /// The value that counts, or the table's default as if given, so that for the options
    /// read through this the row in the table (which `--help` shows) is where the default is
    /// written. Only for options whose default is a value; a default that is a sentence (a
    /// computed one) is applied where the option is read.
    pub fn or_default(&self, long: &str) -> Given {
        self.get(long).cloned().unwrap_or_else(|| Given {
            value: self
                .options
                .iter()
                .find(|o| o.long == long)
                .map_or("", |o| o.default)
                .to_owned(),
            source: format!("--{long}"),
            at: None,
        })
    }

    /// Every value of a repeatable option, in order.
    pub fn all(&self, long: &str) -> &[Given] {
        self.values.get(long).map_or(&[], Vec::as_slice)
    }

    /// Where the command line holds a password: the `PASSWORD` of every `--etcd-user
    /// USER:PASSWORD`, as (index in the scanned `args`, byte range in that word).
    pub fn password_spans(&self) -> Vec<(usize, std::ops::Range<usize>)> {
        self.all("etcd-user")
            .iter()
            .filter_map(|g| {
                let (word, offset) = g.at?;
                let colon = g.value.find(':')?;
                Some((word, offset + colon + 1..offset + g.value.len()))
            })
            .collect()
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Request {
    Help,
    Version,
    Run(RawArgs),
}

fn utf8(arg: &OsStr, source: &str) -> Result<String, UsageError> {
    arg.to_str()
        .map(str::to_owned)
        .ok_or_else(|| UsageError::new(source, "expected UTF-8 text"))
}

/// Scans `args` against the option table `options`. With `command_usage`, the program takes a
/// COMMAND after its options (missing: an error quoting that usage line); without, every
/// word must be an option.
pub fn scan(
    options: &'static [OptSpec],
    command_usage: Option<&str>,
    args: &[OsString],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Request, UsageError> {
    let lookup_long = |name: &str| options.iter().find(|o| o.long == name);
    let lookup_short = |c: char| options.iter().find(|o| o.short == Some(c));
    let mut raw = RawArgs {
        options,
        ..RawArgs::default()
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        let bytes = arg.as_encoded_bytes();
        if bytes == b"--" {
            raw.command = args[i..].to_vec();
            break;
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            if command_usage.is_none() {
                return Err(UsageError::new(
                    format!("{:?}", arg.to_string_lossy()),
                    "unexpected argument (see --help)",
                ));
            }
            raw.command = args[i - 1..].to_vec();
            break;
        }
        let text = utf8(arg, "option")?;
        let mut found: Vec<(&'static OptSpec, String, Option<String>)> = Vec::new();
        let word = i - 1;
        let mut inline_at = 0;
        if let Some(long) = text.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            inline_at = 2 + name.len() + 1;
            let Some(spec) = lookup_long(name) else {
                raw.unknown.push(UsageError::new(
                    format!("--{name}"),
                    "unknown option (see --help)",
                ));
                continue;
            };
            found.push((spec, format!("--{name}"), inline));
        } else {
            // Short flags may be bundled: -vv.
            for c in text[1..].chars() {
                let Some(spec) = lookup_short(c) else {
                    raw.unknown.push(UsageError::new(
                        format!("-{c}"),
                        "unknown option (see --help)",
                    ));
                    continue;
                };
                found.push((spec, format!("-{c}"), None));
            }
        }
        for (spec, source, inline) in found {
            let (value, at) = match (spec.value, inline) {
                (None, Some(_)) => return Err(UsageError::new(source, "takes no value")),
                (None, None) => ("true".to_owned(), None),
                (Some(_), Some(v)) => (v, Some((word, inline_at))),
                (Some(form), None) => {
                    let next = args
                        .get(i)
                        .ok_or_else(|| UsageError::new(&source, format!("expected {form}")))?;
                    i += 1;
                    (utf8(next, &source)?, Some((i - 1, 0)))
                }
            };
            match spec.long {
                "help" => return Ok(Request::Help),
                "version" => return Ok(Request::Version),
                _ => {}
            }
            raw.values
                .entry(spec.long)
                .or_default()
                .push(Given { value, source, at });
        }
    }
    for spec in options.iter().filter(|o| o.env) {
        if raw.values.contains_key(spec.long) {
            continue; // a flag wins over the variable
        }
        let var = env_name(spec.long);
        let Some(value) = env(&var) else { continue };
        let value = utf8(&value, &var)?;
        // An empty variable counts as unset, so `-e HECD_ETCD=` in a compose file switches
        // registration off rather than failing.
        let parts: Vec<&str> = if spec.repeat && spec.value.is_some() {
            value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect()
        } else {
            vec![value.trim()]
        };
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            raw.values.entry(spec.long).or_default().push(Given {
                value: part.to_owned(),
                source: var.clone(),
                at: None,
            });
        }
    }
    match command_usage {
        // hecd-init's missing COMMAND after an unknown option is that option's fault.
        Some(_) if !raw.unknown.is_empty() && raw.command.is_empty() => {
            return Err(raw.unknown.swap_remove(0));
        }
        Some(usage) if raw.command.is_empty() => {
            return Err(UsageError::new(
                "COMMAND",
                format!("missing; {usage} (see --help)"),
            ));
        }
        None if !raw.command.is_empty() => {
            return Err(UsageError::new(
                "--",
                "unexpected: this program takes no command (see --help)",
            ));
        }
        _ => {}
    }
    Ok(Request::Run(raw))
}

/// The options part of a `--help` text: each option, its description, variable and default.
pub fn options_help(options: &[OptSpec]) -> String {
    let mut out = String::new();
    for o in options {
        let short = o.short.map_or(String::from("    "), |c| format!("-{c}, "));
        let value = o.value.map_or(String::new(), |v| format!(" {v}"));
        out.push_str(&format!("  {short}--{}{value}\n", o.long));
        out.push_str(&format!("        {}\n", o.help));
        let mut facts = Vec::new();
        if o.env {
            facts.push(format!("env {}", env_name(o.long)));
        }
        if !o.default.is_empty() {
            facts.push(format!("default: {}", o.default));
        }
        if !facts.is_empty() {
            out.push_str(&format!("        [{}]\n", facts.join("; ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OPTIONS, help_text, parse};

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<RawArgs, UsageError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&os(args), |k| env.get(k).map(OsString::from))? {
            Request::Run(mut raw) if !raw.unknown.is_empty() => Err(raw.unknown.swap_remove(0)),
            Request::Run(raw) => Ok(raw),
            other => panic!("expected Run, got {other:?}"),
        }
    }

    #[test]
    fn options_stop_at_the_command() {
        let raw = run(&["--ttl", "5s", "my-server", "--ttl", "9"], &[]).unwrap();
        assert_eq!(raw.get("ttl").unwrap().value, "5s");
        assert_eq!(raw.command, os(&["my-server", "--ttl", "9"]));
    }

    #[test]
    fn double_dash_ends_options() {
        let raw = run(&["--single-child", "--", "--weird-app", "-v"], &[]).unwrap();
        assert_eq!(raw.get("single-child").unwrap().value, "true");
        assert_eq!(raw.command, os(&["--weird-app", "-v"]));
        assert!(raw.get("verbose").is_none());
    }

    #[test]
    fn inline_values_and_bundled_shorts() {
        let raw = run(&["--drain=1s", "-vv", "app"], &[]).unwrap();
        assert_eq!(raw.get("drain").unwrap().value, "1s");
        assert_eq!(raw.all("verbose").len(), 2);
    }

    #[test]
    fn flag_wins_over_env_and_env_names_its_source() {
        let raw = run(
            &["--ttl", "5", "app"],
            &[("HECD_TTL", "9"), ("HECD_DRAIN", "3")],
        )
        .unwrap();
        assert_eq!(raw.get("ttl").unwrap().source, "--ttl");
        let drain = raw.get("drain").unwrap();
        assert_eq!(
            (drain.value.as_str(), drain.source.as_str()),
            ("3", "HECD_DRAIN")
        );
    }

    #[test]
    fn every_long_option_has_its_variable() {
        for o in OPTIONS.iter().filter(|o| o.env) {
            let value = if o.value.is_some() { "x" } else { "1" };
            let raw = run(&["app"], &[(&env_name(o.long), value)]).unwrap();
            assert_eq!(
                raw.get(o.long).unwrap().source,
                env_name(o.long),
                "{}",
                o.long
            );
        }
    }

    #[test]
    fn empty_variable_is_unset_and_rewrite_variable_splits() {
        let raw = run(
            &["app"],
            &[("HECD_ETCD", ""), ("HECD_REWRITE", "TERM:QUIT, HUP:0")],
        )
        .unwrap();
        assert!(raw.get("etcd").is_none());
        let values: Vec<_> = raw
            .all("rewrite")
            .iter()
            .map(|g| g.value.as_str())
            .collect();
        assert_eq!(values, ["TERM:QUIT", "HUP:0"]);
    }

    #[test]
    fn usage_errors_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (&["--bogus", "app"], "--bogus: unknown option (see --help)"),
            (&["-x", "app"], "-x: unknown option (see --help)"),
            (&["--ttl"], "--ttl: expected DURATION"),
            (
                &["--single-child=yes", "app"],
                "--single-child: takes no value",
            ),
            (
                &[],
                "COMMAND: missing; usage: hecd-init [OPTIONS] [--] COMMAND [ARGS...] (see --help)",
            ),
            (
                &["--ttl", "5s"],
                "COMMAND: missing; usage: hecd-init [OPTIONS] [--] COMMAND [ARGS...] (see --help)",
            ),
        ];
        for (args, want) in cases {
            assert_eq!(run(args, &[]).unwrap_err().to_string(), *want, "{args:?}");
        }
    }

    #[test]
    fn readme_documents_every_option_and_variable() {
        let readme = include_str!("../README.md");
        for o in OPTIONS {
            assert!(
                readme.contains(&format!("`--{}", o.long)),
                "README lacks --{}",
                o.long
            );
            if o.env {
                assert!(
                    readme.contains(&format!("`{}`", env_name(o.long))),
                    "README lacks {}",
                    env_name(o.long)
                );
            }
        }
        for status in ["126", "127", "128 + N", "| 2 |", "| 1 |"] {
            assert!(readme.contains(status), "README lacks exit status {status}");
        }
    }

    #[test]
    fn help_and_version_win() {
        assert!(matches!(
            parse(&os(&["--help"]), |_| None),
            Ok(Request::Help)
        ));
        assert!(matches!(
            parse(&os(&["-V"]), |_| None),
            Ok(Request::Version)
        ));
        let help = help_text();
        for o in OPTIONS {
            assert!(help.contains(&format!("--{}", o.long)), "{}", o.long);
            if o.env {
                assert!(help.contains(&env_name(o.long)), "{}", o.long);
            }
        }
    }
}
