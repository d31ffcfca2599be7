//! Log set-up: env_logger with the `HECD_LOG` filter (or `-v`), one line per event on stderr,
//! prefixed `hecd-init:`. Stdout belongs to the app, so nothing here ever writes there.

use std::io::Write;

/// Installs the logger with an env_logger filter such as `info` or `hecd_init=debug`.
pub fn init(filter: &str) {
    let result = env_logger::Builder::new()
        .parse_filters(filter)
        .format(|buf, record| {
            let level = match record.level() {
                log::Level::Info => String::new(),
                log::Level::Warn => "warning: ".into(),
                other => format!("{}: ", other.as_str().to_ascii_lowercase()),
            };
            writeln!(buf, "hecd-init: {level}{}", record.args())
        })
        .target(env_logger::Target::Stderr)
        .try_init();
    if let Err(e) = result {
        // Only possible if a logger was installed before, which main never does.
        eprintln!("hecd-init: cannot set up logging: {e}");
    }
}
