//! Stored responses, the pure part: expanding a request that refers to earlier responses
//! (`previous_response_id`) or earlier items (`item_reference`) into the whole conversation,
//! before [`super::request::responses_to_chat`] converts it.
//!
//! Where the earlier responses live is the caller's business: it passes look-up functions,
//! already limited to what the caller may see (another user's response is simply not found).
//! The rules follow the Responses API:
//! - `previous_response_id` → that response's input items, then its output items, then the
//!   request's own `input` (a string input is one user message);
//! - `{"type":"item_reference","id":…}` → the item with that id, wherever it is stored;
//! - an unknown response id is a 404 `previous_response_not_found`, an unknown item id a 404
//!   naming the item; nothing is silently dropped.
//!
//! Uses: nothing else of this crate and serde_json.

use serde_json::{json, Map, Value};

use super::request::RequestError;

/// `input` as a list of items: a string is one user message; anything else is left to the
/// request converter to judge (`None` when `input` is neither a string nor an array).
pub fn input_items(body: &Map<String, Value>) -> Option<Vec<Value>> {
    match body.get("input") {
        Some(Value::String(text)) => Some(vec![user_text_message(text)]),
        Some(Value::Array(items)) => Some(items.clone()),
        None | Some(Value::Null) => Some(Vec::new()),
        Some(_) => None,
    }
}

/// A user message item carrying `text`.
pub fn user_text_message(text: &str) -> Value {
    json!({
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": text}]
    })
}

/// The 404 the Responses API answers for a response id it does not have (or that is not the
/// caller's).
pub fn previous_response_not_found(id: &str) -> RequestError {
    RequestError {
        status: 404,
        message: format!("Previous response with id '{id}' not found."),
        param: Some("previous_response_id".into()),
        code: Some("previous_response_not_found"),
    }
}

/// The 404 for an `item_reference` whose item is not stored (never was, expired, evicted, or
/// another user's).
pub fn item_not_found(id: &str, path: &str) -> RequestError {
    RequestError {
        status: 404,
        message: format!(
            "Item with id '{id}' not found. Stored items expire or are evicted when the \
             proxy's store is full; send the full item instead of a reference."
        ),
        param: Some(path.to_string()),
        code: Some("item_not_found"),
    }
}

/// Rewrites `body` so that it needs no stored state: `input` becomes the full list of items
/// (previous response's input and output first, references resolved) and
/// `previous_response_id` is removed. Returns the previous response id, if there was one.
///
/// `previous` gives a stored response's input and output items, concatenated; `item` gives a
/// stored item by id. Both answer only for what the caller may see.
pub fn expand_request(
    body: &mut Value,
    previous: impl FnOnce(&str) -> Option<Vec<Value>>,
    mut item: impl FnMut(&str) -> Option<Value>,
) -> Result<Option<String>, RequestError> {
    let Some(req) = body.as_object_mut() else {
        return Ok(None);
    };
    let previous_id = match req.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(_) => {
            return Err(RequestError {
                status: 400,
                message: "`previous_response_id` must be a string.".into(),
                param: Some("previous_response_id".into()),
                code: Some("invalid_type"),
            })
        }
    };
    let has_reference = matches!(req.get("input"), Some(Value::Array(items))
        if items.iter().any(|i| i.get("type").and_then(Value::as_str) == Some("item_reference")));
    if previous_id.is_none() && !has_reference {
        return Ok(None);
    }
    let Some(new_items) = input_items(req) else {
        // Not a string or an array: the converter names the problem.
        return Ok(previous_id);
    };
    let mut expanded = match &previous_id {
        Some(id) => previous(id).ok_or_else(|| previous_response_not_found(id))?,
        None => Vec::new(),
    };
    for (i, new_item) in new_items.into_iter().enumerate() {
        if new_item.get("type").and_then(Value::as_str) != Some("item_reference") {
            expanded.push(new_item);
            continue;
        }
        let path = format!("input[{i}]");
        let Some(id) = new_item.get("id").and_then(Value::as_str) else {
            return Err(RequestError {
                status: 400,
                message: "An `item_reference` needs a string `id`.".into(),
                param: Some(format!("{path}.id")),
                code: Some("invalid_value"),
            });
        };
        expanded.push(item(id).ok_or_else(|| item_not_found(id, &path))?);
    }
    req.insert("input".into(), Value::Array(expanded));
    req.remove("previous_response_id");
    Ok(previous_id)
}

/// Whether a request asks for its response to be stored (`store` defaults to true, as in the
/// Responses API).
pub fn wants_store(body: &Value) -> bool {
    body.get("store").and_then(Value::as_bool).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, role: &str, text: &str) -> Value {
        json!({"type": "message", "id": id, "role": role, "content": [{"type": "input_text", "text": text}]})
    }

    #[test]
    fn previous_response_comes_first_then_the_new_input() {
        let mut body = json!({"model": "m", "previous_response_id": "resp_1", "input": "again"});
        let stored = vec![msg("m1", "user", "hi"), msg("m2", "assistant", "hello")];
        let prev = expand_request(
            &mut body,
            |id| (id == "resp_1").then(|| stored.clone()),
            |_| None,
        )
        .unwrap();
        assert_eq!(prev.as_deref(), Some("resp_1"));
        assert!(body.get("previous_response_id").is_none());
        let input = body["input"].as_array().unwrap();
        assert_eq!(input.len(), 3);
        assert_eq!(input[0]["id"], "m1");
        assert_eq!(input[1]["id"], "m2");
        assert_eq!(input[2]["content"][0]["text"], "again");
    }

    #[test]
    fn unknown_previous_response_is_the_openai_404() {
        let mut body = json!({"model": "m", "previous_response_id": "resp_x", "input": []});
        let err = expand_request(&mut body, |_| None, |_| None).unwrap_err();
        assert_eq!(err.status, 404);
        assert_eq!(err.code, Some("previous_response_not_found"));
        assert_eq!(err.param.as_deref(), Some("previous_response_id"));
        assert_eq!(
            serde_json::from_str::<Value>(&err.to_body()).unwrap(),
            json!({"error": {"message": "Previous response with id 'resp_x' not found.",
                "type": "invalid_request_error", "param": "previous_response_id",
                "code": "previous_response_not_found"}})
        );
    }

    #[test]
    fn item_references_are_replaced_in_place_or_named_when_missing() {
        let stored = msg("m1", "user", "first");
        let mut body = json!({"model": "m", "input": [
            {"type": "item_reference", "id": "m1"},
            msg("m3", "user", "second"),
        ]});
        let prev = expand_request(
            &mut body,
            |_| None,
            |id| (id == "m1").then(|| stored.clone()),
        )
        .unwrap();
        assert_eq!(prev, None);
        assert_eq!(body["input"][0], stored);
        assert_eq!(body["input"][1]["id"], "m3");

        let mut body = json!({"model": "m", "input": [msg("a", "user", "x"), {"type": "item_reference", "id": "gone"}]});
        let err = expand_request(&mut body, |_| None, |_| None).unwrap_err();
        assert_eq!(err.status, 404);
        assert_eq!(err.param.as_deref(), Some("input[1]"));
        assert!(err.message.contains("'gone'"), "{}", err.message);

        let mut body = json!({"model": "m", "input": [{"type": "item_reference"}]});
        let err = expand_request(&mut body, |_| None, |_| None).unwrap_err();
        assert_eq!(err.status, 400);
        assert_eq!(err.param.as_deref(), Some("input[0].id"));
    }

    #[test]
    fn requests_without_state_are_left_alone() {
        let original = json!({"model": "m", "input": "hi", "previous_response_id": null});
        let mut body = original.clone();
        assert_eq!(
            expand_request(&mut body, |_| panic!(), |_| panic!()).unwrap(),
            None
        );
        assert_eq!(body, original);
        assert!(wants_store(&json!({})));
        assert!(!wants_store(&json!({"store": false})));
    }
}
