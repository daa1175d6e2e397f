//! The tracing layer behind the human view and the compact text lines.
//!
//! On a terminal it decides, per event, what a person needs to see now: errors and warnings
//! about the service at once; warnings about one row kept for the cycle's summary (with row,
//! field and value); the lines of single records (`contact_created` …) only when verbose; and
//! nothing of what the view draws itself (phases, progress, the result). Everywhere else it
//! writes every event as a compact line with its full values, event name and spans.

use std::io::Write;
use std::sync::Arc;

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::compact::{EventFields, LineStyle, format_line};
use super::terminal::Terminal;

/// A warning about one row, kept for the summary instead of printed as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Where the row was read.
    pub location: Option<String>,
    /// The record, when known.
    pub external_id: Option<String>,
    /// The field to blame.
    pub field: Option<String>,
    /// Its value.
    pub value: Option<String>,
    /// What happened.
    pub message: String,
}

/// Events the human view draws in its own words (phase lines, bars, the result, the status
/// line); their log lines would say the same thing twice.
const DRAWN_BY_THE_VIEW: &[&str] = &[
    "sandbox_started",
    "leader_acquired",
    "leader_released",
    "index_loaded",
    "source_read",
    "cycle_finished",
    "cycles_started",
    "service_started",
    "standby",
    "progress",
    "quo_scanned",
    // The resolved source and ledger are named by the view's `Syncing` line (a value in a log
    // line is cut to its file name, which says nothing about where it was found).
    "config_path",
    // Said by the view's `Paused` line (`once`) and status line (`run`).
    "cycle_paused",
    // Day one's listing of the workspace: drawn as the scan's bar.
    "workspace_listing",
    "workspace_listed",
    // The listing that confirms it (`sync::confirm`): the same bar again.
    "workspace_listing_confirming",
    "workspace_listing_confirmed",
];

/// Events about one row whose summary comes from the cycle itself (`CycleProgress::held_back`).
const HELD_BACK: &[&str] = &["record_quarantined", "record_unreadable", "record_held"];

/// What becomes of one event in the human view.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Show,
    Keep,
    Hide,
}

/// Where lines go.
enum Output {
    /// The human view: through the terminal, above its bars.
    View(Arc<Terminal>),
    /// Plain compact lines to a writer.
    Lines(BoxMakeWriter),
}

/// The layer.
pub struct HumanLayer {
    output: Output,
}

/// A span's fields as the verbose view shows them (`run=1fc344ef`).
struct SpanFields(String);

impl HumanLayer {
    /// The human view on `terminal`.
    pub fn view(terminal: Arc<Terminal>) -> Self {
        Self {
            output: Output::View(terminal),
        }
    }

    /// Every event as a compact, uncoloured line to `writer`.
    pub fn lines<W>(writer: W) -> Self
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        Self {
            output: Output::Lines(BoxMakeWriter::new(writer)),
        }
    }
}

/// Decides an event's fate in the (non-verbose) human view.
fn fate(level: Level, target: &str, fields: &EventFields, in_record: bool) -> Fate {
    let event = fields.event.as_deref().unwrap_or_default();
    let about_a_row =
        in_record || fields.get("external_id").is_some() || fields.get("location").is_some();
    if level == Level::ERROR {
        return Fate::Show;
    }
    if HELD_BACK.contains(&event) {
        return Fate::Hide;
    }
    if level == Level::WARN {
        return if about_a_row { Fate::Keep } else { Fate::Show };
    }
    if level > Level::INFO {
        // Only here when the filter lets debug through, which makes the view verbose.
        return Fate::Show;
    }
    if about_a_row || DRAWN_BY_THE_VIEW.contains(&event) || target.starts_with("quo_sync::sandbox")
    {
        return Fate::Hide;
    }
    Fate::Show
}

impl<S> Layer<S> for HumanLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(SpanFields(span_text(span.name(), &fields)));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        values.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            let more = span_text(span.name(), &fields);
            let mut extensions = span.extensions_mut();
            if let Some(SpanFields(text)) = extensions.get_mut::<SpanFields>() {
                text.push(' ');
                text.push_str(&more);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = EventFields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut in_record = false;
        let mut spans = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                in_record |= span.name() == "record";
                if let Some(SpanFields(text)) = span.extensions().get::<SpanFields>()
                    && !text.is_empty()
                {
                    spans.push(text.clone());
                }
            }
        }
        let time = chrono::Local::now().format("%H:%M:%S").to_string();
        match &self.output {
            Output::View(terminal) => {
                let fate = if terminal.verbose() {
                    Fate::Show
                } else {
                    fate(*meta.level(), meta.target(), &fields, in_record)
                };
                match fate {
                    Fate::Show => {
                        let style = LineStyle {
                            colour: terminal.colour(),
                            verbose: terminal.verbose(),
                            // Verbose lines keep everything; the rest fit the width.
                            width: (!terminal.verbose()).then(|| terminal.width()),
                        };
                        terminal.line(&format_line(
                            &time,
                            *meta.level(),
                            &fields,
                            &spans.join(" "),
                            style,
                        ));
                    }
                    Fate::Keep => terminal.keep(Notice {
                        location: fields.get("location").map(str::to_string),
                        external_id: fields.get("external_id").map(str::to_string),
                        field: fields.get("field").map(str::to_string),
                        value: fields.get("value").map(str::to_string),
                        message: fields.message.clone(),
                    }),
                    Fate::Hide => {}
                }
            }
            Output::Lines(writer) => {
                // A file keeps everything: full values, the event name, the spans.
                let style = LineStyle {
                    colour: false,
                    verbose: true,
                    width: None,
                };
                let mut line = format_line(&time, *meta.level(), &fields, &spans.join(" "), style);
                line.push('\n');
                let _ = writer.make_writer().write_all(line.as_bytes());
            }
        }
    }
}

/// A span's fields as `name=value` words: ids cut to 8 characters (`run=1fc344ef`).
fn span_text(span: &str, fields: &EventFields) -> String {
    fields
        .fields
        .iter()
        .filter(|(name, _)| *name != "mode")
        .map(|(name, value)| {
            let name = match (span, *name) {
                ("cycle", "run_id") => "run",
                ("record", "external_id") => "record",
                (_, name) => name,
            };
            let value: String = if name == "run" {
                value.chars().take(8).collect()
            } else {
                value.clone()
            };
            format!("{name}={value}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, pairs: &[(&'static str, &str)]) -> EventFields {
        EventFields {
            message: "m".into(),
            event: Some(name.into()),
            fields: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    #[test]
    fn record_lines_hide_row_warnings_wait_and_service_news_shows() {
        let t = "quo_sync::sync::execute";
        let created = event(
            "contact_created",
            &[("external_id", "C-1"), ("quo_id", "q")],
        );
        assert_eq!(fate(Level::INFO, t, &created, true), Fate::Hide);
        let odd_time = event(
            "",
            &[("location", "a.csv line 26"), ("field", "updated_at")],
        );
        assert_eq!(fate(Level::WARN, t, &odd_time, false), Fate::Keep);
        let quarantined = event("record_quarantined", &[("external_id", "C-2")]);
        assert_eq!(fate(Level::WARN, t, &quarantined, false), Fate::Hide);
        assert_eq!(
            fate(Level::WARN, t, &event("scan_failed", &[]), false),
            Fate::Show
        );
        assert_eq!(fate(Level::ERROR, t, &created, true), Fate::Show);
        assert_eq!(
            fate(Level::INFO, t, &event("cycle_finished", &[]), false),
            Fate::Hide
        );
        assert_eq!(
            fate(Level::INFO, t, &event("listener_started", &[]), false),
            Fate::Show
        );
        assert_eq!(
            fate(Level::INFO, "quo_sync::sandbox", &event("", &[]), false),
            Fate::Hide
        );
    }
}
