//! A workspace that is not empty: contacts seeded from a CSV, as a team has them in Quo before
//! quo-sync first runs (typed in the app, imported in the app, made by Zapier or a native
//! integration).
//!
//! Every real deployment starts here, so the sandbox can too: `quo-sync sandbox --seed-existing
//! people.csv` (or `--with-sandbox --seed-existing` on `run`, `once` and `plan`) stores one contact
//! per row before the first request, without webhook events or request statistics. The format is
//! the sample CRM CSV's, so a CRM export can seed its own workspace:
//!
//! | column | becomes |
//! | --- | --- |
//! | `first_name`, `last_name`, `company`, `role` | the default fields |
//! | `email`, `work_email` | emails labelled `email` and `work` |
//! | `phone`, `mobile` | phone numbers labelled `phone` and `mobile` (national numbers read as US, stored E.164) |
//! | `notes` | the `Notes` custom field (typed in the app) |
//! | `source` | empty: made in the Quo app (no `source`); `zapier` or any other label: another integration's contact; `hubspot`, `salesforce`, `google-people`, `outlook`: a native integration's, read-only through the API |
//! | `external_id` | the other integration's `externalId` |
//!
//! Other columns (`crm_id`, `updated_at`, …) are ignored. A row that cannot be a contact is
//! refused with its line, column and value; nothing is stored then.

use serde_json::{Value, json};

/// One seeded contact: the body as the app would store it, and its `source` (`""`: none).
#[derive(Debug, Clone, PartialEq)]
pub struct SeedContact {
    /// A contact body (`defaultFields`, `customFields`, `externalId`).
    pub body: Value,
    /// The `source` it carries; `""` for contacts made in the Quo app.
    pub source: String,
}

/// Why a seed CSV cannot be used: names the line, the column and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: column {column:?}, value {value:?}: {reason}")]
pub struct SeedError {
    /// `line N` of the file.
    pub location: String,
    /// The column.
    pub column: String,
    /// The offending value.
    pub value: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads a seed CSV (see the module documentation for its columns).
pub fn parse_seed_csv(text: &str) -> Result<Vec<SeedContact>, SeedError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(text.as_bytes());
    let bad = |line: u64, column: &str, value: &str, reason: &str| SeedError {
        location: format!("line {line}"),
        column: column.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(1, "", "", &e.to_string()))?
        .iter()
        .map(|h| h.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let column = |name: &str| header.iter().position(|h| h == name);
    let known = [
        "first_name",
        "last_name",
        "company",
        "role",
        "email",
        "work_email",
        "phone",
        "mobile",
    ];
    if !known.iter().any(|name| column(name).is_some()) {
        return Err(bad(
            1,
            "",
            &header.join(","),
            "the header names none of first_name, last_name, company, role, email, work_email, phone, mobile",
        ));
    }
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row.map_err(|e| bad(0, "", "", &e.to_string()))?;
        let line = row.position().map_or(0, |p| p.line());
        let cell = |name: &str| {
            column(name)
                .and_then(|i| row.get(i))
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        if row.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        let mut emails = Vec::new();
        for (name, label) in [("email", "email"), ("work_email", "work")] {
            if let Some(value) = cell(name) {
                if !value.contains('@') {
                    return Err(bad(line, name, value, "not an email address"));
                }
                emails.push(json!({"name": label, "value": value}));
            }
        }
        let mut phones = Vec::new();
        for (name, label) in [("phone", "phone"), ("mobile", "mobile")] {
            if let Some(value) = cell(name) {
                let e164 = crate::mapping::normalize_phone(value, "US")
                    .map_err(|reason| bad(line, name, value, &reason))?;
                phones.push(json!({"name": label, "value": e164}));
            }
        }
        let mut body = json!({
            "defaultFields": {
                "firstName": cell("first_name").unwrap_or(""),
                "lastName": cell("last_name"),
                "company": cell("company"),
                "role": cell("role"),
                "emails": emails,
                "phoneNumbers": phones,
            },
        });
        if let Some(notes) = cell("notes") {
            body["customFields"] = json!([{"key": "notes", "value": notes}]);
        }
        if let Some(external_id) = cell("external_id") {
            body["externalId"] = json!(external_id);
        }
        out.push(SeedContact {
            body,
            source: cell("source").unwrap_or_default().to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_app_integration_and_native_contacts() {
        let seeds = parse_seed_csv(
            "crm_id,first_name,last_name,email,phone,notes,source,external_id\n\
             x,Ada,Lovelace,ada@example.com,(415) 555-0132,met at the fair,,\n\
             y,Zed,Zapped,,415 555 0199,,zapier,zap-7\n\
             ,,,,,,,\n\
             z,Hub,Spotted,hub@example.com,,,hubspot,\n",
        )
        .unwrap();
        assert_eq!(seeds.len(), 3, "the blank row is skipped");
        assert_eq!(seeds[0].source, "");
        assert_eq!(
            seeds[0].body["defaultFields"]["phoneNumbers"][0]["value"],
            "+14155550132"
        );
        assert_eq!(seeds[0].body["customFields"][0]["value"], "met at the fair");
        assert_eq!(seeds[1].source, "zapier");
        assert_eq!(seeds[1].body["externalId"], "zap-7");
        assert_eq!(seeds[2].source, "hubspot");
    }

    #[test]
    fn a_bad_row_names_its_line_column_and_value() {
        let err = parse_seed_csv("first_name,phone\nAda,555-CALL-NOW\n").unwrap_err();
        assert_eq!(err.location, "line 2");
        assert_eq!(err.column, "phone");
        assert_eq!(err.value, "555-CALL-NOW");
        assert!(parse_seed_csv("id,name\n1,x\n").is_err(), "no known column");
    }
}
