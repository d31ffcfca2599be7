//! JSON on serde_json: parsing an answer into a [`Value`] (serde_json refuses nesting deeper
//! than 128 levels with an error, so hostile depth cannot overflow the stack; the size of what
//! it reads is bounded by the HTTP layer's body limit), and the one reading rule serde_json
//! does not know: etcd's gateway writes int64 fields as strings.

pub use serde_json::Value;

/// Parses a whole document; the error says where it went wrong.
pub fn parse(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))
}

/// An integer written as a number or, as etcd's gateway writes int64, as a decimal string.
pub fn int64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string member of an object.
pub fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_takes_numbers_and_decimal_strings() {
        let v = parse(r#"{"a":"7587","b":12,"c":"x","d":1.5,"e":"99999999999999999999"}"#).unwrap();
        assert_eq!(int64(&v["a"]), Some(7587));
        assert_eq!(int64(&v["b"]), Some(12));
        assert_eq!(int64(&v["c"]), None);
        assert_eq!(int64(&v["d"]), None);
        assert_eq!(int64(&v["e"]), None);
        assert_eq!(str_at(&v, "c"), Some("x"));
        assert_eq!(str_at(&v, "b"), None);
    }

    #[test]
    fn hostile_documents_are_errors() {
        let deep = "[".repeat(100_000);
        assert!(parse(&deep).is_err());
        for bad in ["", "{", "[1,]", "\"\\ud800\"x", "nul", "{\"a\":1}}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
