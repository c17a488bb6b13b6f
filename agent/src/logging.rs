//! Log lines for the journal. Under systemd (JOURNAL_STREAM set) each line
//! starts with its syslog priority (`<3>` error ... `<7>` debug, see
//! sd-daemon(3)), so `journalctl -p err -u piha-agent` finds the failures.

use std::io::Write;

use log::Level;

/// `RUST_LOG` overrides `default` (e.g. `RUST_LOG=debug`).
pub fn init(default: &str) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    builder.format(move |buf, record| {
        if journal {
            let priority = match record.level() {
                Level::Error => 3,
                Level::Warn => 4,
                Level::Info => 6,
                Level::Debug | Level::Trace => 7,
            };
            writeln!(buf, "<{priority}>{}", record.args())
        } else {
            writeln!(buf, "piha-agent: {}: {}", record.level().as_str().to_lowercase(), record.args())
        }
    });
    builder.init();
}
