//! Chat Completions request → Responses API request.
//!
//! Decisions where the mapping leaves room:
//! - Every `system` and `developer` message becomes a `developer` message input item at its
//!   place in the conversation (none is dropped or moved). `instructions` is left to the
//!   caller ([`ConvertContext::instructions`]) because the ChatGPT Codex endpoint accepts only
//!   its own instructions text.
//! - Assistant `tool_calls` → `function_call` items, `tool` messages → `function_call_output`
//!   items, in order; a `tool` message whose `tool_call_id` no earlier assistant message issued
//!   is a 400 (the upstream would reject the pair anyway, less clearly).
//! - The deprecated `functions`/`function_call` fields and `function` role are 400s: the
//!   response side speaks `tool_calls` only, which such clients would not read.
//! - Fields the Responses API cannot honour are 400s instead of silent surprises: `n` > 1,
//!   non-empty `stop`, `logprobs: true`. Sampling knobs without an equivalent
//!   (`presence_penalty`, `frequency_penalty`, `seed`, `logit_bias`, `user`, `metadata`,
//!   `store`) are ignored.
//! - Reasoning: settings < model-name suffix < `reasoning_effort` < `reasoning` object.
//!   Effort strings from the body pass verbatim (the upstream knows which it supports);
//!   a summary of `"none"` leaves the key out.
//!
//! Uses: nothing else of this crate and serde_json.

use serde_json::{json, Map, Value};

use super::settings::resolve_model;
use super::{ClientMeta, ConvertContext, ResponsesPlan, WrapperError};

type Object = Map<String, Value>;

/// Converts a Chat Completions request body into the upstream Responses request.
pub fn chat_to_responses(
    body: &Value,
    ctx: &ConvertContext,
) -> Result<ResponsesPlan, WrapperError> {
    let body = body
        .as_object()
        .ok_or_else(|| WrapperError::invalid("body", "the request body must be a JSON object"))?;
    reject_legacy_functions(body)?;
    let input = convert_messages(body.get("messages"))?;
    let (mut upstream, client) = base_request(body, ctx, input)?;
    add_tools(body, &mut upstream)?;
    add_text_options(body, &mut upstream)?;
    if present(body, "logprobs").and_then(Value::as_bool) == Some(true) {
        return Err(WrapperError::invalid(
            "logprobs",
            "`logprobs` is not supported by this endpoint",
        ));
    }
    Ok(ResponsesPlan {
        upstream_body: Value::Object(upstream),
        client,
    })
}

/// A field's value unless it is absent or `null`.
pub(crate) fn present<'a>(body: &'a Object, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// The fields every wrapper route shares: model, reasoning, streaming, sampling, token limit,
/// and the fixed upstream options. `input` is the converted conversation.
pub(crate) fn base_request(
    body: &Object,
    ctx: &ConvertContext,
    input: Vec<Value>,
) -> Result<(Object, ClientMeta), WrapperError> {
    let requested_model = match present(body, "model") {
        None => "",
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err(WrapperError::invalid("model", "`model` must be a string")),
    };
    let resolved = resolve_model(requested_model, ctx.settings.debug_model.as_deref());
    reject_multiple_choices(body)?;
    reject_stop(body)?;

    let mut upstream = Object::new();
    upstream.insert("model".into(), Value::String(resolved.upstream.clone()));
    if let Some(instructions) = ctx.instructions {
        upstream.insert("instructions".into(), instructions.into());
    }
    upstream.insert("input".into(), Value::Array(input));
    upstream.insert("stream".into(), Value::Bool(true));
    upstream.insert("store".into(), Value::Bool(false));
    let effort = resolved
        .effort_from_name
        .unwrap_or(ctx.settings.effort)
        .as_str();
    upstream.insert("reasoning".into(), reasoning(body, ctx, effort)?);
    upstream.insert("include".into(), json!(["reasoning.encrypted_content"]));
    if let Some(session) = ctx.session_id {
        upstream.insert("prompt_cache_key".into(), session.into());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = present(body, key) {
            if !v.is_number() {
                return Err(WrapperError::invalid(
                    key,
                    format!("`{key}` must be a number"),
                ));
            }
            upstream.insert(key.into(), v.clone());
        }
    }
    if let Some(limit) = max_output_tokens(body)? {
        upstream.insert("max_output_tokens".into(), limit.into());
    }

    let client = ClientMeta {
        stream: client_wants_stream(body)?,
        include_usage: include_usage(body)?,
        model: resolved.upstream,
    };
    Ok((upstream, client))
}

fn reject_multiple_choices(body: &Object) -> Result<(), WrapperError> {
    match present(body, "n") {
        None => Ok(()),
        Some(v) if v.as_u64() == Some(1) => Ok(()),
        Some(_) => Err(WrapperError::invalid(
            "n",
            "only `n: 1` is supported: the Responses API returns one answer per request",
        )),
    }
}

fn reject_stop(body: &Object) -> Result<(), WrapperError> {
    let empty = match present(body, "stop") {
        None => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if empty {
        return Ok(());
    }
    Err(WrapperError::invalid(
        "stop",
        "`stop` sequences are not supported: the Responses API has no equivalent",
    ))
}

fn client_wants_stream(body: &Object) -> Result<bool, WrapperError> {
    match present(body, "stream") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(WrapperError::invalid(
            "stream",
            "`stream` must be a boolean",
        )),
    }
}

fn include_usage(body: &Object) -> Result<bool, WrapperError> {
    let Some(options) = present(body, "stream_options") else {
        return Ok(false);
    };
    let options = options.as_object().ok_or_else(|| {
        WrapperError::invalid("stream_options", "`stream_options` must be an object")
    })?;
    match present(options, "include_usage") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(WrapperError::invalid(
            "stream_options.include_usage",
            "`stream_options.include_usage` must be a boolean",
        )),
    }
}

/// `max_completion_tokens` (preferred) or `max_tokens`, a positive integer.
fn max_output_tokens(body: &Object) -> Result<Option<u64>, WrapperError> {
    for key in ["max_completion_tokens", "max_tokens"] {
        if let Some(v) = present(body, key) {
            return match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(WrapperError::invalid(
                    key,
                    format!("`{key}` must be a positive integer"),
                )),
            };
        }
    }
    Ok(None)
}

/// The `reasoning` object: settings < name suffix (`effort`) < `reasoning_effort` <
/// `reasoning.{effort,summary}`.
fn reasoning(body: &Object, ctx: &ConvertContext, effort: &str) -> Result<Value, WrapperError> {
    let mut effort = effort.to_string();
    let mut summary = ctx.settings.summary.as_request_value().map(str::to_string);
    if let Some(v) = present(body, "reasoning_effort") {
        effort = non_empty_string(v, "reasoning_effort")?;
    }
    if let Some(r) = present(body, "reasoning") {
        let r = r
            .as_object()
            .ok_or_else(|| WrapperError::invalid("reasoning", "`reasoning` must be an object"))?;
        if let Some(v) = present(r, "effort") {
            effort = non_empty_string(v, "reasoning.effort")?;
        }
        if let Some(v) = present(r, "summary") {
            let s = non_empty_string(v, "reasoning.summary")?;
            summary = (s != "none").then_some(s);
        }
    }
    let mut out = Object::new();
    out.insert("effort".into(), effort.into());
    if let Some(s) = summary {
        out.insert("summary".into(), s.into());
    }
    Ok(Value::Object(out))
}

fn non_empty_string(v: &Value, param: &str) -> Result<String, WrapperError> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => Err(WrapperError::invalid(
            param,
            format!("`{param}` must be a non-empty string"),
        )),
    }
}

fn reject_legacy_functions(body: &Object) -> Result<(), WrapperError> {
    for key in ["functions", "function_call"] {
        if present(body, key).is_some() {
            return Err(WrapperError::invalid(
                key,
                format!("the deprecated `{key}` field is not supported; use `tools`/`tool_choice`"),
            ));
        }
    }
    Ok(())
}

/// `messages` → Responses input items, order kept.
fn convert_messages(messages: Option<&Value>) -> Result<Vec<Value>, WrapperError> {
    let messages = match messages {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(WrapperError::invalid(
                "messages",
                "`messages` must not be empty",
            ))
        }
        Some(v) if !v.is_null() => {
            return Err(WrapperError::invalid(
                "messages",
                "`messages` must be an array",
            ))
        }
        _ => return Err(WrapperError::invalid("messages", "`messages` is required")),
    };
    let mut items = Vec::with_capacity(messages.len());
    let mut issued_call_ids: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let message = message
            .as_object()
            .ok_or_else(|| WrapperError::invalid(&at, format!("`{at}` must be an object")))?;
        let role = match message.get("role") {
            Some(Value::String(r)) => r.as_str(),
            _ => {
                return Err(WrapperError::invalid(
                    format!("{at}.role"),
                    format!("`{at}.role` must be a string"),
                ))
            }
        };
        match role {
            "system" | "developer" => {
                let parts = content_parts(message, &at, PartRole::Instruction)?;
                items.push(message_item("developer", parts));
            }
            "user" => {
                let parts = content_parts(message, &at, PartRole::User)?;
                items.push(message_item("user", parts));
            }
            "assistant" => assistant_items(message, &at, &mut items, &mut issued_call_ids)?,
            "tool" => items.push(tool_output_item(message, &at, &issued_call_ids)?),
            other => {
                return Err(WrapperError::invalid(
                    format!("{at}.role"),
                    format!(
                        "unsupported role {other:?} in `{at}.role`; expected system, developer, user, assistant or tool"
                    ),
                ))
            }
        }
    }
    Ok(items)
}

fn message_item(role: &str, content: Vec<Value>) -> Value {
    json!({"type": "message", "role": role, "content": content})
}

/// Which content part types a role may send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PartRole {
    Instruction,
    User,
    Assistant,
}

impl PartRole {
    fn text_type(self) -> &'static str {
        match self {
            PartRole::Assistant => "output_text",
            _ => "input_text",
        }
    }
}

/// `content` (a string, an array of parts, or null) → Responses content parts.
fn content_parts(message: &Object, at: &str, role: PartRole) -> Result<Vec<Value>, WrapperError> {
    let param = format!("{at}.content");
    match message.get("content") {
        Some(Value::String(text)) => Ok(vec![json!({"type": role.text_type(), "text": text})]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| content_part(part, &format!("{param}[{j}]"), role))
            .collect(),
        None | Some(Value::Null) if role == PartRole::Assistant => Ok(Vec::new()),
        None | Some(Value::Null) => Err(WrapperError::invalid(
            &param,
            format!("`{param}` is required"),
        )),
        Some(_) => Err(WrapperError::invalid(
            &param,
            format!("`{param}` must be a string or an array of content parts"),
        )),
    }
}

fn content_part(part: &Value, param: &str, role: PartRole) -> Result<Value, WrapperError> {
    let part = part
        .as_object()
        .ok_or_else(|| WrapperError::invalid(param, format!("`{param}` must be an object")))?;
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match (kind, role) {
        ("text", _) => {
            let text = required_str(part, "text", param)?;
            Ok(json!({"type": role.text_type(), "text": text}))
        }
        ("refusal", PartRole::Assistant) => {
            let refusal = required_str(part, "refusal", param)?;
            Ok(json!({"type": "refusal", "refusal": refusal}))
        }
        ("image_url", PartRole::User) => image_part(part, param),
        ("file", PartRole::User) => file_part(part, param),
        _ => Err(WrapperError::invalid(
            format!("{param}.type"),
            format!("unsupported content part type {kind:?} in `{param}`"),
        )),
    }
}

fn required_str<'a>(obj: &'a Object, key: &str, at: &str) -> Result<&'a str, WrapperError> {
    obj.get(key).and_then(Value::as_str).ok_or_else(|| {
        WrapperError::invalid(
            format!("{at}.{key}"),
            format!("`{at}.{key}` must be a string"),
        )
    })
}

/// `{type: image_url, image_url: {url, detail}}` (or `image_url` as a bare string) →
/// `{type: input_image, image_url, detail}`.
fn image_part(part: &Object, param: &str) -> Result<Value, WrapperError> {
    let (url, detail) = match part.get("image_url") {
        Some(Value::String(url)) => (url.as_str(), None),
        Some(Value::Object(image)) => (
            required_str(image, "url", &format!("{param}.image_url"))?,
            image.get("detail").and_then(Value::as_str),
        ),
        _ => {
            return Err(WrapperError::invalid(
                format!("{param}.image_url"),
                format!("`{param}.image_url` must be an object with a `url`"),
            ))
        }
    };
    Ok(json!({"type": "input_image", "image_url": url, "detail": detail.unwrap_or("auto")}))
}

/// `{type: file, file: {file_id | file_data, filename}}` → `{type: input_file, …}`.
fn file_part(part: &Object, param: &str) -> Result<Value, WrapperError> {
    let file = part.get("file").and_then(Value::as_object).ok_or_else(|| {
        WrapperError::invalid(
            format!("{param}.file"),
            format!("`{param}.file` must be an object"),
        )
    })?;
    let mut out = Object::new();
    out.insert("type".into(), "input_file".into());
    for key in ["file_id", "file_data", "filename"] {
        if let Some(Value::String(v)) = file.get(key) {
            out.insert(key.into(), v.clone().into());
        }
    }
    if out.len() == 1 {
        return Err(WrapperError::invalid(
            format!("{param}.file"),
            format!("`{param}.file` needs `file_id` or `file_data`"),
        ));
    }
    Ok(Value::Object(out))
}

/// An assistant message: its text (if any) as an assistant message item, then one
/// `function_call` item per tool call.
fn assistant_items(
    message: &Object,
    at: &str,
    items: &mut Vec<Value>,
    issued_call_ids: &mut Vec<String>,
) -> Result<(), WrapperError> {
    if present(message, "function_call").is_some() {
        return Err(WrapperError::invalid(
            format!("{at}.function_call"),
            "the deprecated assistant `function_call` is not supported; use `tool_calls`",
        ));
    }
    let parts = content_parts(message, at, PartRole::Assistant)?;
    if !parts.is_empty() {
        items.push(message_item("assistant", parts));
    }
    let calls = match present(message, "tool_calls") {
        None => return Ok(()),
        Some(Value::Array(calls)) => calls,
        Some(_) => {
            return Err(WrapperError::invalid(
                format!("{at}.tool_calls"),
                format!("`{at}.tool_calls` must be an array"),
            ))
        }
    };
    for (k, call) in calls.iter().enumerate() {
        let param = format!("{at}.tool_calls[{k}]");
        let call = call
            .as_object()
            .ok_or_else(|| WrapperError::invalid(&param, format!("`{param}` must be an object")))?;
        let id = required_str(call, "id", &param)?;
        let function = call
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                WrapperError::invalid(
                    format!("{param}.function"),
                    format!("`{param}.function` must be an object"),
                )
            })?;
        let name = required_str(function, "name", &format!("{param}.function"))?;
        let arguments = match function.get("arguments") {
            None | Some(Value::Null) => "{}",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(WrapperError::invalid(
                    format!("{param}.function.arguments"),
                    format!("`{param}.function.arguments` must be a JSON string"),
                ))
            }
        };
        issued_call_ids.push(id.to_string());
        items.push(json!({
            "type": "function_call",
            "call_id": id,
            "name": name,
            "arguments": arguments,
        }));
    }
    Ok(())
}

/// A `tool` message → `function_call_output {call_id, output}`.
fn tool_output_item(
    message: &Object,
    at: &str,
    issued_call_ids: &[String],
) -> Result<Value, WrapperError> {
    let call_id = required_str(message, "tool_call_id", at)?;
    if !issued_call_ids.iter().any(|id| id == call_id) {
        return Err(WrapperError::invalid(
            format!("{at}.tool_call_id"),
            format!(
                "`{at}.tool_call_id` {call_id:?} does not match a tool call of an earlier assistant message"
            ),
        ));
    }
    let param = format!("{at}.content");
    let output = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let at_part = format!("{param}[{j}]");
                let part = part
                    .as_object()
                    .filter(|p| p.get("type") == Some(&json!("text")));
                let part = part.ok_or_else(|| {
                    WrapperError::invalid(&at_part, format!("`{at_part}` must be a text part"))
                })?;
                text.push_str(required_str(part, "text", &at_part)?);
            }
            text
        }
        _ => {
            return Err(WrapperError::invalid(
                &param,
                format!("`{param}` must be a string or an array of text parts"),
            ))
        }
    };
    Ok(json!({"type": "function_call_output", "call_id": call_id, "output": output}))
}

/// `tools`, `tool_choice`, `parallel_tool_calls`.
fn add_tools(body: &Object, upstream: &mut Object) -> Result<(), WrapperError> {
    if let Some(tools) = present(body, "tools") {
        let tools = tools
            .as_array()
            .ok_or_else(|| WrapperError::invalid("tools", "`tools` must be an array"))?;
        let converted = tools
            .iter()
            .enumerate()
            .map(|(i, tool)| convert_tool(tool, &format!("tools[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        if !converted.is_empty() {
            upstream.insert("tools".into(), Value::Array(converted));
        }
    }
    if let Some(choice) = present(body, "tool_choice") {
        upstream.insert("tool_choice".into(), convert_tool_choice(choice)?);
    }
    if let Some(parallel) = present(body, "parallel_tool_calls") {
        if !parallel.is_boolean() {
            return Err(WrapperError::invalid(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be a boolean",
            ));
        }
        upstream.insert("parallel_tool_calls".into(), parallel.clone());
    }
    Ok(())
}

/// `{type: function, function: {name, description, parameters, strict}}` → the flat
/// Responses form `{type: function, name, description, parameters, strict}`.
fn convert_tool(tool: &Value, param: &str) -> Result<Value, WrapperError> {
    let tool = tool
        .as_object()
        .ok_or_else(|| WrapperError::invalid(param, format!("`{param}` must be an object")))?;
    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "function" {
        return Err(WrapperError::invalid(
            format!("{param}.type"),
            format!(
                "unsupported tool type {kind:?} in `{param}`; only `function` tools are supported"
            ),
        ));
    }
    let function = tool
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            WrapperError::invalid(
                format!("{param}.function"),
                format!("`{param}.function` must be an object"),
            )
        })?;
    let name = required_str(function, "name", &format!("{param}.function"))?;
    let mut out = Object::new();
    out.insert("type".into(), "function".into());
    out.insert("name".into(), name.into());
    for key in ["description", "parameters", "strict"] {
        if let Some(v) = present(function, key) {
            out.insert(key.into(), v.clone());
        }
    }
    if !out.contains_key("parameters") {
        out.insert(
            "parameters".into(),
            json!({"type": "object", "properties": {}}),
        );
    }
    Ok(Value::Object(out))
}

fn convert_tool_choice(choice: &Value) -> Result<Value, WrapperError> {
    let invalid = || {
        WrapperError::invalid(
            "tool_choice",
            "`tool_choice` must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}",
        )
    };
    match choice {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(obj) if obj.get("type") == Some(&json!("function")) => {
            let name = obj
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(invalid)?;
            Ok(json!({"type": "function", "name": name}))
        }
        _ => Err(invalid()),
    }
}

/// `response_format` → `text.format`, `verbosity` → `text.verbosity`.
fn add_text_options(body: &Object, upstream: &mut Object) -> Result<(), WrapperError> {
    let mut text = Object::new();
    if let Some(format) = present(body, "response_format") {
        text.insert("format".into(), convert_response_format(format)?);
    }
    if let Some(verbosity) = present(body, "verbosity") {
        text.insert(
            "verbosity".into(),
            non_empty_string(verbosity, "verbosity")?.into(),
        );
    }
    if !text.is_empty() {
        upstream.insert("text".into(), Value::Object(text));
    }
    Ok(())
}

fn convert_response_format(format: &Value) -> Result<Value, WrapperError> {
    let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" | "json_object" => Ok(json!({"type": kind})),
        "json_schema" => {
            let spec = format
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| {
                    WrapperError::invalid(
                        "response_format.json_schema",
                        "`response_format.json_schema` must be an object",
                    )
                })?;
            let name = required_str(spec, "name", "response_format.json_schema")?;
            let mut out = Object::new();
            out.insert("type".into(), "json_schema".into());
            out.insert("name".into(), name.into());
            for key in ["schema", "strict", "description"] {
                if let Some(v) = present(spec, key) {
                    out.insert(key.into(), v.clone());
                }
            }
            Ok(Value::Object(out))
        }
        _ => Err(WrapperError::invalid(
            "response_format.type",
            format!("unsupported `response_format.type` {kind:?}; expected text, json_object or json_schema"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::settings::{ReasoningEffort, ReasoningSummary, WrapperSettings};
    use super::*;

    fn convert_with(
        body: Value,
        settings: &WrapperSettings,
    ) -> Result<ResponsesPlan, WrapperError> {
        let ctx = ConvertContext {
            settings,
            session_id: Some("sess-1"),
            instructions: None,
        };
        chat_to_responses(&body, &ctx)
    }

    fn convert(body: Value) -> Result<ResponsesPlan, WrapperError> {
        convert_with(body, &WrapperSettings::default())
    }

    fn upstream(body: Value) -> Value {
        convert(body).unwrap().upstream_body
    }

    fn rejected(body: Value) -> WrapperError {
        let err = convert(body).unwrap_err();
        assert_eq!(err.status, 400);
        err
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn fixed_upstream_fields() {
        let up = upstream(json!({"model": "gpt5", "messages": [user("hi")]}));
        assert_eq!(up["model"], "gpt-5");
        assert_eq!(up["stream"], true);
        assert_eq!(up["store"], false);
        assert_eq!(up["include"], json!(["reasoning.encrypted_content"]));
        assert_eq!(up["prompt_cache_key"], "sess-1");
        assert_eq!(up["reasoning"], json!({"effort": "low", "summary": "auto"}));
        assert!(up.get("instructions").is_none());
        assert_eq!(
            up["input"],
            json!([{"type":"message","role":"user","content":[{"type":"input_text","text":"hi"}]}])
        );
    }

    #[test]
    fn instructions_come_from_the_context() {
        let settings = WrapperSettings::default();
        let ctx = ConvertContext {
            settings: &settings,
            session_id: None,
            instructions: Some("codex text"),
        };
        let plan = chat_to_responses(&json!({"messages": [user("x")]}), &ctx).unwrap();
        assert_eq!(plan.upstream_body["instructions"], "codex text");
        assert!(plan.upstream_body.get("prompt_cache_key").is_none());
    }

    #[test]
    fn every_system_and_developer_message_is_kept_in_order() {
        let up = upstream(json!({"messages": [
            {"role": "system", "content": "first"},
            user("q1"),
            {"role": "developer", "content": [{"type": "text", "text": "second"}]},
            {"role": "system", "content": "third"},
            user("q2"),
        ]}));
        let input = up["input"].as_array().unwrap();
        let summary: Vec<(String, String)> = input
            .iter()
            .map(|i| {
                (
                    i["role"].as_str().unwrap().to_string(),
                    i["content"][0]["text"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want = [
            ("developer", "first"),
            ("user", "q1"),
            ("developer", "second"),
            ("developer", "third"),
            ("user", "q2"),
        ];
        assert_eq!(summary.len(), want.len());
        for ((role, text), (want_role, want_text)) in summary.iter().zip(want) {
            assert_eq!((role.as_str(), text.as_str()), (want_role, want_text));
        }
    }

    #[test]
    fn user_parts_images_and_files() {
        let up = upstream(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "file", "file": {"file_id": "file-1"}},
        ]}]}));
        assert_eq!(
            up["input"][0]["content"],
            json!([
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "high"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "auto"},
                {"type": "input_file", "file_id": "file-1"},
            ])
        );
    }

    #[test]
    fn tool_call_round_trip_keeps_pairs_in_order() {
        let up = upstream(json!({"messages": [
            user("weather?"),
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get", "arguments": "{\"c\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "get", "arguments": "{\"c\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "rain"}]},
            {"role": "assistant", "content": "Paris sunny, Rome rain."},
        ]}));
        assert_eq!(
            up["input"],
            json!([
                {"type":"message","role":"user","content":[{"type":"input_text","text":"weather?"}]},
                {"type":"function_call","call_id":"call_a","name":"get","arguments":"{\"c\":\"Paris\"}"},
                {"type":"function_call","call_id":"call_b","name":"get","arguments":"{\"c\":\"Rome\"}"},
                {"type":"function_call_output","call_id":"call_a","output":"sunny"},
                {"type":"function_call_output","call_id":"call_b","output":"rain"},
                {"type":"message","role":"assistant","content":[{"type":"output_text","text":"Paris sunny, Rome rain."}]},
            ])
        );
    }

    #[test]
    fn tools_tool_choice_and_parallel_calls() {
        let up = upstream(json!({
            "messages": [user("x")],
            "tools": [{"type": "function", "function": {
                "name": "get", "description": "d", "strict": true,
                "parameters": {"type": "object", "properties": {"c": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "bare"}}],
            "tool_choice": {"type": "function", "function": {"name": "get"}},
            "parallel_tool_calls": false,
        }));
        assert_eq!(
            up["tools"][0],
            json!({"type":"function","name":"get","description":"d","strict":true,
                   "parameters":{"type":"object","properties":{"c":{"type":"string"}}}})
        );
        assert_eq!(
            up["tools"][1],
            json!({"type":"function","name":"bare","parameters":{"type":"object","properties":{}}})
        );
        assert_eq!(
            up["tool_choice"],
            json!({"type": "function", "name": "get"})
        );
        assert_eq!(up["parallel_tool_calls"], false);
        for choice in ["auto", "none", "required"] {
            let up = upstream(json!({"messages": [user("x")], "tool_choice": choice}));
            assert_eq!(up["tool_choice"], choice);
        }
    }

    #[test]
    fn response_formats_and_verbosity() {
        let with = |format: Value| {
            upstream(json!({"messages": [user("x")], "response_format": format}))["text"]["format"]
                .clone()
        };
        assert_eq!(with(json!({"type": "text"})), json!({"type": "text"}));
        assert_eq!(
            with(json!({"type": "json_object"})),
            json!({"type": "json_object"})
        );
        assert_eq!(
            with(
                json!({"type": "json_schema", "json_schema": {"name": "r", "strict": true,
                "schema": {"type": "object"}}})
            ),
            json!({"type": "json_schema", "name": "r", "strict": true, "schema": {"type": "object"}})
        );
        let up = upstream(json!({"messages": [user("x")], "verbosity": "low"}));
        assert_eq!(up["text"], json!({"verbosity": "low"}));
    }

    #[test]
    fn token_limits_and_sampling() {
        let up = upstream(json!({"messages": [user("x")], "max_tokens": 50,
            "temperature": 0.2, "top_p": 0.9}));
        assert_eq!(up["max_output_tokens"], 50);
        assert_eq!(up["temperature"], 0.2);
        assert_eq!(up["top_p"], 0.9);
        let up = upstream(json!({"messages": [user("x")], "max_tokens": 50,
            "max_completion_tokens": 70}));
        assert_eq!(up["max_output_tokens"], 70);
    }

    #[test]
    fn reasoning_precedence() {
        let settings = WrapperSettings {
            effort: ReasoningEffort::Medium,
            summary: ReasoningSummary::Detailed,
            ..WrapperSettings::default()
        };
        let reasoning =
            |body: Value| convert_with(body, &settings).unwrap().upstream_body["reasoning"].clone();
        assert_eq!(
            reasoning(json!({"messages": [user("x")]})),
            json!({"effort": "medium", "summary": "detailed"})
        );
        assert_eq!(
            reasoning(json!({"model": "gpt-5-high", "messages": [user("x")]}))["effort"],
            "high"
        );
        assert_eq!(
            reasoning(
                json!({"model": "gpt-5-high", "reasoning_effort": "minimal", "messages": [user("x")]})
            )["effort"],
            "minimal"
        );
        assert_eq!(
            reasoning(json!({"model": "gpt-5-high", "reasoning_effort": "minimal",
                "reasoning": {"effort": "low", "summary": "none"}, "messages": [user("x")]})),
            json!({"effort": "low"})
        );
        let none = WrapperSettings {
            summary: ReasoningSummary::None,
            ..WrapperSettings::default()
        };
        let up = convert_with(json!({"messages": [user("x")]}), &none)
            .unwrap()
            .upstream_body;
        assert_eq!(up["reasoning"], json!({"effort": "low"}));
    }

    #[test]
    fn client_meta_and_debug_model() {
        let plan = convert(
            json!({"model": "gpt5-high", "messages": [user("x")], "stream": true,
            "stream_options": {"include_usage": true}}),
        )
        .unwrap();
        assert_eq!(
            plan.client,
            ClientMeta {
                stream: true,
                include_usage: true,
                model: "gpt-5".into()
            }
        );
        assert_eq!(plan.upstream_body["model"], "gpt-5");
        let plan = convert(json!({"messages": [user("x")]})).unwrap();
        assert_eq!(
            plan.client,
            ClientMeta {
                stream: false,
                include_usage: false,
                model: "gpt-5".into()
            }
        );
        let debug = WrapperSettings {
            debug_model: Some("codex".into()),
            ..WrapperSettings::default()
        };
        let plan =
            convert_with(json!({"model": "gpt-5", "messages": [user("x")]}), &debug).unwrap();
        assert_eq!(plan.upstream_body["model"], "codex-mini-latest");
        assert_eq!(plan.client.model, "codex-mini-latest");
        let plan = convert_with(
            json!({"model": "gpt-5_high", "messages": [user("x")]}),
            &debug,
        )
        .unwrap();
        assert_eq!(plan.client.model, "codex-mini-latest");
        assert_eq!(plan.upstream_body["reasoning"]["effort"], "high");
    }

    #[test]
    fn unsupported_inputs_are_400_naming_the_field() {
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "body"),
            (json!({}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": [user("x")], "model": 5}), "model"),
            (json!({"messages": [user("x")], "n": 2}), "n"),
            (json!({"messages": [user("x")], "stop": ["\n"]}), "stop"),
            (
                json!({"messages": [user("x")], "logprobs": true}),
                "logprobs",
            ),
            (json!({"messages": [user("x")], "stream": "yes"}), "stream"),
            (
                json!({"messages": [user("x")], "stream_options": {"include_usage": 1}}),
                "stream_options.include_usage",
            ),
            (
                json!({"messages": [user("x")], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"messages": [user("x")], "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"messages": [user("x")], "reasoning_effort": 3}),
                "reasoning_effort",
            ),
            (
                json!({"messages": [user("x")], "reasoning": "high"}),
                "reasoning",
            ),
            (
                json!({"messages": [user("x")], "functions": []}),
                "functions",
            ),
            (json!({"messages": [user("x")], "tools": {}}), "tools"),
            (
                json!({"messages": [user("x")], "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"messages": [user("x")], "tools": [{"type": "function", "function": {}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"messages": [user("x")], "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"messages": [user("x")], "parallel_tool_calls": "yes"}),
                "parallel_tool_calls",
            ),
            (
                json!({"messages": [user("x")], "response_format": {"type": "yaml"}}),
                "response_format.type",
            ),
            (
                json!({"messages": [user("x")], "response_format": {"type": "json_schema"}}),
                "response_format.json_schema",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "function", "name": "f", "content": "x"}]}),
                "messages[0].role",
            ),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (json!({"messages": ["x"]}), "messages[0]"),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": 7}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}),
                "messages[0].content[0].type",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0].image_url",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages[0].content[0].text",
            ),
            (
                json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].tool_call_id",
            ),
            (
                json!({"messages": [{"role": "assistant", "function_call": {"name": "f"}}]}),
                "messages[0].function_call",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}]}),
                "messages[0].tool_calls[0].function.arguments",
            ),
        ];
        for (body, param) in cases {
            let err = rejected(body.clone());
            assert_eq!(
                err.param.as_deref(),
                Some(param),
                "for {body}: {}",
                err.message
            );
            assert!(
                err.message.contains('`') || err.message.contains("body"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn null_fields_count_as_absent() {
        let up = upstream(json!({"messages": [user("x")], "n": 1, "tools": null,
            "max_tokens": null, "stream": null, "logprobs": false, "stop": []}));
        assert!(up.get("tools").is_none() && up.get("max_output_tokens").is_none());
    }
}
