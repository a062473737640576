//! Column values to JSON.
//!
//! Events carry JSON, and pgoutput sends every value as PostgreSQL's text output. The type
//! OID decides the JSON shape: numbers and booleans become JSON numbers and booleans, `json`
//! and `jsonb` are embedded as documents, and everything whose text form is the only exact
//! form (`numeric`, timestamps, `uuid`, arrays, user types…) stays a string, so no precision
//! or time zone is lost on the way.

use serde_json::{Number, Value};

use super::error::DecodeError;
use super::message::{Oid, RelationColumn, TupleValue};

/// OIDs of the built-in types the JSON conversion treats specially (from `pg_type.dat`;
/// built-in OIDs never change).
pub mod type_oid {
    use super::Oid;

    /// `bool`
    pub const BOOL: Oid = Oid(16);
    /// `bytea`
    pub const BYTEA: Oid = Oid(17);
    /// `int8` (`bigint`)
    pub const INT8: Oid = Oid(20);
    /// `int2` (`smallint`)
    pub const INT2: Oid = Oid(21);
    /// `int4` (`integer`)
    pub const INT4: Oid = Oid(23);
    /// `text`
    pub const TEXT: Oid = Oid(25);
    /// `json`
    pub const JSON: Oid = Oid(114);
    /// `float4` (`real`)
    pub const FLOAT4: Oid = Oid(700);
    /// `float8` (`double precision`)
    pub const FLOAT8: Oid = Oid(701);
    /// `bpchar` (`char(n)`)
    pub const BPCHAR: Oid = Oid(1042);
    /// `varchar`
    pub const VARCHAR: Oid = Oid(1043);
    /// `date`
    pub const DATE: Oid = Oid(1082);
    /// `timestamp` (without time zone)
    pub const TIMESTAMP: Oid = Oid(1114);
    /// `timestamptz`
    pub const TIMESTAMPTZ: Oid = Oid(1184);
    /// `numeric`
    pub const NUMERIC: Oid = Oid(1700);
    /// `uuid`
    pub const UUID: Oid = Oid(2950);
    /// `jsonb`
    pub const JSONB: Oid = Oid(3802);
}

/// The JSON form of one column value, or `None` for an unchanged TOAST value (the server did
/// not send it, so there is nothing to put in its place).
///
/// - NULL → `null`
/// - `bool` → `true`/`false`
/// - `int2`, `int4`, `int8` → integer
/// - `float4`, `float8` → number; `NaN` and `±Infinity`, which JSON cannot hold, → string
/// - `json`, `jsonb` → the parsed document
/// - everything else (`numeric`, `text`, `varchar`, `uuid`, timestamps, arrays, …) → the text
///   exactly as PostgreSQL printed it
///
/// # Errors
///
/// [`DecodeError::InvalidValue`] if a value does not parse as its type (a server never sends
/// that), and [`DecodeError::BinaryValue`] for values in binary format.
pub fn value_to_json(
    column: &RelationColumn,
    value: &TupleValue,
) -> Result<Option<Value>, DecodeError> {
    let text = match value {
        TupleValue::Null => return Ok(Some(Value::Null)),
        TupleValue::UnchangedToast => return Ok(None),
        TupleValue::Binary(_) => {
            return Err(DecodeError::BinaryValue {
                column: column.name.clone(),
                type_oid: column.type_oid,
            });
        }
        TupleValue::Text(text) => text,
    };
    let invalid = |expected: &'static str| DecodeError::InvalidValue {
        column: column.name.clone(),
        type_oid: column.type_oid,
        value: text.chars().take(64).collect(),
        expected,
    };
    let json = match column.type_oid {
        type_oid::BOOL => match text.as_str() {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(invalid("boolean ('t' or 'f')")),
        },
        type_oid::INT2 | type_oid::INT4 | type_oid::INT8 => {
            Value::Number(text.parse::<i64>().map_err(|_| invalid("integer"))?.into())
        }
        type_oid::FLOAT4 | type_oid::FLOAT8 => {
            let number: f64 = text.parse().map_err(|_| invalid("floating-point number"))?;
            // NaN and the infinities have no JSON number; keep PostgreSQL's spelling.
            Number::from_f64(number).map_or_else(|| Value::String(text.clone()), Value::Number)
        }
        type_oid::JSON | type_oid::JSONB => {
            serde_json::from_str(text).map_err(|_| invalid("JSON document"))?
        }
        _ => Value::String(text.clone()),
    };
    Ok(Some(json))
}

/// Appends the JSON form of one column value to `out`, exactly as [`value_to_json`] would
/// give it (JSON documents are appended as the server printed them, after a check that they
/// parse), without building a [`Value`]: the capture writes every row this way. Returns
/// `false`, appending nothing, for an unchanged TOAST value.
///
/// # Errors
///
/// As [`value_to_json`].
pub(crate) fn write_value_json(
    column: &RelationColumn,
    value: &TupleValue,
    out: &mut String,
) -> Result<bool, DecodeError> {
    let text = match value {
        TupleValue::Null => {
            out.push_str("null");
            return Ok(true);
        }
        TupleValue::UnchangedToast => return Ok(false),
        TupleValue::Binary(_) => {
            return Err(DecodeError::BinaryValue {
                column: column.name.clone(),
                type_oid: column.type_oid,
            });
        }
        TupleValue::Text(text) => text,
    };
    let invalid = |expected: &'static str| DecodeError::InvalidValue {
        column: column.name.clone(),
        type_oid: column.type_oid,
        value: text.chars().take(64).collect(),
        expected,
    };
    match column.type_oid {
        type_oid::BOOL => match text.as_str() {
            "t" => out.push_str("true"),
            "f" => out.push_str("false"),
            _ => return Err(invalid("boolean ('t' or 'f')")),
        },
        type_oid::INT2 | type_oid::INT4 | type_oid::INT8 => {
            let number: i64 = text.parse().map_err(|_| invalid("integer"))?;
            out.push_str(&number.to_string());
        }
        type_oid::FLOAT4 | type_oid::FLOAT8 => {
            let number: f64 = text.parse().map_err(|_| invalid("floating-point number"))?;
            match Number::from_f64(number) {
                Some(number) => out.push_str(&number.to_string()),
                None => write_json_string(text, out),
            }
        }
        type_oid::JSON | type_oid::JSONB => {
            serde_json::from_str::<&serde_json::value::RawValue>(text)
                .map_err(|_| invalid("JSON document"))?;
            out.push_str(text.trim());
        }
        _ => write_json_string(text, out),
    }
    Ok(true)
}

/// Appends `text` as a JSON string.
pub(crate) fn write_json_string(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('"');
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < ' ') {
        out.push_str(&rest[..at]);
        let c = rest[at..].chars().next().unwrap_or(' ');
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push_str(&format!("\\u{:04x}", u32::from(c))),
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.push_str(rest);
    out.push('"');
}
