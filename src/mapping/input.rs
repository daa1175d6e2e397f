//! Where a mapped value is read from: a source column, or an expression over the record
//! (a computed entry). A computed value is one-way: it has no column to write back to.

use std::borrow::Cow;

use super::{MappingConfigError, MappingError};
use crate::config::FieldSource;
use crate::expr::{Expression, Yields};
use crate::source::SourceRecord;

/// One mapping entry's input.
#[derive(Debug, Clone)]
pub(super) enum Input {
    /// A source field.
    Column(String),
    /// An expression, with the config key it was written at (`mapping.company`).
    Computed {
        /// `mapping.company`, `mapping.custom_fields[2].field`, …
        key: String,
        /// The compiled expression.
        expr: Expression,
    },
}

impl Input {
    /// The input of the entry at `key`, compiling an expression (refused with its position).
    pub(super) fn new(key: &str, source: &FieldSource) -> Result<Self, MappingConfigError> {
        match source {
            FieldSource::Column(column) => Ok(Input::Column(column.clone())),
            FieldSource::Computed { expr } => Expression::compile(expr, Yields::Value)
                .map(|expr| Input::Computed {
                    key: key.to_string(),
                    expr,
                })
                .map_err(|e| MappingConfigError::BadExpression {
                    key: key.to_string(),
                    message: e.to_string(),
                }),
        }
    }

    /// The source column, when this is one (only columns are written back to the CRM).
    pub(super) fn column(&self) -> Option<&str> {
        match self {
            Input::Column(column) => Some(column),
            Input::Computed { .. } => None,
        }
    }

    /// The source fields this input reads.
    pub(super) fn reads(&self) -> Vec<String> {
        match self {
            Input::Column(column) => vec![column.clone()],
            Input::Computed { expr, .. } => expr.inputs().to_vec(),
        }
    }

    /// What errors name as the field: the column, or the config key of a computed entry.
    pub(super) fn label(&self) -> &str {
        match self {
            Input::Column(column) => column,
            Input::Computed { key, .. } => key,
        }
    }

    /// The entry's raw text for `record`, trimmed (absent = empty); a computed entry that
    /// cannot be evaluated names the field it read and its value. `delimiter` joins a list.
    pub(super) fn read<'r>(
        &self,
        record: &'r SourceRecord,
        delimiter: &str,
    ) -> Result<Cow<'r, str>, MappingError> {
        let field = |name: &str| -> &'r str {
            record
                .fields
                .get(name)
                .map(String::as_str)
                .unwrap_or_default()
        };
        match self {
            Input::Column(column) => Ok(Cow::Borrowed(field(column).trim())),
            Input::Computed { key, expr } => match expr.eval_text(field, delimiter) {
                Ok(text) => Ok(Cow::Owned(text.trim().to_string())),
                Err(e) => {
                    let (field, value) = e
                        .field
                        .clone()
                        .unwrap_or_else(|| (key.clone(), String::new()));
                    Err(MappingError {
                        field,
                        value,
                        reason: format!("computed {key}: {}", e),
                    })
                }
            },
        }
    }
}
