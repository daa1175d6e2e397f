//! The checks CEL's crate leaves to us: names (only `record`, read field by field, so an
//! expression's inputs are known before it runs) and types (every sub-expression evaluated once
//! on text fields), each refused at the position of the sub-expression at fault.

use std::collections::BTreeSet;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::{Context, ExecutionError, Program, Value};

use super::{CompileError, Expression, RECORD, Yields, compile_error, describe, text_of};

/// Type names CEL lets an expression mention (`type(x) == string`).
const TYPE_NAMES: &[&str] = &[
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
    "timestamp",
    "duration",
];

/// The record fields `program` reads, or the first name it may not use.
pub(super) fn names(source: &str, program: &Program) -> Result<Vec<String>, CompileError> {
    let mut walk = Names {
        source,
        program,
        inputs: BTreeSet::new(),
        bound: Vec::new(),
    };
    walk.expr(program.expression())?;
    Ok(walk.inputs.into_iter().collect())
}

struct Names<'a> {
    source: &'a str,
    program: &'a Program,
    inputs: BTreeSet<String>,
    /// Variables a comprehension (`all`, `exists`, `map`, `filter`) binds around the walk.
    bound: Vec<String>,
}

impl Names<'_> {
    fn refuse(&self, id: u64, message: String) -> CompileError {
        let offset = self
            .program
            .source_info()
            .offset_for(id)
            .map_or(0, |(start, _)| start as usize);
        compile_error(
            self.source,
            super::position_at(self.source, offset),
            message,
        )
    }

    fn is_record(&self, expr: &IdedExpr) -> bool {
        matches!(&expr.expr, Expr::Ident(name) if name == RECORD && !self.bound.contains(name))
    }

    fn expr(&mut self, e: &IdedExpr) -> Result<(), CompileError> {
        match &e.expr {
            Expr::Ident(name) => {
                if self.bound.contains(name) || TYPE_NAMES.contains(&name.as_str()) {
                    Ok(())
                } else if name == RECORD {
                    Err(self.refuse(
                        e.id,
                        "`record` can only be read field by field: record.status or record[\"first name\"]".into(),
                    ))
                } else {
                    Err(self.refuse(
                        e.id,
                        format!("unknown name `{name}`: a record's fields are read as record.<field>"),
                    ))
                }
            }
            Expr::Select(select) if self.is_record(&select.operand) => {
                self.inputs.insert(select.field.clone());
                Ok(())
            }
            Expr::Select(select) => self.expr(&select.operand),
            Expr::Call(call)
                if call.func_name == "_[_]"
                    && call.target.is_none()
                    && call.args.len() == 2
                    && self.is_record(&call.args[0]) =>
            {
                match &call.args[1].expr {
                    Expr::Literal(LiteralValue::String(name)) => {
                        self.inputs.insert(name.to_string());
                        Ok(())
                    }
                    _ => Err(self.refuse(
                        call.args[1].id,
                        "`record` can only be indexed by a field name in quotes: record[\"first name\"]".into(),
                    )),
                }
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    self.expr(target)?;
                }
                call.args.iter().try_for_each(|a| self.expr(a))
            }
            Expr::Comprehension(c) => {
                self.expr(&c.iter_range)?;
                self.expr(&c.accu_init)?;
                let depth = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.clone());
                self.bound.push(c.accu_var.clone());
                let inner = [&c.loop_cond, &c.loop_step, &c.result]
                    .into_iter()
                    .try_for_each(|x| self.expr(x));
                self.bound.truncate(depth);
                inner
            }
            Expr::List(list) => list.elements.iter().try_for_each(|x| self.expr(x)),
            Expr::Map(map) => map.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => {
                    self.expr(&m.key)?;
                    self.expr(&m.value)
                }
                EntryExpr::StructField(f) => self.expr(&f.value),
            }),
            Expr::Struct(s) => s.entries.iter().try_for_each(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => {
                    self.expr(&m.key)?;
                    self.expr(&m.value)
                }
                EntryExpr::StructField(f) => self.expr(&f.value),
            }),
            Expr::Literal(_) | Expr::Unspecified => Ok(()),
        }
    }
}

/// Sample values every field takes in turn while a result's type is checked: blank first (a
/// blank cell is the commonest value), then a number and a word.
const SAMPLES: &[&str] = &["", "1", "x"];

/// Refuses a type error in any sub-expression (with every field blank text), and a result of
/// the wrong kind.
pub(super) fn types(expression: &Expression, yields: Yields) -> Result<(), CompileError> {
    let root = expression.program.expression();
    let blank = expression.context(&|_: &str| "");
    if let Some((id, message)) = first_type_error(root, &blank) {
        return Err(compile_error(
            &expression.source,
            expression.position_of(id),
            format!("type error: {message}"),
        ));
    }
    for sample in SAMPLES {
        let context = expression.context(&|_: &str| *sample);
        let Ok(value) = Value::resolve(root, &context) else {
            continue;
        };
        let fits = match yields {
            Yields::Bool => matches!(value, Value::Bool(_)),
            Yields::Value => text_of(&value, ";").is_some(),
        };
        if fits {
            return Ok(());
        }
        let want = match yields {
            Yields::Bool => "a filter must give true or false",
            Yields::Value => {
                "a computed field must give text, a number, true/false, null or a list of text"
            }
        };
        return Err(compile_error(
            &expression.source,
            expression.position_of(root.id),
            format!("type error: {want}; this gives {}", describe(&value)),
        ));
    }
    Ok(())
}

/// Whether an evaluation error says the expression is wrong whatever the record holds.
fn is_type_error(error: &ExecutionError) -> bool {
    matches!(
        error,
        ExecutionError::NoSuchOverload(_)
            | ExecutionError::ValuesNotComparable(..)
            | ExecutionError::UnsupportedBinaryOperator(..)
            | ExecutionError::UndeclaredReference(_)
            | ExecutionError::UnexpectedType { .. }
            | ExecutionError::InvalidArgumentCount { .. }
            | ExecutionError::NotSupportedAsMethod { .. }
            | ExecutionError::UnsupportedTargetType { .. }
            | ExecutionError::UnsupportedKeyType(_)
            | ExecutionError::UnsupportedIndex(..)
            | ExecutionError::DuplicateKey(_)
            | ExecutionError::MissingArgumentOrTarget
    )
}

/// The sub-expressions that can be evaluated on their own: a comprehension's loop parts read
/// the variables it binds, so only its range and initial value are.
fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::Comprehension(c) => vec![&c.iter_range, &c.accu_init],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(map) => map
            .entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Struct(s) => s
            .entries
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

/// The innermost sub-expression (children first, short-circuited ones included) that fails
/// with a type error.
fn first_type_error(e: &IdedExpr, context: &Context<'_, '_>) -> Option<(u64, String)> {
    for child in children(e) {
        if let Some(found) = first_type_error(child, context) {
            return Some(found);
        }
    }
    match Value::resolve(e, context) {
        Err(error) if is_type_error(&error) => Some((e.id, error.to_string())),
        _ => None,
    }
}

/// Following the failures down from `e`: the innermost failing sub-expression and its error.
pub(super) fn innermost_failure(e: &IdedExpr, context: &Context<'_, '_>) -> Option<(u64, String)> {
    let error = Value::resolve(e, context).err()?;
    for child in children(e) {
        if let Some(found) = innermost_failure(child, context) {
            return Some(found);
        }
    }
    Some((e.id, error.to_string()))
}

/// The first record field read inside the sub-expression `id` of `root`.
pub(super) fn field_read_under(root: &IdedExpr, id: u64) -> Option<String> {
    let node = find(root, id)?;
    first_field(node)
}

fn find(e: &IdedExpr, id: u64) -> Option<&IdedExpr> {
    if e.id == id {
        return Some(e);
    }
    let inner: Vec<&IdedExpr> = match &e.expr {
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        _ => children(e),
    };
    inner.into_iter().find_map(|child| find(child, id))
}

fn first_field(e: &IdedExpr) -> Option<String> {
    let is_record = |x: &IdedExpr| matches!(&x.expr, Expr::Ident(name) if name == RECORD);
    match &e.expr {
        Expr::Select(select) if is_record(&select.operand) => Some(select.field.clone()),
        Expr::Call(call)
            if call.func_name == "_[_]" && call.args.len() == 2 && is_record(&call.args[0]) =>
        {
            match &call.args[1].expr {
                Expr::Literal(LiteralValue::String(name)) => Some(name.to_string()),
                _ => None,
            }
        }
        _ => children(e).into_iter().find_map(first_field),
    }
}
