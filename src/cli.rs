//! The option tables and the command-line scanner both programs use. A row ([`OptSpec`])
//! holds everything about one option: its name, variable, `--help` line, default, and its
//! parser, which writes the typed value into the program's arguments struct (hecd-init's
//! table lives in `config`, hecd-haproxy's in `consumer::config`, the rows both share in
//! `options`). [`scan`] finds which option got which text from where (the command line, else
//! `HECD_*`); [`read`] runs each row's parser on it, or on the row's default. What is left to
//! each program's `build` is only what lies between options (`--https` needs `--certs`, ...).
//!
//! Options end at `--` or at the first word that is not an option: everything from there on is
//! the app's command line, so `hecd-init my-server --port 80` leaves `--port 80` to the app.
//! (A general-purpose parser that scans the whole argv would take it; that is why the scanner is
//! table-driven rather than pico-args.)

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};

use crate::error::{Errors, UsageError};

/// What an option takes when it is not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absent {
    /// This text, parsed by the row's parser as if given (`--ttl 10s`): the default `--help`
    /// shows is, by construction, the one the program takes.
    Value(&'static str),
    /// The field stays as the arguments struct starts it (off, none, empty), and the program
    /// works out what that means when it runs; the text says what (`the hostname`).
    Says(&'static str),
    /// A usage error naming the option.
    Required,
}

/// A row's parser: one given value (or the default) into the arguments struct `T`.
pub type Setter<T> = fn(&Given, &mut T) -> Result<(), UsageError>;

/// One option: one row of a program's table.
pub struct OptSpec<T: 'static> {
    /// Long name without dashes, e.g. `check-interval`.
    pub long: &'static str,
    /// One-letter alias, if any.
    pub short: Option<char>,
    /// Placeholder of the value, or `None` for a flag.
    pub value: Option<&'static str>,
    /// What it takes when not given; shown in `--help`.
    pub default: Absent,
    /// One-line description for `--help` and the README.
    pub help: &'static str,
    /// Whether `HECD_<LONG>` may set it.
    pub env: bool,
    /// Whether it may be given several times (each value goes through `set`; the variable
    /// takes them comma-separated).
    pub repeat: bool,
    /// Its parser.
    pub set: Setter<T>,
}

// Not derived: the derive would ask `T: Clone`, and a row holds no `T`.
impl<T> Clone for OptSpec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for OptSpec<T> {}

impl<T> std::fmt::Debug for OptSpec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptSpec")
            .field("long", &self.long)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// An option with a value, settable by its variable.
pub const fn opt<T>(
    long: &'static str,
    value: &'static str,
    default: Absent,
    help: &'static str,
    set: Setter<T>,
) -> OptSpec<T> {
    OptSpec {
        long,
        short: None,
        value: Some(value),
        default,
        help,
        env: true,
        repeat: false,
        set,
    }
}

/// A flag (no value; `HECD_<LONG>` takes true/false), off unless given.
pub const fn flag<T>(long: &'static str, help: &'static str, set: Setter<T>) -> OptSpec<T> {
    OptSpec {
        long,
        short: None,
        value: None,
        default: Absent::Says("off"),
        help,
        env: true,
        repeat: false,
        set,
    }
}

/// The same row, repeatable: `repeatable(opt(...))`.
pub const fn repeatable<T>(row: OptSpec<T>) -> OptSpec<T> {
    OptSpec {
        repeat: true,
        ..row
    }
}

/// Stores what a parser made of a value in its field: a row's `set` is
/// `|g, a| put(&mut a.ttl, parse_ttl(g))`.
pub fn put<V>(field: &mut V, parsed: Result<V, UsageError>) -> Result<(), UsageError> {
    *field = parsed?;
    Ok(())
}

/// Adds what a parser made of one value of a repeatable option to its list.
pub fn push<V>(list: &mut Vec<V>, parsed: Result<V, UsageError>) -> Result<(), UsageError> {
    list.push(parsed?);
    Ok(())
}

/// `head`, then `tail`: one table out of two, at compile time (`N` must be `A + B`).
pub const fn join<T, const A: usize, const B: usize, const N: usize>(
    head: [OptSpec<T>; A],
    tail: [OptSpec<T>; B],
) -> [OptSpec<T>; N] {
    assert!(A + B == N, "join: N must be A + B");
    let mut out = [help(); N];
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

/// The parser of `--help` and `--version`, which [`scan`] answers before any parser runs.
fn answered_by_scan<T>(_: &Given, _: &mut T) -> Result<(), UsageError> {
    Ok(())
}

/// `-h`, `--help`, in every program's table.
pub const fn help<T>() -> OptSpec<T> {
    OptSpec {
        long: "help",
        short: Some('h'),
        value: None,
        default: Absent::Says(""),
        help: "print this help and exit",
        env: false,
        repeat: false,
        set: answered_by_scan,
    }
}

/// `-V`, `--version`, in every program's table.
pub const fn version<T>() -> OptSpec<T> {
    OptSpec {
        long: "version",
        short: Some('V'),
        value: None,
        default: Absent::Says(""),
        help: "print the version and exit",
        env: false,
        repeat: false,
        set: answered_by_scan,
    }
}

/// Runs every row's parser: on each value given (every value of a repeatable option, the one
/// that counts of another), else on the row's default. `T` starts as `T::default()`; each
/// parser writes its own field. A bad value, or a required option missing (`required` says
/// how the program is called), is an error in `errors` naming where it came from; the other
/// rows are read all the same, so every bad value is reported at once.
pub fn read<T: Default>(
    options: &[OptSpec<T>],
    raw: &RawArgs,
    required: &str,
    errors: &mut Errors,
) -> T {
    let mut args = T::default();
    for o in options {
        let given: &[Given] = if o.repeat {
            raw.all(o.long)
        } else {
            raw.get(o.long).map_or(&[], std::slice::from_ref)
        };
        if given.is_empty() {
            match o.default {
                Absent::Value(text) => {
                    let g = Given {
                        value: text.to_owned(),
                        source: format!("--{}", o.long),
                        at: None,
                    };
                    errors.take((o.set)(&g, &mut args));
                }
                Absent::Says(_) => {}
                Absent::Required => errors.0.push(UsageError::new(
                    format!("--{}", o.long),
                    format!("required; {required}"),
                )),
            }
        }
        for g in given {
            errors.take((o.set)(g, &mut args));
        }
    }
    args
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
}

impl RawArgs {
    /// The value that counts for a single-valued option: a flag's last value, else the variable.
    pub fn get(&self, long: &str) -> Option<&Given> {
        self.values.get(long).and_then(|v| v.last())
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
pub fn scan<T>(
    options: &[OptSpec<T>],
    command_usage: Option<&str>,
    args: &[OsString],
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Request, UsageError> {
    let lookup_long = |name: &str| options.iter().find(|o| o.long == name);
    let lookup_short = |c: char| options.iter().find(|o| o.short == Some(c));
    let mut raw = RawArgs::default();
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
        let mut found: Vec<(&OptSpec<T>, String, Option<String>)> = Vec::new();
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
pub fn options_help<T>(options: &[OptSpec<T>]) -> String {
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
        match o.default {
            Absent::Value(text) | Absent::Says(text) if !text.is_empty() => {
                facts.push(format!("default: {text}"));
            }
            Absent::Required => facts.push("required".to_owned()),
            _ => {}
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

    /// A small table of each kind of row, read by [`read`].
    #[derive(Debug, Default)]
    struct Toy {
        n: u32,
        list: Vec<u32>,
        name: Option<String>,
        must: u32,
    }

    fn number(g: &Given) -> Result<u32, UsageError> {
        g.value
            .parse()
            .map_err(|_| UsageError::new(&g.source, "expected a number"))
    }

    const TOY: [OptSpec<Toy>; 5] = [
        opt("n", "N", Absent::Value("7"), "a number", |g, a| {
            put(&mut a.n, number(g))
        }),
        repeatable(opt("list", "N", Absent::Says("none"), "numbers", |g, a| {
            push(&mut a.list, number(g))
        })),
        opt(
            "name",
            "NAME",
            Absent::Says("the hostname"),
            "a name",
            |g, a| put(&mut a.name, Ok(Some(g.value.clone()))),
        ),
        opt("must", "N", Absent::Required, "a number", |g, a| {
            put(&mut a.must, number(g))
        }),
        opt(
            "bad",
            "N",
            Absent::Value("x"),
            "a default that is no number",
            |g, a| put(&mut a.n, number(g)),
        ),
    ];

    fn toy(args: &[&str], env: &[(&str, &str)]) -> (Toy, Vec<String>) {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let Ok(Request::Run(raw)) = scan(&TOY[..4], None, &os(args), |k| {
            env.get(k).map(OsString::from)
        }) else {
            panic!("scan failed for {args:?}");
        };
        let mut errors = Errors::default();
        let t = read(&TOY[..4], &raw, "usage: toy --must N", &mut errors);
        (t, errors.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn read_runs_each_rows_parser_on_what_was_given_else_on_its_default() {
        // Nothing given: the value default parsed, the others left as they start, the
        // required one an error naming it and the usage.
        let (t, errors) = toy(&[], &[]);
        assert_eq!((t.n, t.list.len(), t.name.is_none()), (7, 0, true));
        assert_eq!(errors, ["--must: required; usage: toy --must N"]);
        // Given: the last of a single option counts, every value of a repeatable one, the
        // variable split at commas; a flag wins over the variable.
        let (t, errors) = toy(
            &["--n", "1", "--n", "2", "--list", "3", "--must", "4"],
            &[("HECD_LIST", "5,6"), ("HECD_NAME", "x"), ("HECD_N", "9")],
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            (t.n, t.list, t.name.as_deref(), t.must),
            (2, vec![3], Some("x"), 4)
        );
        let (t, _) = toy(&["--must", "1"], &[("HECD_LIST", "5, 6")]);
        assert_eq!(t.list, [5, 6]);
        // Every bad value is reported, each naming where it came from.
        let (_, errors) = toy(
            &["--n", "a", "--list", "b", "--list", "c"],
            &[("HECD_MUST", "d")],
        );
        assert_eq!(
            errors,
            [
                "--n: expected a number",
                "--list: expected a number",
                "--list: expected a number",
                "HECD_MUST: expected a number"
            ]
        );
        // A default text the parser refuses is a bug the table's tests catch: it is reported
        // naming the option, not taken silently.
        let mut errors = Errors::default();
        let raw = RawArgs::default();
        let _: Toy = read(&TOY[4..], &raw, "", &mut errors);
        assert_eq!(errors.0[0].to_string(), "--bad: expected a number");
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
