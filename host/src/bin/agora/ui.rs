//! What long work shows on a terminal: transfer bars and spinners, hidden elsewhere.

use std::io::IsTerminal;
use std::time::Duration;

use agora_host::net::FetchProgress;
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar with bytes and rate for transfers, on a terminal only.
pub(crate) struct TransferBar(ProgressBar);

impl TransferBar {
    pub(crate) fn new() -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        TransferBar(bar)
    }
}

impl FetchProgress for TransferBar {
    fn start(&self, what: &str, size: u64) {
        self.0.reset();
        self.0.set_length(size);
        self.0.set_message(what.to_owned());
    }

    fn progress(&self, bytes: u64) {
        self.0.set_position(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A spinner on a terminal; nothing otherwise.
pub(crate) fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner().with_message(message.to_owned());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        spinner.set_style(style);
    }
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}
