//! Progress of long commands (`replay`, `gen-trace`, `bench-engine`) on standard error: an
//! `indicatif` bar when it is a terminal, otherwise one plain line at most every
//! [`PLAIN_EVERY`] (so a CI log shows the run is alive without filling up).

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wall time between two plain progress lines.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Progress of `what` towards `total` units (`None`: a count without an end).
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: Option<u64>,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(what: &str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(n) => ProgressBar::new(n).with_style(
                    ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{prefix} [{elapsed_precise}] {spinner} {pos} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                ),
            };
            bar.set_prefix(what.to_string());
            bar
        });
        Progress { bar, what: what.to_string(), total, last_line: Mutex::new(Instant::now()) }
    }

    /// `done` units so far; `message` says more (e.g. the virtual time reached).
    pub fn update(&self, done: u64, message: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(message.to_string());
            }
            None => {
                let Ok(mut last) = self.last_line.lock() else { return };
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    match self.total {
                        Some(total) => eprintln!("{}: {done}/{total} {message}", self.what),
                        None => eprintln!("{}: {done} {message}", self.what),
                    }
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
