use super::*;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Item {
    product_id: String,
    quantity: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Order {
    items: Vec<Item>,
    note: Option<String>,
}

impl Body for Order {
    fn rule_errors(self) -> FieldErrors {
        let mut errors = FieldErrors::default();
        if self.note.is_some_and(|note| note.trim().is_empty()) {
            errors.add("note", "must not be blank");
        }
        errors
    }
}

fn errors(body: &str) -> (ErrorCode, serde_json::Value) {
    let err = parse::<Order>(body.as_bytes()).unwrap_err();
    let problem = serde_json::to_value(err.problem()).unwrap();
    (err.code(), problem["errors"].clone())
}

#[test]
fn integers_may_be_written_with_a_zero_fraction() {
    #[derive(Debug, Deserialize)]
    struct Counted {
        #[serde(deserialize_with = "integer")]
        n: i64,
        #[serde(default, deserialize_with = "optional_integer")]
        m: Option<i64>,
    }
    impl Body for Counted {}
    let read = |body: &str| parse::<Counted>(body.as_bytes()).map(|c| (c.n, c.m));
    assert_eq!(read(r#"{"n": 36}"#).unwrap(), (36, None));
    assert_eq!(read(r#"{"n": 36.0, "m": -2.0}"#).unwrap(), (36, Some(-2)));
    assert_eq!(read(r#"{"n": 1e2, "m": null}"#).unwrap(), (100, None));
    for bad in [r#"{"n": 36.5}"#, r#"{"n": "36"}"#, r#"{"n": 1e300}"#, r#"{"n": 1, "m": 0.5}"#] {
        let err = read(bad).unwrap_err();
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
}

#[test]
fn field_errors_name_the_field_by_its_path() {
    let (code, e) = errors(r#"{"items":[{"product_id":"a","quantity":1},{"product_id":"b","quantity":-1}]}"#);
    assert_eq!(code, ErrorCode::ValidationFailed);
    assert_eq!(e["items[1].quantity"][0], "invalid value: integer `-1`, expected u8");

    let (_, e) = errors(r#"{"items":[{"product_id":"a"}]}"#);
    assert_eq!(e, serde_json::json!({"items[0].quantity": ["is required"]}));

    let (_, e) = errors(r#"{"items":[],"role":"admin"}"#);
    assert_eq!(e, serde_json::json!({"role": ["is not a known field"]}));

    let (_, e) = errors(r#"{}"#);
    assert_eq!(e, serde_json::json!({"items": ["is required"]}));
}

#[test]
fn every_field_that_does_not_read_is_named_at_once_with_the_rules_the_others_break() {
    let (code, e) = errors(
        r#"{"items":[{"product_id":5,"quantity":"two"},{"quantity":1,"colour":"red"}],"role":"admin","note":" "}"#,
    );
    assert_eq!(code, ErrorCode::ValidationFailed);
    assert_eq!(
        e,
        serde_json::json!({
            "items[0].product_id": ["invalid type: integer `5`, expected a string"],
            "items[0].quantity": ["invalid type: string \"two\", expected u8"],
            "items[1].colour": ["is not a known field"],
            "items[1].product_id": ["is required"],
            "role": ["is not a known field"],
            "note": ["must not be blank"],
        })
    );
    // A missing object is one error, not one per field of it.
    let (_, e) = errors(r#"{"note":7}"#);
    assert_eq!(
        e,
        serde_json::json!({"items": ["is required"], "note": ["invalid type: integer `7`, expected a string"]})
    );
    // A body that reads is left to its handler: the rules are not checked here.
    assert!(parse::<Order>(br#"{"items":[],"note":" "}"#).is_ok());
}

#[test]
fn syntax_errors_and_non_objects_are_bad_requests() {
    for body in ["{", "", "{\"items\":[]} trailing", "[1,2]", "null", &"[".repeat(1000)] {
        let err = parse::<Order>(body.as_bytes()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest, "{body:.20}");
    }
    // An unknown field before the syntax error, or before bytes that are not UTF-8:
    // still malformed, not a field problem.
    for body in [&b"{\"role\": "[..], b"{\"role\": \"\xff\"}", b"{\"role\": 1, \"items\": [}"] {
        let err = parse::<Order>(body).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest, "{}", String::from_utf8_lossy(body));
    }
}

#[test]
fn forwarded_for_takes_the_gateway_entry() {
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", "6.6.6.6, 10.0.0.7".parse().unwrap());
    assert_eq!(forwarded_for(&headers), Some("10.0.0.7".parse().unwrap()));
    headers.insert("x-forwarded-for", "garbage".parse().unwrap());
    assert_eq!(forwarded_for(&headers), None);
}

#[test]
fn json_content_types() {
    let mut headers = HeaderMap::new();
    assert!(!is_json(&headers));
    headers.insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
    assert!(is_json(&headers));
    headers.insert(header::CONTENT_TYPE, "application/merge-patch+json".parse().unwrap());
    assert!(is_json(&headers));
    headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    assert!(!is_json(&headers));
}
