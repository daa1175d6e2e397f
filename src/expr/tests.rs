use std::collections::BTreeMap;

use super::*;

fn record(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn getter<'r>(r: &'r BTreeMap<String, String>) -> impl Fn(&str) -> &'r str + 'r {
    |name| r.get(name).map(String::as_str).unwrap_or_default()
}

#[test]
fn a_filter_reads_its_fields_and_decides() {
    let filter = Expression::compile(
        r#"record.status == "customer" && record["phone number"] != """#,
        Yields::Bool,
    )
    .unwrap();
    assert_eq!(filter.inputs(), ["phone number", "status"]);
    let customer = record(&[("status", "customer"), ("phone number", "+14155550100")]);
    let lead = record(&[("status", "lead"), ("phone number", "+14155550100")]);
    let no_phone = record(&[("status", "customer")]);
    assert!(filter.eval_bool(getter(&customer)).unwrap());
    assert!(!filter.eval_bool(getter(&lead)).unwrap());
    assert!(
        !filter.eval_bool(getter(&no_phone)).unwrap(),
        "an absent field is empty text"
    );
}

#[test]
fn computed_values_cover_the_issue_examples() {
    let r = record(&[
        ("org", "Acme"),
        ("dept", "Sales"),
        ("first", "ADA o'BRIEN-smith"),
        ("tier", "2"),
    ]);
    let company =
        Expression::compile(r#"record.org + " / " + record.dept"#, Yields::Value).unwrap();
    assert_eq!(company.eval_text(getter(&r), ";").unwrap(), "Acme / Sales");
    let name = Expression::compile("record.first.title()", Yields::Value).unwrap();
    assert_eq!(
        name.eval_text(getter(&r), ";").unwrap(),
        "Ada O'Brien-Smith"
    );
    let tier = Expression::compile(
        r#"{"1": "Gold", "2": "Silver"}[record.tier]"#,
        Yields::Value,
    )
    .unwrap();
    assert_eq!(tier.eval_text(getter(&r), ";").unwrap(), "Silver");
    let tags = Expression::compile(r#"record.org.split("c")"#, Yields::Value).unwrap();
    assert_eq!(tags.eval_text(getter(&r), ";").unwrap(), "A;me");
}

#[test]
fn a_syntax_error_names_the_expression_and_the_position() {
    let err = Expression::compile(r#"record.status == "#, Yields::Bool).unwrap_err();
    assert_eq!(
        err.position,
        Position {
            line: 1,
            column: 18
        }
    );
    let text = err.to_string();
    assert!(text.contains(r#""record.status == ""#), "{text}");
    assert!(text.contains("line 1, column 18"), "{text}");
    assert!(text.contains("syntax error"), "{text}");
    let err =
        Expression::compile("record.a == 'x' &&\n  record.b === 'y'", Yields::Bool).unwrap_err();
    assert_eq!(err.position.line, 2, "{err}");
}

#[test]
fn type_errors_are_found_where_they_are_even_behind_a_short_circuit() {
    // `record.tier > 2` compares text with a number; `&&` would skip it for most records.
    let source = r#"record.status == "customer" && record.tier > 2"#;
    let err = Expression::compile(source, Yields::Bool).unwrap_err();
    assert!(err.message.starts_with("type error"), "{err}");
    assert_eq!(
        err.position.column,
        source.find('>').unwrap() + 1,
        "points at the comparison: {err}"
    );
    // A value-dependent failure is not a type error: int() of a blank tier is fine to write.
    let ok = Expression::compile(r#"record.tier != "" && int(record.tier) > 2"#, Yields::Bool);
    assert!(ok.is_ok(), "{ok:?}");
    // A filter must decide.
    let err = Expression::compile("record.status", Yields::Bool).unwrap_err();
    assert!(err.message.contains("true or false"), "{err}");
    // Unknown functions are found by name.
    let err = Expression::compile("titlecase(record.name)", Yields::Value).unwrap_err();
    assert!(err.message.contains("titlecase"), "{err}");
}

#[test]
fn only_record_fields_may_be_read_and_only_by_name() {
    let err = Expression::compile(r#"recrd.status == "x""#, Yields::Bool).unwrap_err();
    assert!(err.message.contains("unknown name `recrd`"), "{err}");
    assert_eq!(err.position.column, 1);
    let err = Expression::compile(r#"size(record) > 2"#, Yields::Bool).unwrap_err();
    assert!(err.message.contains("field by field"), "{err}");
    let err = Expression::compile(r#"record[record.which] == "x""#, Yields::Bool).unwrap_err();
    assert!(err.message.contains("in quotes"), "{err}");
    // Comprehension variables are fine.
    let ok = Expression::compile(
        r#"record.tags.split(";").exists(t, t == "vip")"#,
        Yields::Bool,
    )
    .unwrap();
    assert_eq!(ok.inputs(), ["tags"]);
}

#[test]
fn a_failure_at_run_time_names_the_field_and_value() {
    let tier = Expression::compile(r#"{"1": "Gold"}[record.tier]"#, Yields::Value).unwrap();
    let r = record(&[("tier", "7")]);
    let err = tier.eval_text(getter(&r), ";").unwrap_err();
    assert_eq!(err.field, Some(("tier".to_string(), "7".to_string())));
    let n = Expression::compile("int(record.score) > 3", Yields::Bool).unwrap();
    let r = record(&[("score", "high")]);
    let err = n.eval_bool(getter(&r)).unwrap_err();
    assert_eq!(
        err.field,
        Some(("score".to_string(), "high".to_string())),
        "{err}"
    );
    assert_eq!(err.position.column, 4, "the call of int(): {err}");
}

#[test]
fn title_case_handles_names() {
    use super::functions::title_case;
    assert_eq!(title_case("ZOË  de la CRUZ"), "Zoë  De La Cruz");
    assert_eq!(title_case("mary-jane o'neil"), "Mary-Jane O'Neil");
    assert_eq!(title_case(""), "");
}
