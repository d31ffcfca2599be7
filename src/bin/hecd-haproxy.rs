//! hecd-haproxy: the consumer stage of the HECD recipe (see `hecd_init::consumer`).
//! Parse → check the files named by options → run → exit status.
#![deny(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use hecd_init::consumer::{self, config};
use hecd_init::logging;
use hecd_init::registrar::plan;

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let config = match config::parse(&args, |name| std::env::var_os(name)) {
        Ok(config::Parsed::Run(c)) => *c,
        Ok(config::Parsed::Help) => return print_stdout(&config::help_text()),
        Ok(config::Parsed::Version) => return print_stdout(&config::version_text()),
        Err(errors) => {
            for e in errors {
                say(&e.to_string());
            }
            return ExitCode::from(consumer::status::USAGE);
        }
    };
    let mut config = config;
    let access = &mut config.access;
    let checked = plan::tls(
        &config.endpoints,
        access.cacert.as_deref(),
        access.cert.as_deref(),
        access.key.as_deref(),
    )
    .and_then(|tls| {
        if let (Some(path), Some(creds)) = (&access.password_file, &mut access.credentials) {
            creds.password = Some(plan::password_file(path)?);
        }
        Ok(tls)
    });
    let tls = match checked {
        Ok(tls) => tls,
        Err(e) => {
            say(&e.to_string());
            return ExitCode::from(consumer::status::USAGE);
        }
    };
    logging::init_as("hecd-haproxy", &config.log_filter);
    std::panic::set_hook(Box::new(|info| {
        say(&format!("error: internal error, please report: {info}"));
    }));
    let run = std::panic::AssertUnwindSafe(|| consumer::run(config, tls));
    let status = std::panic::catch_unwind(run).unwrap_or(consumer::status::SETUP);
    logging::flush(std::time::Duration::from_secs(1));
    ExitCode::from(status)
}

/// One `hecd-haproxy: ` line on stderr; a closed stderr drops it.
fn say(message: &str) {
    let line = format!("hecd-haproxy: {message}\n");
    let _dropped = std::io::stderr().lock().write_all(line.as_bytes());
}

fn print_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(consumer::status::SETUP),
    }
}
