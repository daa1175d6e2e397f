//! Typed request and response bodies of the Quo contacts API, as the v1 OpenAPI spec defines
//! them (`docs/quo-openapi-v1-contacts.json`). Field names follow the wire (camelCase).

use serde::{Deserialize, Serialize};

/// `{"data": …}`: the envelope of every single-object response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataEnvelope<T> {
    /// The object itself.
    pub data: T,
}

/// A page of `GET /v1/contacts`; `totalItems` is documented as inaccurate and ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactPage {
    /// The contacts on this page (`null` entries dropped).
    #[serde(deserialize_with = "skip_nulls")]
    pub data: Vec<Contact>,
    /// Token for the next page, `null` on the last one.
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One custom field definition from `GET /v1/contact-custom-fields`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomFieldDef {
    /// Display name, what operators write in the mapping.
    pub name: String,
    /// Identifying key used in contact bodies.
    pub key: String,
    /// One of `CustomFieldType`'s wire names.
    #[serde(rename = "type")]
    pub field_type: CustomFieldType,
}

/// The value type of a custom field.
///
/// Quo may add types; an unknown wire name parses as [`CustomFieldType::Unknown`] (quo-api.md,
/// decision 8) so one new type never makes a contact unreadable. Values of unknown types are
/// kept as read and never written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CustomFieldType {
    /// JSON string.
    Address,
    /// JSON boolean.
    Boolean,
    /// ISO-8601 date-time string.
    Date,
    /// Array of strings.
    MultiSelect,
    /// JSON number.
    Number,
    /// JSON string.
    String,
    /// JSON string holding a URL.
    Url,
    /// A type this version does not know, with its wire name.
    Unknown(std::string::String),
}

impl CustomFieldType {
    /// The wire name, e.g. `multi-select`.
    pub fn wire_name(&self) -> &str {
        match self {
            CustomFieldType::Address => "address",
            CustomFieldType::Boolean => "boolean",
            CustomFieldType::Date => "date",
            CustomFieldType::MultiSelect => "multi-select",
            CustomFieldType::Number => "number",
            CustomFieldType::String => "string",
            CustomFieldType::Url => "url",
            CustomFieldType::Unknown(name) => name,
        }
    }

    /// The type for a wire name; never fails (unknown names become `Unknown`).
    pub fn from_wire(name: &str) -> Self {
        match name {
            "address" => CustomFieldType::Address,
            "boolean" => CustomFieldType::Boolean,
            "date" => CustomFieldType::Date,
            "multi-select" => CustomFieldType::MultiSelect,
            "number" => CustomFieldType::Number,
            "string" => CustomFieldType::String,
            "url" => CustomFieldType::Url,
            other => CustomFieldType::Unknown(other.to_string()),
        }
    }

    /// Whether quo-sync knows how to write values of this type.
    pub fn is_writable(&self) -> bool {
        !matches!(self, CustomFieldType::Unknown(_))
    }
}

impl Serialize for CustomFieldType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.wire_name())
    }
}

impl<'de> Deserialize<'de> for CustomFieldType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::string::String::deserialize(deserializer)?;
        Ok(CustomFieldType::from_wire(&name))
    }
}

/// A list that may be `null` or hold `null`s (decision 8): nulls are dropped, not fatal.
fn skip_nulls<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let items: Option<Vec<Option<T>>> = Option::deserialize(deserializer)?;
    Ok(items.unwrap_or_default().into_iter().flatten().collect())
}

/// A string that may be `null`; `null` reads as empty.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<std::string::String, D::Error> {
    Ok(Option::<std::string::String>::deserialize(deserializer)?.unwrap_or_default())
}

/// An email or phone item as Quo returns or accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactItem {
    /// Quo's item id; present in responses, sent back in PATCH to address the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The label (`null` in a response reads as empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub name: String,
    /// The value; `null` in a PATCH removes the item.
    #[serde(default)]
    pub value: Option<String>,
}

/// `defaultFields` of a contact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultFields {
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
    /// Company.
    #[serde(default)]
    pub company: Option<String>,
    /// Role.
    #[serde(default)]
    pub role: Option<String>,
    /// Emails (`null` entries in a response are dropped).
    #[serde(default, deserialize_with = "skip_nulls")]
    pub emails: Vec<ContactItem>,
    /// Phone numbers (`null` entries in a response are dropped).
    #[serde(default, deserialize_with = "skip_nulls")]
    pub phone_numbers: Vec<ContactItem>,
}

/// A custom field value on a contact as Quo returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactCustomField {
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Key; the spec makes it optional in responses (`normalize_contact` fills it from the name).
    #[serde(default)]
    pub key: Option<String>,
    /// Item id.
    #[serde(default)]
    pub id: Option<String>,
    /// Field type; `None` when Quo leaves it out (`normalize_contact` fills it).
    #[serde(rename = "type", default)]
    pub field_type: Option<CustomFieldType>,
    /// The value in the type's JSON form.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// A contact as Quo returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    /// Quo's id.
    pub id: String,
    /// The CRM id we sent on create.
    #[serde(default)]
    pub external_id: Option<String>,
    /// Who created it (`quo-sync` for ours).
    #[serde(default)]
    pub source: Option<String>,
    /// Link back to the CRM record.
    #[serde(default)]
    pub source_url: Option<String>,
    /// Name, company, role, emails, phones.
    #[serde(default)]
    pub default_fields: DefaultFields,
    /// Custom field values (`null` entries in a response are dropped).
    #[serde(default, deserialize_with = "skip_nulls")]
    pub custom_fields: Vec<ContactCustomField>,
    /// ISO-8601 creation time.
    #[serde(default)]
    pub created_at: Option<String>,
    /// ISO-8601 last-modified time.
    #[serde(default)]
    pub updated_at: Option<String>,
    /// The user it was created by.
    #[serde(default)]
    pub created_by_user_id: Option<String>,
}

/// A custom field value in a create or update body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomFieldValue {
    /// The field's key.
    pub key: String,
    /// The value in the type's JSON form.
    pub value: serde_json::Value,
}

/// Body of `POST /v1/contacts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateContact {
    /// Default fields; `firstName` is required by the spec.
    pub default_fields: DefaultFields,
    /// Custom field values.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub custom_fields: Vec<CustomFieldValue>,
    /// The CRM id.
    pub external_id: String,
    /// Our configured source label.
    pub source: String,
    /// Optional link to the CRM record.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_url: Option<String>,
}

/// `defaultFields` of a PATCH: every key optional, absent keys untouched.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchDefaultFields {
    /// New first name (`Some(None)` clears it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_name: Option<Option<String>>,
    /// New last name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_name: Option<Option<String>>,
    /// New company.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub company: Option<Option<String>>,
    /// New role.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub role: Option<Option<String>>,
    /// The complete desired email list (ids kept, removals as `value: null`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub emails: Option<Vec<ContactItem>>,
    /// The complete desired phone list.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub phone_numbers: Option<Vec<ContactItem>>,
}

/// Body of `PATCH /v1/contacts/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PatchContact {
    /// Changed default fields.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub default_fields: Option<PatchDefaultFields>,
    /// Every custom field value the contact has, managed or not (safe under replace semantics).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub custom_fields: Option<Vec<CustomFieldValue>>,
    /// A new `externalId` (an adoption sets the record's; `Some(None)` clears it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub external_id: Option<Option<String>>,
    /// A new `source` (an adoption sets ours; `Some(None)` clears it).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<Option<String>>,
    /// A new `sourceUrl` (an adoption sets the record's, when configured).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source_url: Option<Option<String>>,
}

/// Quo's v1 error body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human message.
    #[serde(default)]
    pub message: String,
    /// Quo's error code, e.g. `0801400`.
    #[serde(default)]
    pub code: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// Title, e.g. `Invalid Custom Field Item`.
    #[serde(default)]
    pub title: String,
    /// Field-level details.
    #[serde(default)]
    pub errors: Vec<ErrorDetail>,
}

/// One field-level validation failure in an `ErrorBody`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// JSON path of the offending value, e.g. `/defaultFields/phoneNumbers/0/value`.
    #[serde(default)]
    pub path: String,
    /// What is wrong.
    #[serde(default)]
    pub message: String,
    /// The offending value.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}
