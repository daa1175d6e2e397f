//! One event as one short text line: `12:04:05 WARN  message  key=value key=value`. No module
//! path, no span ids unless verbose, long values shortened (a path to its file name), and on a
//! terminal the whole line cut to the terminal's width (at most 120 columns) so that nothing
//! wraps.

use tracing::Level;
use tracing::field::{Field, Visit};

/// Widest line the human view writes.
pub const MAX_WIDTH: usize = 120;

/// Longest value shown in full in a line (`key=value`); longer ones end in `…`.
const MAX_VALUE: usize = 48;

/// An event's fields as text: its message, its `event` name and the rest in order.
#[derive(Debug, Default, Clone)]
pub struct EventFields {
    /// The message.
    pub message: String,
    /// The `event` field (the stable name operators filter on).
    pub event: Option<String>,
    /// Every other field, in the order written.
    pub fields: Vec<(&'static str, String)>,
}

impl EventFields {
    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn push(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "event" => self.event = Some(value),
            name => self.fields.push((name, value)),
        }
    }
}

impl Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, format!("{value:?}"));
    }
}

/// How a line is drawn.
#[derive(Debug, Clone, Copy)]
pub struct LineStyle {
    /// ANSI colours.
    pub colour: bool,
    /// Show the `event` name, span fields and values in full.
    pub verbose: bool,
    /// Cut the line to this many columns.
    pub width: Option<usize>,
}

/// Formats one event. `spans` is the verbose span context (`run=1fc344ef record=C-1001`).
pub fn format_line(
    time: &str,
    level: Level,
    fields: &EventFields,
    spans: &str,
    style: LineStyle,
) -> String {
    let paint =
        |s: console::Style, text: &str| s.force_styling(style.colour).apply_to(text).to_string();
    let level_style = match level {
        Level::ERROR => console::Style::new().red().bold(),
        Level::WARN => console::Style::new().yellow().bold(),
        Level::INFO => console::Style::new().green(),
        Level::DEBUG => console::Style::new().blue(),
        Level::TRACE => console::Style::new().dim(),
    };
    let mut line = format!(
        "{} {} {}",
        paint(console::Style::new().dim(), time),
        paint(level_style, &format!("{:<5}", level.as_str())),
        fields.message
    );
    let mut extras: Vec<String> = fields
        .fields
        .iter()
        .map(|(name, value)| {
            let value = if style.verbose {
                value.clone()
            } else {
                shorten(value)
            };
            format!(
                "{}={}",
                paint(console::Style::new().italic(), name),
                quoted(&value)
            )
        })
        .collect();
    if style.verbose {
        if let Some(event) = &fields.event {
            extras.push(format!(
                "{}={event}",
                paint(console::Style::new().italic(), "event")
            ));
        }
        if !spans.is_empty() {
            extras.push(paint(console::Style::new().dim(), spans));
        }
    }
    if !extras.is_empty() {
        line.push_str("  ");
        line.push_str(&extras.join(" "));
    }
    match style.width {
        Some(width) => console::truncate_str(&line, width, "…").into_owned(),
        None => line,
    }
}

/// A value as a line shows it: an absolute path by its file name (a `… line N` suffix kept),
/// anything long cut with `…`.
pub fn shorten(value: &str) -> String {
    let value = match value.strip_prefix('/') {
        Some(_) => {
            let (path, rest) = match value.find(" line ") {
                Some(at) => value.split_at(at),
                None => (value, ""),
            };
            let name = path.rsplit('/').next().unwrap_or(path);
            format!("{name}{rest}")
        }
        None => value.to_string(),
    };
    if value.chars().count() > MAX_VALUE {
        let cut: String = value.chars().take(MAX_VALUE - 1).collect();
        format!("{cut}…")
    } else {
        value
    }
}

/// Quotes a value with spaces (or nothing in it) so `key=value` pairs stay readable.
fn quoted(value: &str) -> String {
    if value.is_empty() || value.contains(' ') {
        format!("{value:?}")
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(message: &str, pairs: &[(&'static str, &str)]) -> EventFields {
        EventFields {
            message: message.into(),
            event: Some("record_quarantined".into()),
            fields: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    #[test]
    fn a_line_has_time_level_message_and_short_fields_without_module_or_spans() {
        let event = fields(
            "unparseable last-modified time ignored",
            &[
                (
                    "location",
                    "/tmp/quo-sync-sandbox-4d4e741e-58ea-49c7-a407-560b1dcff249/contacts.example.csv line 26",
                ),
                ("field", "updated_at"),
                ("value", "last tuesday"),
            ],
        );
        let style = LineStyle {
            colour: false,
            verbose: false,
            width: Some(200),
        };
        let line = format_line("00:36:29", Level::WARN, &event, "run=1fc344ef", style);
        assert_eq!(
            line,
            "00:36:29 WARN  unparseable last-modified time ignored  \
             location=\"contacts.example.csv line 26\" field=updated_at value=\"last tuesday\""
        );
        let verbose = format_line(
            "00:36:29",
            Level::WARN,
            &event,
            "run=1fc344ef",
            LineStyle {
                verbose: true,
                width: None,
                ..style
            },
        );
        assert!(
            verbose.contains("/tmp/quo-sync-sandbox-")
                && verbose.ends_with("event=record_quarantined run=1fc344ef"),
            "{verbose}"
        );
    }

    #[test]
    fn a_long_line_is_cut_to_the_width_and_colour_is_optional() {
        let event = fields(&"x".repeat(300), &[]);
        let style = LineStyle {
            colour: true,
            verbose: false,
            width: Some(MAX_WIDTH),
        };
        let line = format_line("00:00:00", Level::ERROR, &event, "", style);
        assert!(line.contains('\u{1b}'), "coloured: {line:?}");
        assert_eq!(console::measure_text_width(&line), MAX_WIDTH);
        let plain = format_line(
            "00:00:00",
            Level::ERROR,
            &event,
            "",
            LineStyle {
                colour: false,
                ..style
            },
        );
        assert!(!plain.contains('\u{1b}'));
    }
}
