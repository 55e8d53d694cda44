//! Progress of long work on a terminal (`export`, `report`, `baseline`,
//! `fleet export`, and the daemon reading its GeoIP database):
//! an indicatif bar on stderr when stderr is a terminal, nothing otherwise
//! (a pipe, a log, a CI job), so scripts read the same output as before.
use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar of `what` (records) read of a known total.
    pub fn bar(what: &str) -> Self {
        Self::with(&format!(
            "{what} [{{bar:30}}] {{pos}}/{{len}} ({{percent}}%, {{per_sec}}, {{eta}} left)"
        ))
    }

    /// A count of `what` (flows) read of a total not known in advance.
    pub fn counter(what: &str) -> Self {
        Self::with(&format!("{{spinner}} {{pos}} {what} read ({{per_sec}})"))
    }

    fn with(template: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self { bar: Some(bar) }
    }

    /// Whether anything is drawn.
    pub fn on(&self) -> bool {
        self.bar.is_some()
    }

    /// `done` of `total` (0: not known).
    pub fn show(&self, done: u64, total: u64) {
        if let Some(b) = &self.bar {
            if total > 0 {
                b.set_length(total);
            }
            b.set_position(done);
        }
    }

    /// Clears the bar (the command's own summary line follows).
    pub fn done(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
