//! Expressions over a CRM record's fields: the language of `sync.filter` (which records are in
//! scope) and of computed mapping entries (`company = { expr = '...' }`).
//!
//! Why CEL (the Common Expression Language, through the `cel` crate, the maintained successor
//! of `cel-interpreter`): it is the language Kubernetes, Envoy and Google's IAM use for the same
//! job, so operators may know it already; it is not Turing complete (no loops, no recursion, no
//! I/O), so an expression cannot hang a cycle or reach outside the record; and it has map
//! literals and string functions, which a value map (`{"1": "Gold"}[record.tier]`) and a
//! company built from two columns need. We add one function, `title()` (see [`functions`]).
//!
//! What this module adds on top of the crate, so that a bad expression is refused at
//! `check-config` with its position rather than quarantining every record at run time:
//! * `record` is the only name, read field by field (`record.status`, `record["first name"]`),
//!   so the fields an expression reads are known before it runs ([`Expression::inputs`]). That
//!   is what lets an unchanged row skip evaluation: its fingerprint covers every input.
//! * CEL has no static type checker in this crate, so [`Expression::compile`] evaluates every
//!   sub-expression once against a record whose fields are all text (as every source gives
//!   them) and refuses a type error (`record.tier > 2`: text against a number) at the innermost
//!   sub-expression that has it. Errors that depend on the value (`int(record.tier)` of a
//!   blank tier, a key missing from a value map) are not type errors: they are reported per
//!   record at run time, with the field and value, and the record is quarantined.

mod check;
mod functions;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::objects::{Key, Map};
use cel::{Context, Env, ExecutionError, Program, Value};

/// The one name an expression may read: the record.
pub const RECORD: &str = "record";

/// The environment every expression compiles and runs in: CEL's standard library, the strings
/// extension (`lowerAscii`, `trim`, `replace`, `split`, …) and `title()`.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)
        .expect("the strings extension declares once");
    functions::register(&mut env);
    Arc::new(env)
});

/// Where in an expression something is: 1-based line and column (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// What an expression must produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Yields {
    /// `true` or `false` (a filter).
    Bool,
    /// A value that becomes a field's text: text, a number, a boolean, null or a list of text.
    Value,
}

/// Why an expression cannot be used; its `Display` names the expression and the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expression {expression:?} is not valid at {position}: {message}\n{caret}")]
pub struct CompileError {
    /// The expression as written.
    pub expression: String,
    /// Where the problem is.
    pub position: Position,
    /// What is wrong.
    pub message: String,
    /// The line with a caret under the position.
    pub caret: String,
}

/// Why an expression could not be evaluated for one record (the record is quarantined).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at {position} of {expression:?})")]
pub struct EvalError {
    /// The expression.
    pub expression: String,
    /// The innermost sub-expression that failed.
    pub position: Position,
    /// What failed.
    pub message: String,
    /// The record field that sub-expression reads, with its value, when it reads one.
    pub field: Option<(String, String)>,
}

/// A compiled, checked expression.
#[derive(Clone)]
pub struct Expression {
    source: String,
    program: Arc<Program>,
    /// Record fields read, sorted and unique.
    inputs: Vec<String>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression").field(&self.source).finish()
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Expression {
    /// Parses and checks `source`: syntax, names (only `record`, read field by field) and types
    /// (every sub-expression evaluated on text fields), and that it `yields` what is asked.
    pub fn compile(source: &str, yields: Yields) -> Result<Self, CompileError> {
        let program = ENV.compile(source).map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first.map(|e| e.pos).unwrap_or((1, 1));
            let message = first
                .map(|e| e.msg.trim_start_matches("Syntax error: ").to_string())
                .unwrap_or_else(|| "cannot be parsed".into());
            compile_error(
                source,
                Position {
                    line: line.max(1) as usize,
                    column: column.max(1) as usize,
                },
                format!("syntax error: {message}"),
            )
        })?;
        let inputs = check::names(source, &program)?;
        let expression = Expression {
            source: source.to_string(),
            program: Arc::new(program),
            inputs,
        };
        check::types(&expression, yields)?;
        Ok(expression)
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The record fields it reads, sorted.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// Evaluates it for a record; `field` gives a field's raw text (absent = empty).
    pub fn eval<'a>(&self, field: impl Fn(&str) -> &'a str) -> Result<Value, EvalError> {
        let context = self.context(&field);
        match self.program.execute(&context) {
            Ok(value) => Ok(value),
            Err(error) => Err(self.explain(&context, error, &field)),
        }
    }

    /// Evaluates a filter: `true` when the record is in scope.
    pub fn eval_bool<'a>(&self, field: impl Fn(&str) -> &'a str) -> Result<bool, EvalError> {
        match self.eval(&field)? {
            Value::Bool(b) => Ok(b),
            other => Err(EvalError {
                expression: self.source.clone(),
                position: Position { line: 1, column: 1 },
                message: format!("expected true or false, got {}", describe(&other)),
                field: None,
            }),
        }
    }

    /// Evaluates a computed field into the text the mapping reads: text as is, numbers and
    /// booleans written out, null as empty, a list of text joined with `delimiter`.
    pub fn eval_text<'a>(
        &self,
        field: impl Fn(&str) -> &'a str,
        delimiter: &str,
    ) -> Result<String, EvalError> {
        let value = self.eval(&field)?;
        text_of(&value, delimiter).ok_or_else(|| EvalError {
            expression: self.source.clone(),
            position: Position { line: 1, column: 1 },
            message: format!(
                "expected text, a number, true/false, null or a list of text, got {}",
                describe(&value)
            ),
            field: None,
        })
    }

    /// The context of one evaluation: `record` holds every input (absent = empty text).
    fn context<'a>(&self, field: &impl Fn(&str) -> &'a str) -> Context<'static, 'static> {
        let mut record = HashMap::with_capacity(self.inputs.len());
        for name in &self.inputs {
            record.insert(
                Key::String(Arc::new(name.clone())),
                Value::String(Arc::new(field(name).to_string())),
            );
        }
        let mut context = Context::with_env(ENV.clone());
        context.add_variable_from_value(
            RECORD,
            Value::Map(Map {
                map: Arc::new(record),
            }),
        );
        context
    }

    /// Names the innermost failing sub-expression and the field it reads.
    fn explain<'a>(
        &self,
        context: &Context<'_, '_>,
        error: ExecutionError,
        field: &impl Fn(&str) -> &'a str,
    ) -> EvalError {
        let (id, message) = check::innermost_failure(self.program.expression(), context)
            .unwrap_or((self.program.expression().id, error.to_string()));
        let position = self.position_of(id);
        let read = check::field_read_under(self.program.expression(), id)
            .map(|name| (name.clone(), field(&name).to_string()));
        EvalError {
            expression: self.source.clone(),
            position,
            message,
            field: read,
        }
    }

    fn position_of(&self, id: u64) -> Position {
        let offset = self
            .program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize);
        position_at(&self.source, offset)
    }
}

/// A value as a field's text, when it can be one.
fn text_of(value: &Value, delimiter: &str) -> Option<String> {
    match value {
        Value::String(s) => Some(s.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) if f.is_finite() => Some(f.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        Value::List(items) => {
            let parts: Option<Vec<String>> =
                items.iter().map(|item| text_of(item, delimiter)).collect();
            Some(parts?.join(delimiter))
        }
        _ => None,
    }
}

/// A value's type, for messages.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("text {s:?}"),
        Value::Int(i) => format!("the number {i}"),
        Value::UInt(u) => format!("the number {u}"),
        Value::Float(f) => format!("the number {f}"),
        Value::Bool(b) => format!("{b}"),
        Value::Null => "null".into(),
        Value::List(_) => "a list".into(),
        Value::Map(_) => "a map".into(),
        other => format!("{:?}", other.type_of()),
    }
}

/// The 1-based line and column of the character at `offset` (in characters).
fn position_at(source: &str, offset: usize) -> Position {
    let mut line = 1;
    let mut column = 1;
    for (i, c) in source.chars().enumerate() {
        if i == offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Position { line, column }
}

/// A compile error at `position`, with the line and a caret under the column.
fn compile_error(source: &str, position: Position, message: String) -> CompileError {
    let line = source.lines().nth(position.line - 1).unwrap_or(source);
    let caret = format!(
        "  {line}\n  {}^",
        " ".repeat(position.column.saturating_sub(1))
    );
    CompileError {
        expression: source.to_string(),
        position,
        message,
        caret,
    }
}

#[cfg(test)]
mod tests;
