//! The terminal the human view draws on: every log line, phase line and progress bar goes
//! through one indicatif `MultiProgress`, whose `suspend` clears the bars, writes the line and
//! draws the bars again below it, so a redraw never cuts through a line.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use super::compact::MAX_WIDTH;
use super::human::Notice;

/// The terminal of this process, once the human view is installed.
static TERMINAL: OnceLock<Arc<Terminal>> = OnceLock::new();

/// The human view's terminal (stderr), when the log format chose it: `None` means logs are
/// JSON or plain lines and nothing may draw.
pub fn terminal() -> Option<Arc<Terminal>> {
    TERMINAL.get().cloned()
}

/// stderr as the human view uses it.
pub struct Terminal {
    bars: indicatif::MultiProgress,
    colour: bool,
    verbose: bool,
    notices: Mutex<(Vec<Notice>, u64)>,
}

/// Row warnings kept per cycle with their details; the rest are counted.
const NOTICES_KEPT: usize = 100;

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("colour", &self.colour)
            .field("verbose", &self.verbose)
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// Makes this process's terminal (the first call wins).
    pub(super) fn install(verbose: bool) -> Arc<Terminal> {
        TERMINAL
            .get_or_init(|| {
                Arc::new(Terminal {
                    bars: indicatif::MultiProgress::with_draw_target(
                        indicatif::ProgressDrawTarget::stderr(),
                    ),
                    // console honours NO_COLOR, CLICOLOR and CLICOLOR_FORCE.
                    colour: console::colors_enabled_stderr(),
                    verbose,
                    notices: Mutex::new((Vec::new(), 0)),
                })
            })
            .clone()
    }

    /// Whether lines may be coloured.
    pub fn colour(&self) -> bool {
        self.colour
    }

    /// Whether every record's line is shown (`-v`, or a `debug` level).
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// Columns a line may take: the terminal's width, at most 120.
    pub fn width(&self) -> usize {
        let (_, columns) = console::Term::stderr().size();
        (columns as usize).clamp(40, MAX_WIDTH)
    }

    /// `text` in `style` when colour is on.
    pub fn paint(&self, style: console::Style, text: &str) -> String {
        style.force_styling(self.colour).apply_to(text).to_string()
    }

    /// Writes a line above the bars (cut to the width unless verbose).
    pub fn line(&self, text: &str) {
        let text = if self.verbose {
            std::borrow::Cow::Borrowed(text)
        } else {
            console::truncate_str(text, self.width(), "…")
        };
        self.bars.suspend(|| {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
            let _ = err.flush();
        });
    }

    /// Adds a bar below the others.
    pub fn add(&self, bar: indicatif::ProgressBar) -> indicatif::ProgressBar {
        self.bars.add(bar)
    }

    /// Removes a bar (its line is cleared at the next draw).
    pub fn remove(&self, bar: &indicatif::ProgressBar) {
        self.bars.remove(bar);
    }

    /// Clears whatever bars are drawn.
    pub fn clear(&self) {
        let _ = self.bars.clear();
    }

    /// Keeps a row-level warning for the summary.
    pub(super) fn keep(&self, notice: Notice) {
        let mut notices = self.lock_notices();
        if notices.0.len() < NOTICES_KEPT {
            notices.0.push(notice);
        } else {
            notices.1 += 1;
        }
    }

    /// The row-level warnings kept since the last call (past the first 100, one more notice
    /// counts the rest).
    pub fn take_notices(&self) -> Vec<Notice> {
        let (mut kept, more) = std::mem::take(&mut *self.lock_notices());
        if more > 0 {
            kept.push(Notice {
                location: None,
                external_id: None,
                field: None,
                value: None,
                message: format!("and {more} more warnings (-v shows each as it happens)"),
            });
        }
        kept
    }

    fn lock_notices(&self) -> std::sync::MutexGuard<'_, (Vec<Notice>, u64)> {
        self.notices
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
