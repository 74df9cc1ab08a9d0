//! Responses request → Chat Completions request.
//!
//! [`responses_to_chat`] validates a Responses API request body and builds the body to send to a
//! chat-only upstream, plus the [`StreamMeta`] the stream converter needs on the way back (tool
//! name map, model, request fields echoed in every `Response` object). The upstream is always
//! asked to stream with usage, whatever the client asked; `ChatPlan::client_stream` says what
//! the client wants.
//!
//! Decisions where the wire formats leave room:
//! - `instructions`, `system` and `developer` messages become `system` messages in order;
//!   adjacent ones are merged into one (parts joined with a blank line), because many chat
//!   templates accept only one leading system message.
//! - Text-only message content is sent as a plain string (several upstreams reject part
//!   arrays); content with images is sent as parts.
//! - Namespaced functions are flattened to `{namespace}__{name}`; names that are not valid chat
//!   function names (`[a-zA-Z0-9_-]{1,64}`) or that collide get a deterministic hash suffix.
//!   Custom (freeform) tools become a function with one string argument `input`.
//! - Consecutive `function_call`/`custom_tool_call` items join the preceding assistant message
//!   (or start one); outputs become `tool` messages right after it. A call with no output gets a
//!   placeholder tool message, an output with no call is dropped, so the upstream never sees a
//!   broken pair. Images in tool outputs follow the tool messages as a user message.
//! - Reasoning items are dropped; their text (raw content if present, else the summary) is sent
//!   as `reasoning_content` on the next assistant message that carries tool calls (DeepSeek's
//!   thinking mode requires it there; elsewhere it is not sent).
//! - `previous_response_id` and `item_reference` items are expanded before conversion
//!   ([`super::stored::expand_request`]) and `compaction` items restored
//!   ([`super::compaction::restore_compaction_items`]); any left here, and `conversation`,
//!   `prompt`, `background: true`, need server-side state the bridge does not have: 400,
//!   never silently ignored.
//!
//! Uses: `api_error` and serde_json.

use std::collections::HashMap;
use std::fmt;

use serde_json::{json, Map, Value};

use crate::api_error::error_body;

/// A request the bridge cannot serve, with an OpenAI-style message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub status: u16,
    pub message: String,
    /// The offending field, e.g. `input[3].content`.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl RequestError {
    fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            status: 400,
            message: message.into(),
            param: Some(param.into()),
            code: Some("invalid_value"),
        }
    }

    fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            code: Some("unsupported_parameter"),
            ..Self::invalid(param, message)
        }
    }

    /// The OpenAI-style JSON error body to send with `status`.
    pub fn to_body(&self) -> String {
        error_body(
            &self.message,
            "invalid_request_error",
            self.code,
            self.param.as_deref(),
        )
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.param {
            Some(param) => write!(f, "{} (param {param})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for RequestError {}

/// Everything the bridge needs to serve one request.
#[derive(Debug, Clone)]
pub struct ChatPlan {
    /// The Chat Completions body to send upstream (`stream: true`, usage included). The caller
    /// may still rewrite `model`.
    pub chat_body: Value,
    /// Whether the client asked for a stream (`false`: answer with `final_response()`).
    pub client_stream: bool,
    /// What the stream converter needs.
    pub meta: StreamMeta,
    /// Types of tools with no chat equivalent that were left out (`web_search`, …).
    pub dropped_tools: Vec<String>,
    /// Other silent adaptations worth a debug log (dropped input items, repaired pairs).
    pub notes: Vec<String>,
}

/// What the stream converter needs to map the chat stream back to the Responses API.
#[derive(Debug, Clone, Default)]
pub struct StreamMeta {
    /// The model the client asked for, reported in every `Response` object.
    pub model: String,
    /// Chat function names → the Responses tools they stand for.
    pub tools: ToolNameMap,
    /// Request fields echoed in every `Response` object (`instructions`, `tools`,
    /// `tool_choice`, `parallel_tool_calls`, `temperature`, `top_p`, `max_output_tokens`,
    /// `reasoning`, `text`, `metadata`, `user`, `store`, `previous_response_id`).
    pub echo: Map<String, Value>,
    /// Treat content as reasoning until `</think>` even without an opening `<think>` (for
    /// upstreams whose chat template opens the think block in the prompt). Off by default:
    /// then only a `<think>` at the start of the content opens reasoning.
    pub assume_think_open: bool,
}

/// Which kind of Responses tool a chat function stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolKind {
    /// A JSON-argument function: calls come back as `function_call`.
    Function,
    /// A freeform tool: calls come back as `custom_tool_call` with the decoded `input`.
    Custom,
}

/// A Responses tool, as the client named it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolTarget {
    pub kind: ToolKind,
    pub namespace: Option<String>,
    pub name: String,
}

/// Two-way map between chat function names and Responses tools.
#[derive(Debug, Clone, Default)]
pub struct ToolNameMap {
    by_chat_name: HashMap<String, ToolTarget>,
    chat_name_of: HashMap<ToolTarget, String>,
}

/// The name of the single string argument of a freeform tool's chat function.
pub const CUSTOM_TOOL_ARGUMENT: &str = "input";

const MAX_TOOL_NAME_LEN: usize = 64;

impl ToolNameMap {
    /// The tool a chat function name stands for. Names the client never offered come back as
    /// plain functions of that name.
    pub fn resolve(&self, chat_name: &str) -> ToolTarget {
        self.by_chat_name
            .get(chat_name)
            .cloned()
            .unwrap_or_else(|| ToolTarget {
                kind: ToolKind::Function,
                namespace: None,
                name: chat_name.to_string(),
            })
    }

    /// The chat function name for a tool (registered, or encoded the same deterministic way).
    pub fn chat_name(&self, target: &ToolTarget) -> String {
        match self.chat_name_of.get(target) {
            Some(name) => name.clone(),
            None => encode_tool_name(target.namespace.as_deref(), &target.name),
        }
    }

    /// Number of registered tools.
    pub fn len(&self) -> usize {
        self.by_chat_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_chat_name.is_empty()
    }

    /// Registers a tool and returns its unique chat function name.
    fn register(&mut self, target: ToolTarget) -> String {
        if let Some(existing) = self.chat_name_of.get(&target) {
            return existing.clone();
        }
        let mut name = encode_tool_name(target.namespace.as_deref(), &target.name);
        if self.by_chat_name.contains_key(&name) {
            name = hashed_name(&name, &format!("{target:?}"));
        }
        let mut counter = 1u32;
        while self.by_chat_name.contains_key(&name) {
            let suffix = format!("_{counter}");
            name.truncate(MAX_TOOL_NAME_LEN - suffix.len());
            name.push_str(&suffix);
            counter += 1;
        }
        self.by_chat_name.insert(name.clone(), target.clone());
        self.chat_name_of.insert(target, name.clone());
        name
    }
}

/// `{namespace}__{name}` (or `name`), made valid for chat: `[a-zA-Z0-9_-]{1,64}`. A name that
/// had to be changed or shortened gets a hash of the original, so that distinct tools stay
/// distinct and the result is the same on every request.
pub fn encode_tool_name(namespace: Option<&str>, name: &str) -> String {
    let raw = match namespace {
        Some(ns) => format!("{ns}__{name}"),
        None => name.to_string(),
    };
    let valid_chars = raw
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid_chars && (1..=MAX_TOOL_NAME_LEN).contains(&raw.len()) {
        return raw;
    }
    let sanitized: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    hashed_name(&sanitized, &raw)
}

/// `prefix` shortened to leave room for `_` and 16 hex digits of a hash of `original`.
fn hashed_name(prefix: &str, original: &str) -> String {
    let keep = MAX_TOOL_NAME_LEN - 17;
    let mut name: String = prefix.chars().take(keep).collect();
    name.push_str(&format!("_{:016x}", fnv1a64(original.as_bytes())));
    name
}

/// FNV-1a: a stable hash (std's hasher is randomly seeded per process).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Converts a Responses API request body into the chat request plan.
pub fn responses_to_chat(body: &Value) -> Result<ChatPlan, RequestError> {
    let Some(req) = body.as_object() else {
        return Err(RequestError {
            status: 400,
            message: "The request body must be a JSON object.".into(),
            param: None,
            code: Some("invalid_json"),
        });
    };
    reject_stateful_fields(req)?;
    let model = required_str(req, "model")?.to_string();
    let client_stream = optional_bool(req, "stream")?.unwrap_or(false);

    let mut tools = ToolNameMap::default();
    let mut dropped_tools = Vec::new();
    let chat_tools = match req.get("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => convert_tools(list, &mut tools, &mut dropped_tools)?,
        Some(_) => return Err(RequestError::invalid("tools", "`tools` must be an array.")),
    };

    let mut notes = Vec::new();
    let mut history = History::default();
    if let Some(instructions) = optional_str(req, "instructions")? {
        history.push_system(instructions.to_string());
    }
    match req.get("input") {
        Some(Value::String(text)) => history.push_user(Value::String(text.clone())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                history.push_item(item, i, &tools)?;
            }
        }
        None | Some(Value::Null) => {
            return Err(RequestError::invalid(
                "input",
                "Missing required parameter: 'input'.",
            ))
        }
        Some(_) => {
            return Err(RequestError::invalid(
                "input",
                "`input` must be a string or an array of input items.",
            ))
        }
    }
    let messages = history.finish(&mut notes);

    let mut chat = Map::new();
    chat.insert("model".into(), Value::String(model.clone()));
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("stream".into(), Value::Bool(true));
    chat.insert("stream_options".into(), json!({ "include_usage": true }));
    let tool_choice = convert_tool_choice(req.get("tool_choice"), &tools)?;
    let parallel_tool_calls = optional_bool(req, "parallel_tool_calls")?;
    if !chat_tools.is_empty() {
        chat.insert("tools".into(), Value::Array(chat_tools));
        if let Some(choice) = tool_choice {
            chat.insert("tool_choice".into(), choice);
        }
        if let Some(parallel) = parallel_tool_calls {
            chat.insert("parallel_tool_calls".into(), Value::Bool(parallel));
        }
    }
    convert_sampling(req, &mut chat)?;
    convert_reasoning(req, &mut chat)?;
    convert_text_format(req, &mut chat)?;

    Ok(ChatPlan {
        chat_body: Value::Object(chat),
        client_stream,
        meta: StreamMeta {
            model,
            tools,
            echo: echo_fields(req),
            assume_think_open: false,
        },
        dropped_tools,
        notes,
    })
}

fn reject_stateful_fields(req: &Map<String, Value>) -> Result<(), RequestError> {
    for field in ["previous_response_id", "conversation", "prompt"] {
        if req.get(field).is_some_and(|v| !v.is_null()) {
            return Err(RequestError::unsupported(
                field,
                format!(
                    "`{field}` is not supported in bridge mode: the upstream keeps no state. \
                     Send the full conversation in `input` with store=false."
                ),
            ));
        }
    }
    if req.get("background") == Some(&Value::Bool(true)) {
        return Err(RequestError::unsupported(
            "background",
            "Background responses are not supported in bridge mode.",
        ));
    }
    Ok(())
}

fn required_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, RequestError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(Value::Null) => Err(RequestError::invalid(
            field,
            format!("Missing required parameter: '{field}'."),
        )),
        Some(_) => Err(RequestError::invalid(
            field,
            format!("`{field}` must be a non-empty string."),
        )),
    }
}

fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RequestError::invalid(
            field,
            format!("`{field}` must be a string."),
        )),
    }
}

fn optional_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, RequestError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RequestError::invalid(
            field,
            format!("`{field}` must be a boolean."),
        )),
    }
}

/// Prefixes a field path: `at("input[2]", "content")` → `input[2].content`.
fn at(path: &str, field: &str) -> String {
    format!("{path}.{field}")
}

// ---------------------------------------------------------------------------------- tools

fn convert_tools(
    list: &[Value],
    names: &mut ToolNameMap,
    dropped: &mut Vec<String>,
) -> Result<Vec<Value>, RequestError> {
    let mut chat_tools = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let path = format!("tools[{i}]");
        let obj = tool
            .as_object()
            .ok_or_else(|| RequestError::invalid(&path, "Each tool must be an object."))?;
        let kind = required_str(obj, "type").map_err(|e| reparam(e, &path))?;
        match kind {
            "function" | "custom" => {
                chat_tools.push(convert_one_tool(obj, None, None, names, &path)?);
            }
            "namespace" => {
                chat_tools.extend(convert_namespace(obj, names, &path)?);
            }
            other => dropped.push(other.to_string()),
        }
    }
    Ok(chat_tools)
}

/// Rewrites an error's `param` to sit under `path` (`type` → `tools[3].type`).
fn reparam(mut err: RequestError, path: &str) -> RequestError {
    err.param = Some(match err.param {
        Some(field) => at(path, &field),
        None => path.to_string(),
    });
    err
}

fn convert_namespace(
    obj: &Map<String, Value>,
    names: &mut ToolNameMap,
    path: &str,
) -> Result<Vec<Value>, RequestError> {
    let namespace = required_str(obj, "name").map_err(|e| reparam(e, path))?;
    let group_description = optional_str(obj, "description").map_err(|e| reparam(e, path))?;
    let Some(Value::Array(inner)) = obj.get("tools") else {
        return Err(RequestError::invalid(
            at(path, "tools"),
            "A namespace tool needs a `tools` array.",
        ));
    };
    let mut chat_tools = Vec::with_capacity(inner.len());
    for (j, tool) in inner.iter().enumerate() {
        let inner_path = format!("{path}.tools[{j}]");
        let inner_obj = tool
            .as_object()
            .ok_or_else(|| RequestError::invalid(&inner_path, "Each tool must be an object."))?;
        let kind = required_str(inner_obj, "type").map_err(|e| reparam(e, &inner_path))?;
        if kind != "function" && kind != "custom" {
            return Err(RequestError::invalid(
                at(&inner_path, "type"),
                format!("A namespace can hold `function` and `custom` tools, not `{kind}`."),
            ));
        }
        chat_tools.push(convert_one_tool(
            inner_obj,
            Some(namespace),
            group_description,
            names,
            &inner_path,
        )?);
    }
    Ok(chat_tools)
}

/// A `function` or `custom` tool (possibly inside a namespace) → one chat function.
fn convert_one_tool(
    obj: &Map<String, Value>,
    namespace: Option<&str>,
    group_description: Option<&str>,
    names: &mut ToolNameMap,
    path: &str,
) -> Result<Value, RequestError> {
    let name = required_str(obj, "name").map_err(|e| reparam(e, path))?;
    let description = optional_str(obj, "description").map_err(|e| reparam(e, path))?;
    let is_custom = obj.get("type").and_then(Value::as_str) == Some("custom");
    let target = ToolTarget {
        kind: if is_custom {
            ToolKind::Custom
        } else {
            ToolKind::Function
        },
        namespace: namespace.map(str::to_string),
        name: name.to_string(),
    };
    let chat_name = names.register(target);
    let mut description = description.unwrap_or_default().to_string();
    if let (Some(ns), Some(group)) = (namespace, group_description) {
        append_paragraph(&mut description, &format!("(Tool group `{ns}`: {group})"));
    }
    let mut function = Map::new();
    function.insert("name".into(), Value::String(chat_name));
    if is_custom {
        append_paragraph(
            &mut description,
            &custom_tool_instructions(obj.get("format")),
        );
        function.insert("parameters".into(), custom_tool_parameters());
    } else {
        let parameters = match obj.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(Value::Object(schema)) => Value::Object(schema.clone()),
            Some(_) => {
                return Err(RequestError::invalid(
                    at(path, "parameters"),
                    "`parameters` must be a JSON schema object.",
                ))
            }
        };
        function.insert("parameters".into(), parameters);
        if obj.get("strict") == Some(&Value::Bool(true)) {
            function.insert("strict".into(), Value::Bool(true));
        }
    }
    if !description.is_empty() {
        function.insert("description".into(), Value::String(description));
    }
    Ok(json!({"type": "function", "function": Value::Object(function)}))
}

fn append_paragraph(text: &mut String, paragraph: &str) {
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(paragraph);
}

fn custom_tool_instructions(format: Option<&Value>) -> String {
    let mut text = format!(
        "This tool takes freeform text, not JSON: put the raw text in the single string \
         argument `{CUSTOM_TOOL_ARGUMENT}`."
    );
    let grammar = format.and_then(|f| {
        let definition = f.get("definition")?.as_str()?;
        let syntax = f.get("syntax").and_then(Value::as_str).unwrap_or("grammar");
        Some((syntax, definition))
    });
    if let Some((syntax, definition)) = grammar {
        text.push_str(&format!(
            " The text must match this {syntax} grammar:\n```\n{definition}\n```"
        ));
    }
    text
}

fn custom_tool_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {
            CUSTOM_TOOL_ARGUMENT: {"type": "string", "description": "The raw freeform input."}
        },
        "required": [CUSTOM_TOOL_ARGUMENT],
        "additionalProperties": false
    })
}

/// `tool_choice` → chat `tool_choice`; `None` when it should be left out.
fn convert_tool_choice(
    choice: Option<&Value>,
    names: &ToolNameMap,
) -> Result<Option<Value>, RequestError> {
    let choice = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(choice) => choice,
    };
    if let Some(mode) = choice.as_str() {
        return match mode {
            "auto" | "none" | "required" => Ok(Some(Value::String(mode.to_string()))),
            _ => Err(RequestError::invalid(
                "tool_choice",
                format!("Invalid value for `tool_choice`: '{mode}'."),
            )),
        };
    }
    let Some(obj) = choice.as_object() else {
        return Err(RequestError::invalid(
            "tool_choice",
            "`tool_choice` must be a string or an object.",
        ));
    };
    let kind = obj.get("type").and_then(Value::as_str).unwrap_or_default();
    let tool_kind = match kind {
        "function" => ToolKind::Function,
        "custom" => ToolKind::Custom,
        "allowed_tools" => {
            let mode = obj.get("mode").and_then(Value::as_str).unwrap_or("auto");
            return convert_tool_choice(Some(&Value::String(mode.to_string())), names);
        }
        _ => {
            return Err(RequestError::unsupported(
                "tool_choice",
                format!("`tool_choice` of type '{kind}' is not supported in bridge mode."),
            ))
        }
    };
    let name = required_str(obj, "name").map_err(|e| reparam(e, "tool_choice"))?;
    let target = ToolTarget {
        kind: tool_kind,
        namespace: obj
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string),
        name: name.to_string(),
    };
    match names.chat_name_of.get(&target) {
        Some(chat_name) => Ok(Some(
            json!({"type": "function", "function": {"name": chat_name}}),
        )),
        None => Err(RequestError::invalid(
            "tool_choice.name",
            format!("`tool_choice` names the {kind} tool '{name}', which is not in `tools`."),
        )),
    }
}

// ------------------------------------------------------------------------- other fields

fn convert_sampling(
    req: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<(), RequestError> {
    for field in ["temperature", "top_p"] {
        match req.get(field) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                chat.insert(field.into(), v.clone());
            }
            Some(_) => {
                return Err(RequestError::invalid(
                    field,
                    format!("`{field}` must be a number."),
                ))
            }
        }
    }
    match req.get("max_output_tokens") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_u64().is_some_and(|n| n > 0) => {
            chat.insert("max_tokens".into(), v.clone());
        }
        Some(_) => {
            return Err(RequestError::invalid(
                "max_output_tokens",
                "`max_output_tokens` must be a positive integer.",
            ))
        }
    }
    if let Some(user) = optional_str(req, "user")? {
        chat.insert("user".into(), Value::String(user.to_string()));
    }
    Ok(())
}

fn convert_reasoning(
    req: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<(), RequestError> {
    match req.get("reasoning") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(reasoning)) => {
            if let Some(effort) =
                optional_str(reasoning, "effort").map_err(|e| reparam(e, "reasoning"))?
            {
                chat.insert("reasoning_effort".into(), Value::String(effort.to_string()));
            }
            Ok(())
        }
        Some(_) => Err(RequestError::invalid(
            "reasoning",
            "`reasoning` must be an object.",
        )),
    }
}

fn convert_text_format(
    req: &Map<String, Value>,
    chat: &mut Map<String, Value>,
) -> Result<(), RequestError> {
    let format = match req.get("text") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(text)) => match text.get("format") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(format)) => format,
            Some(_) => {
                return Err(RequestError::invalid(
                    "text.format",
                    "`text.format` must be an object.",
                ))
            }
        },
        Some(_) => return Err(RequestError::invalid("text", "`text` must be an object.")),
    };
    let kind = required_str(format, "type").map_err(|e| reparam(e, "text.format"))?;
    match kind {
        "text" => {}
        "json_object" => {
            chat.insert("response_format".into(), json!({"type": "json_object"}));
        }
        "json_schema" => {
            let name = required_str(format, "name").map_err(|e| reparam(e, "text.format"))?;
            let Some(schema @ Value::Object(_)) = format.get("schema") else {
                return Err(RequestError::invalid(
                    "text.format.schema",
                    "`text.format.schema` must be a JSON schema object.",
                ));
            };
            let mut json_schema = Map::new();
            json_schema.insert("name".into(), Value::String(name.to_string()));
            json_schema.insert("schema".into(), schema.clone());
            for field in ["strict", "description"] {
                if let Some(v) = format.get(field).filter(|v| !v.is_null()) {
                    json_schema.insert(field.into(), v.clone());
                }
            }
            chat.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": Value::Object(json_schema)}),
            );
        }
        other => {
            return Err(RequestError::invalid(
                "text.format.type",
                format!("Unsupported `text.format.type`: '{other}'."),
            ))
        }
    }
    Ok(())
}

/// The request fields a `Response` object repeats, with the API's defaults filled in.
fn echo_fields(req: &Map<String, Value>) -> Map<String, Value> {
    let mut echo = Map::new();
    let copy_or = |field: &str, default: Value| req.get(field).cloned().unwrap_or(default);
    echo.insert("instructions".into(), copy_or("instructions", Value::Null));
    let tools = match req.get("tools") {
        Some(v @ Value::Array(_)) => v.clone(),
        _ => Value::Array(Vec::new()),
    };
    echo.insert("tools".into(), tools);
    let tool_choice = match req.get("tool_choice") {
        None | Some(Value::Null) => Value::String("auto".into()),
        Some(v) => v.clone(),
    };
    echo.insert("tool_choice".into(), tool_choice);
    let parallel = req
        .get("parallel_tool_calls")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    echo.insert("parallel_tool_calls".into(), Value::Bool(parallel));
    for field in [
        "temperature",
        "top_p",
        "max_output_tokens",
        "reasoning",
        "text",
        "metadata",
        "user",
    ] {
        echo.insert(field.into(), copy_or(field, Value::Null));
    }
    echo.insert("store".into(), Value::Bool(false));
    echo.insert("previous_response_id".into(), Value::Null);
    echo
}

// ---------------------------------------------------------------------------- history

/// Input item types that only make sense with OpenAI's hosted tools or server state: dropped
/// with a note (the model simply does not see them).
const DROPPED_ITEM_TYPES: &[&str] = &[
    "web_search_call",
    "tool_search_call",
    "tool_search_output",
    "file_search_call",
    "image_generation_call",
    "code_interpreter_call",
    "computer_call",
    "computer_call_output",
    "local_shell_call",
    "local_shell_call_output",
    "shell_call",
    "shell_call_output",
    "apply_patch_call",
    "apply_patch_call_output",
    "mcp_call",
    "mcp_list_tools",
    "mcp_approval_request",
    "mcp_approval_response",
    "additional_tools",
];

const NO_OUTPUT_PLACEHOLDER: &str = "(no output was recorded for this tool call)";

/// Builds the chat `messages` array while keeping tool-call pairs intact.
#[derive(Default)]
struct History {
    messages: Vec<Value>,
    /// Call ids of the last assistant tool-call message that have no tool message yet.
    unanswered: Vec<String>,
    /// Whether the last message is an assistant message that tool calls may still join.
    assistant_open: bool,
    /// Images from tool outputs, sent as a user message once the tool messages are done.
    tool_images: Vec<Value>,
    /// Text of reasoning items seen since the last assistant tool-call message.
    reasoning: String,
    notes: Vec<String>,
}

/// Message content split into what chat can carry.
#[derive(Default)]
struct Content {
    texts: Vec<String>,
    images: Vec<Value>,
}

impl Content {
    fn joined_text(&self) -> String {
        self.texts.join("\n\n")
    }

    /// A plain string when there are no images, else a list of parts.
    fn into_chat(self) -> Value {
        if self.images.is_empty() {
            return Value::String(self.joined_text());
        }
        let mut parts: Vec<Value> = self
            .texts
            .into_iter()
            .map(|text| json!({"type": "text", "text": text}))
            .collect();
        parts.extend(self.images);
        Value::Array(parts)
    }
}

impl History {
    fn push_system(&mut self, text: String) {
        self.close_tool_block();
        self.reasoning.clear();
        if let Some(last) = self.messages.last_mut() {
            if last["role"] == "system" {
                if let Some(Value::String(existing)) = last.get_mut("content") {
                    append_paragraph(existing, &text);
                    return;
                }
            }
        }
        self.messages
            .push(json!({"role": "system", "content": text}));
    }

    fn push_user(&mut self, content: Value) {
        self.close_tool_block();
        self.reasoning.clear();
        self.messages
            .push(json!({"role": "user", "content": content}));
    }

    fn push_assistant_text(&mut self, text: String) {
        self.close_tool_block();
        self.messages
            .push(json!({"role": "assistant", "content": text}));
        self.assistant_open = true;
    }

    fn push_item(
        &mut self,
        item: &Value,
        i: usize,
        tools: &ToolNameMap,
    ) -> Result<(), RequestError> {
        let path = format!("input[{i}]");
        let Some(obj) = item.as_object() else {
            return Err(RequestError::invalid(
                &path,
                "Each input item must be an object.",
            ));
        };
        let kind = match obj.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            None | Some(Value::Null) if obj.contains_key("role") => "message",
            _ => {
                return Err(RequestError::invalid(
                    at(&path, "type"),
                    "Each input item needs a string `type`.",
                ))
            }
        };
        match kind {
            "message" => self.push_message(obj, &path),
            "function_call" => self.push_function_call(obj, &path, tools),
            "custom_tool_call" => self.push_custom_tool_call(obj, &path, tools),
            "function_call_output" | "custom_tool_call_output" => self.push_tool_output(obj, &path),
            "reasoning" => {
                self.push_reasoning(obj);
                Ok(())
            }
            "item_reference" => Err(RequestError::unsupported(
                &path,
                "`item_reference` input items need stored responses, which bridge mode does \
                 not have. Send the full items instead.",
            )),
            "compaction" | "compaction_summary" | "compaction_trigger" => {
                Err(RequestError::unsupported(
                    &path,
                    format!(
                        "A `{kind}` item cannot be sent to a chat upstream here: only this \
                         proxy's own compaction items are understood, and a \
                         `compaction_trigger` must be the last input item."
                    ),
                ))
            }
            other if DROPPED_ITEM_TYPES.contains(&other) => {
                self.notes.push(format!(
                    "{path}: dropped `{other}` item (no chat equivalent)"
                ));
                Ok(())
            }
            other => Err(RequestError::invalid(
                at(&path, "type"),
                format!("Unsupported input item type: '{other}'."),
            )),
        }
    }

    fn push_message(&mut self, obj: &Map<String, Value>, path: &str) -> Result<(), RequestError> {
        let role = required_str(obj, "role").map_err(|e| reparam(e, path))?;
        let content_path = at(path, "content");
        let content = match obj.get("content") {
            Some(content) => parse_content(content, &content_path)?,
            None => {
                return Err(RequestError::invalid(
                    content_path,
                    "Missing message content.",
                ))
            }
        };
        match role {
            "system" | "developer" | "assistant" if !content.images.is_empty() => {
                Err(RequestError::invalid(
                    content_path,
                    format!("{role} messages cannot carry images."),
                ))
            }
            "system" | "developer" => {
                self.push_system(content.joined_text());
                Ok(())
            }
            "user" => {
                self.push_user(content.into_chat());
                Ok(())
            }
            "assistant" => {
                self.push_assistant_text(content.joined_text());
                Ok(())
            }
            other => Err(RequestError::invalid(
                at(path, "role"),
                format!("Invalid message role: '{other}'."),
            )),
        }
    }

    fn push_function_call(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        tools: &ToolNameMap,
    ) -> Result<(), RequestError> {
        let call_id = required_str(obj, "call_id").map_err(|e| reparam(e, path))?;
        let name = required_str(obj, "name").map_err(|e| reparam(e, path))?;
        let namespace = optional_str(obj, "namespace").map_err(|e| reparam(e, path))?;
        let arguments = optional_str(obj, "arguments")
            .map_err(|e| reparam(e, path))?
            .unwrap_or("{}");
        let target = ToolTarget {
            kind: ToolKind::Function,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        };
        self.push_tool_call(call_id, tools.chat_name(&target), arguments.to_string());
        Ok(())
    }

    fn push_custom_tool_call(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
        tools: &ToolNameMap,
    ) -> Result<(), RequestError> {
        let call_id = required_str(obj, "call_id").map_err(|e| reparam(e, path))?;
        let name = required_str(obj, "name").map_err(|e| reparam(e, path))?;
        let namespace = optional_str(obj, "namespace").map_err(|e| reparam(e, path))?;
        let input = optional_str(obj, "input")
            .map_err(|e| reparam(e, path))?
            .unwrap_or_default();
        let target = ToolTarget {
            kind: ToolKind::Custom,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        };
        let arguments = json!({ CUSTOM_TOOL_ARGUMENT: input }).to_string();
        self.push_tool_call(call_id, tools.chat_name(&target), arguments);
        Ok(())
    }

    /// Adds a tool call to the open assistant message, or starts one.
    fn push_tool_call(&mut self, call_id: &str, chat_name: String, arguments: String) {
        if !self.assistant_open {
            self.close_tool_block();
            self.messages
                .push(json!({"role": "assistant", "content": Value::Null}));
            self.assistant_open = true;
        }
        let call = json!({
            "id": call_id,
            "type": "function",
            "function": {"name": chat_name, "arguments": arguments}
        });
        let reasoning = std::mem::take(&mut self.reasoning);
        let Some(Value::Object(message)) = self.messages.last_mut() else {
            return;
        };
        match message.get_mut("tool_calls") {
            Some(Value::Array(calls)) => calls.push(call),
            _ => {
                message.insert("tool_calls".into(), Value::Array(vec![call]));
            }
        }
        if !reasoning.is_empty() {
            match message.get_mut("reasoning_content") {
                Some(Value::String(existing)) => append_paragraph(existing, &reasoning),
                _ => {
                    message.insert("reasoning_content".into(), Value::String(reasoning));
                }
            }
        }
        self.unanswered.push(call_id.to_string());
    }

    fn push_tool_output(
        &mut self,
        obj: &Map<String, Value>,
        path: &str,
    ) -> Result<(), RequestError> {
        let call_id = required_str(obj, "call_id").map_err(|e| reparam(e, path))?;
        let output_path = at(path, "output");
        let output = match obj.get("output") {
            Some(Value::String(text)) => Content {
                texts: vec![text.clone()],
                images: Vec::new(),
            },
            Some(parts @ Value::Array(_)) => parse_content(parts, &output_path)?,
            _ => {
                return Err(RequestError::invalid(
                    output_path,
                    "`output` must be a string or an array of content parts.",
                ))
            }
        };
        let Some(pos) = self.unanswered.iter().position(|id| id == call_id) else {
            self.notes.push(format!(
                "{path}: dropped output for call '{call_id}', which has no preceding call"
            ));
            return Ok(());
        };
        self.unanswered.remove(pos);
        self.assistant_open = false;
        let text = output.joined_text();
        self.tool_images.extend(output.images);
        self.messages
            .push(json!({"role": "tool", "tool_call_id": call_id, "content": text}));
        Ok(())
    }

    fn push_reasoning(&mut self, obj: &Map<String, Value>) {
        let texts_of = |field: &str| -> Vec<&str> {
            obj.get(field)
                .and_then(Value::as_array)
                .map(|parts| {
                    parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .filter(|t| !t.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut texts = texts_of("content");
        if texts.is_empty() {
            texts = texts_of("summary");
        }
        for text in texts {
            append_paragraph(&mut self.reasoning, text);
        }
    }

    /// Answers calls that got no output and sends images from tool outputs.
    fn close_tool_block(&mut self) {
        self.assistant_open = false;
        for call_id in std::mem::take(&mut self.unanswered) {
            self.notes.push(format!(
                "call '{call_id}' had no output item; sent a placeholder tool message"
            ));
            self.messages.push(json!({
                "role": "tool",
                "tool_call_id": call_id,
                "content": NO_OUTPUT_PLACEHOLDER
            }));
        }
        if !self.tool_images.is_empty() {
            let mut parts =
                vec![json!({"type": "text", "text": "Images returned by the tool calls above:"})];
            parts.append(&mut self.tool_images);
            self.messages
                .push(json!({"role": "user", "content": Value::Array(parts)}));
        }
    }

    fn finish(mut self, notes: &mut Vec<String>) -> Vec<Value> {
        self.close_tool_block();
        notes.append(&mut self.notes);
        self.messages
    }
}

/// Message content (a string or a list of parts) → text and chat image parts.
fn parse_content(content: &Value, path: &str) -> Result<Content, RequestError> {
    let parts = match content {
        Value::String(text) => {
            return Ok(Content {
                texts: vec![text.clone()],
                images: Vec::new(),
            })
        }
        Value::Array(parts) => parts,
        _ => {
            return Err(RequestError::invalid(
                path,
                "Content must be a string or an array of content parts.",
            ))
        }
    };
    let mut content = Content::default();
    for (j, part) in parts.iter().enumerate() {
        let part_path = format!("{path}[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "input_text" | "output_text" | "text" | "summary_text" | "reasoning_text" => {
                content.texts.push(part_text(part, "text", &part_path)?);
            }
            "refusal" => content.texts.push(part_text(part, "refusal", &part_path)?),
            "input_image" => content.images.push(image_part(part, &part_path)?),
            "input_file" | "input_audio" => {
                return Err(RequestError::unsupported(
                    at(&part_path, "type"),
                    format!("`{kind}` content is not supported in bridge mode."),
                ))
            }
            _ => {
                return Err(RequestError::invalid(
                    at(&part_path, "type"),
                    format!("Unsupported content part type: '{kind}'."),
                ))
            }
        }
    }
    Ok(content)
}

fn part_text(part: &Value, field: &str, path: &str) -> Result<String, RequestError> {
    match part.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => Err(RequestError::invalid(
            at(path, field),
            format!("A content part needs a string `{field}`."),
        )),
    }
}

fn image_part(part: &Value, path: &str) -> Result<Value, RequestError> {
    let url = match part.get("image_url") {
        Some(Value::String(url)) if !url.is_empty() => url,
        _ if part.get("file_id").is_some_and(|v| !v.is_null()) => {
            return Err(RequestError::unsupported(
                at(path, "file_id"),
                "Images by `file_id` are not supported in bridge mode; send `image_url`.",
            ))
        }
        _ => {
            return Err(RequestError::invalid(
                at(path, "image_url"),
                "An `input_image` part needs an `image_url`.",
            ))
        }
    };
    let detail = part.get("detail").and_then(Value::as_str).unwrap_or("auto");
    Ok(json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODEX_PLAIN: &str =
        include_str!("../../../../tests/fixtures/codex-0.169.0/codex-request.json");
    const CODEX_TOOL_TURN2: &str =
        include_str!("../../../../tests/fixtures/codex-0.169.0/codex-request-tool-turn2.json");
    const CODEX_CUSTOM_TURN2: &str = include_str!(
        "../../../../tests/fixtures/codex-0.169.0/codex-request-custom-tool-turn2.json"
    );
    const CODEX_GPT55: &str =
        include_str!("../../../../tests/fixtures/codex-0.169.0/codex-request-gpt-5.5.json");

    fn codex_body(fixture: &str) -> Value {
        let recorded: Value = serde_json::from_str(fixture).expect("fixture is JSON");
        recorded["body"].clone()
    }

    fn plan_for(fixture: &str) -> ChatPlan {
        responses_to_chat(&codex_body(fixture)).expect("Codex request converts")
    }

    fn chat_tool_names(plan: &ChatPlan) -> Vec<String> {
        plan.chat_body["tools"]
            .as_array()
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn error_for(body: Value) -> RequestError {
        responses_to_chat(&body).expect_err("request is rejected")
    }

    #[test]
    fn codex_developer_messages_become_one_leading_system_message() {
        let body = codex_body(CODEX_PLAIN);
        let plan = plan_for(CODEX_PLAIN);
        let messages = plan.chat_body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0]["role"], "system");
        let system = messages[0]["content"].as_str().unwrap_or_default();
        let first = body["input"][0]["content"][0]["text"]
            .as_str()
            .unwrap_or("?");
        let skills = body["input"][1]["content"][0]["text"]
            .as_str()
            .unwrap_or("?");
        assert!(system.starts_with(first) && system.contains(skills));
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages[2], json!({"role": "user", "content": "Say hello"}));
        assert_eq!(plan.chat_body["stream"], true);
        assert_eq!(
            plan.chat_body["stream_options"],
            json!({"include_usage": true})
        );
        assert_eq!(plan.chat_body["tool_choice"], "auto");
        assert_eq!(plan.chat_body["parallel_tool_calls"], true);
        assert!(plan.client_stream);
        assert_eq!(plan.meta.model, "gpt-5.1-codex");
        for dropped in [
            "store",
            "include",
            "prompt_cache_key",
            "client_metadata",
            "reasoning",
            "text",
        ] {
            assert!(
                plan.chat_body.get(dropped).is_none(),
                "{dropped} is not sent"
            );
        }
        assert_eq!(plan.dropped_tools, ["web_search"]);
    }

    #[test]
    fn codex_tools_include_flattened_namespace_functions() {
        let plan = plan_for(CODEX_PLAIN);
        let names = chat_tool_names(&plan);
        for name in [
            "exec_command",
            "view_image",
            "multi_agent_v1__spawn_agent",
            "multi_agent_v1__wait_agent",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        let target = plan.meta.tools.resolve("multi_agent_v1__spawn_agent");
        assert_eq!(target.namespace.as_deref(), Some("multi_agent_v1"));
        assert_eq!(target.name, "spawn_agent");
        assert_eq!(target.kind, ToolKind::Function);
        let spawn = plan.chat_body["tools"]
            .as_array()
            .and_then(|t| {
                t.iter()
                    .find(|t| t["function"]["name"] == "multi_agent_v1__spawn_agent")
            })
            .cloned()
            .unwrap_or_default();
        assert!(spawn["function"]["parameters"]["properties"].is_object());
        assert!(spawn["function"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("multi_agent_v1")));
    }

    #[test]
    fn codex_custom_apply_patch_becomes_a_one_string_function() {
        let plan = plan_for(CODEX_CUSTOM_TURN2);
        let tools = plan.chat_body["tools"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let patch = tools
            .iter()
            .find(|t| t["function"]["name"] == "apply_patch")
            .cloned()
            .unwrap_or_default();
        let parameters = &patch["function"]["parameters"];
        assert_eq!(parameters["required"], json!(["input"]));
        assert_eq!(parameters["properties"]["input"]["type"], "string");
        let description = patch["function"]["description"]
            .as_str()
            .unwrap_or_default();
        assert!(description.contains("FREEFORM") && description.contains("begin_patch"));
        assert_eq!(
            plan.meta.tools.resolve("apply_patch").kind,
            ToolKind::Custom
        );
        assert_eq!(plan.dropped_tools, ["tool_search", "web_search"]);
        assert_eq!(plan.chat_body["reasoning_effort"], "medium");
    }

    #[test]
    fn codex_turn2_tool_call_and_output_stay_paired() {
        let plan = plan_for(CODEX_TOOL_TURN2);
        let messages = plan.chat_body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let n = messages.len();
        assert_eq!(
            messages[n - 2],
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_resp_mock_1", "type": "function",
                "function": {"name": "exec_command", "arguments": "{\"cmd\": \"echo mock-tool-ran\"}"}}]})
        );
        assert_eq!(messages[n - 1]["role"], "tool");
        assert_eq!(messages[n - 1]["tool_call_id"], "call_resp_mock_1");
        assert!(messages[n - 1]["content"]
            .as_str()
            .is_some_and(|c| c.contains("mock-tool-ran")));
    }

    #[test]
    fn codex_custom_tool_call_and_output_are_re_encoded() {
        let plan = plan_for(CODEX_CUSTOM_TURN2);
        let messages = plan.chat_body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let n = messages.len();
        let call = &messages[n - 2]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "apply_patch");
        let arguments: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(
            arguments,
            json!({"input": "*** Begin Patch\n*** Add File: hello.txt\n+hi from mock\n*** End Patch\n"})
        );
        assert_eq!(messages[n - 1]["role"], "tool");
        assert_eq!(messages[n - 1]["tool_call_id"], "call_resp_mock_1");
        assert!(messages[n - 1]["content"]
            .as_str()
            .is_some_and(|c| c.contains("A hello.txt")));
    }

    #[test]
    fn every_codex_fixture_converts() {
        for fixture in [
            CODEX_PLAIN,
            CODEX_TOOL_TURN2,
            CODEX_CUSTOM_TURN2,
            CODEX_GPT55,
        ] {
            let plan = plan_for(fixture);
            assert!(plan.chat_body["messages"]
                .as_array()
                .is_some_and(|m| !m.is_empty()));
            assert_eq!(plan.meta.echo["store"], false);
            assert!(plan.meta.echo["tools"].is_array());
        }
    }

    #[test]
    fn namespaced_and_custom_calls_round_trip_through_chat_names() {
        let body = json!({
            "model": "m", "input": [
                {"type": "function_call", "call_id": "c1", "namespace": "multi_agent_v1",
                 "name": "spawn_agent", "arguments": "{}"},
                {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "raw \"text\""},
                {"type": "function_call_output", "call_id": "c1", "output": "spawned"},
                {"type": "custom_tool_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "ok"}]}
            ],
            "tools": [
                {"type": "namespace", "name": "multi_agent_v1", "description": "d",
                 "tools": [{"type": "function", "name": "spawn_agent"}]},
                {"type": "custom", "name": "apply_patch"}
            ]
        });
        let plan = responses_to_chat(&body).expect("converts");
        let messages = plan.chat_body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(messages.len(), 3);
        let calls = messages[0]["tool_calls"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(calls[0]["function"]["name"], "multi_agent_v1__spawn_agent");
        assert_eq!(calls[1]["function"]["name"], "apply_patch");
        assert_eq!(
            calls[1]["function"]["arguments"],
            r#"{"input":"raw \"text\""}"#
        );
        assert_eq!(
            messages[2],
            json!({"role": "tool", "tool_call_id": "c2", "content": "ok"})
        );
        for call in &calls {
            let target = plan
                .meta
                .tools
                .resolve(call["function"]["name"].as_str().unwrap_or_default());
            assert_eq!(plan.meta.tools.chat_name(&target), call["function"]["name"]);
        }
        assert_eq!(
            plan.meta.tools.resolve("apply_patch").kind,
            ToolKind::Custom
        );
        assert_eq!(plan.meta.tools.resolve("unknown").name, "unknown");
    }

    #[test]
    fn invalid_and_overlong_names_are_encoded_deterministically() {
        assert_eq!(encode_tool_name(None, "exec_command"), "exec_command");
        let dotted = encode_tool_name(Some("mcp.server"), "read file");
        assert!(dotted.starts_with("mcp_server__read_file_"));
        let long_ns = "n".repeat(60);
        let long = encode_tool_name(Some(&long_ns), "tool");
        let other = encode_tool_name(Some(&long_ns), "tool2");
        for name in [&dotted, &long, &other] {
            assert!(name.len() <= 64 && !name.is_empty());
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        }
        assert_ne!(long, other);
        assert_eq!(long, encode_tool_name(Some(&long_ns), "tool"));
        let mut names = ToolNameMap::default();
        let plain = names.register(ToolTarget {
            kind: ToolKind::Function,
            namespace: None,
            name: "a__b".into(),
        });
        let namespaced = names.register(ToolTarget {
            kind: ToolKind::Function,
            namespace: Some("a".into()),
            name: "b".into(),
        });
        assert_eq!(plain, "a__b");
        assert_ne!(namespaced, plain);
        assert_eq!(names.resolve(&namespaced).namespace.as_deref(), Some("a"));
    }

    #[test]
    fn roles_images_and_sampling_fields_map() {
        let body = json!({
            "model": "m", "instructions": "Be brief.", "stream": false,
            "input": [
                {"role": "system", "content": "sys"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]},
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}], "encrypted_content": "x"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": [
                    {"type": "input_text", "text": "see image"},
                    {"type": "input_image", "image_url": "https://x/y.png"}]},
                {"type": "web_search_call", "id": "ws_1"},
                {"role": "developer", "content": "late note"}
            ],
            "tools": [{"type": "function", "name": "f", "strict": true, "parameters": {"type": "object"}},
                      {"type": "local_shell"}],
            "tool_choice": {"type": "function", "name": "f"},
            "temperature": 0.2, "top_p": 0.9, "max_output_tokens": 100, "user": "u1",
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": true},
                     "verbosity": "low"},
            "reasoning": {"effort": "high", "summary": "auto"},
            "metadata": {"k": "v"}
        });
        let plan = responses_to_chat(&body).expect("converts");
        let chat = &plan.chat_body;
        let messages = chat["messages"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief.\n\nsys"})
        );
        assert_eq!(
            messages[1]["content"],
            json!([{"type": "text", "text": "look"},
                   {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}])
        );
        assert_eq!(messages[2]["content"], "calling");
        assert_eq!(messages[2]["reasoning_content"], "plan");
        assert_eq!(messages[2]["tool_calls"][0]["id"], "c1");
        assert_eq!(
            messages[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "see image"})
        );
        assert_eq!(messages[4]["role"], "user");
        assert_eq!(
            messages[4]["content"][1]["image_url"]["url"],
            "https://x/y.png"
        );
        assert_eq!(
            messages[5],
            json!({"role": "system", "content": "late note"})
        );
        assert_eq!(messages.len(), 6);
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
        assert_eq!(chat["tools"][0]["function"]["strict"], true);
        assert_eq!(chat["temperature"], 0.2);
        assert_eq!(chat["top_p"], 0.9);
        assert_eq!(chat["max_tokens"], 100);
        assert_eq!(chat["user"], "u1");
        assert_eq!(chat["reasoning_effort"], "high");
        assert_eq!(
            chat["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": true}})
        );
        assert!(chat.get("metadata").is_none() && chat.get("parallel_tool_calls").is_none());
        assert!(!plan.client_stream);
        assert_eq!(plan.dropped_tools, ["local_shell"]);
        assert!(plan.notes.iter().any(|n| n.contains("web_search_call")));
        assert_eq!(plan.meta.echo["instructions"], "Be brief.");
        assert_eq!(plan.meta.echo["metadata"], json!({"k": "v"}));
        assert_eq!(plan.meta.echo["max_output_tokens"], 100);
    }

    #[test]
    fn broken_pairs_are_repaired_so_the_upstream_accepts_them() {
        let body = json!({"model": "m", "input": [
            {"type": "function_call", "call_id": "a", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "b", "name": "f", "arguments": ""},
            {"type": "function_call_output", "call_id": "b", "output": "B"},
            {"role": "user", "content": "next"},
            {"type": "function_call_output", "call_id": "zzz", "output": "orphan"}
        ]});
        let plan = responses_to_chat(&body).expect("converts");
        let messages = plan.chat_body["messages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(roles, ["assistant", "tool", "tool", "user"]);
        assert_eq!(messages[0]["tool_calls"].as_array().map(Vec::len), Some(2));
        assert_eq!(messages[1]["tool_call_id"], "b");
        assert_eq!(messages[2]["tool_call_id"], "a");
        assert_eq!(messages[2]["content"], NO_OUTPUT_PLACEHOLDER);
        assert_eq!(plan.notes.len(), 2);
        assert!(
            plan.chat_body.get("tools").is_none() && plan.chat_body.get("tool_choice").is_none()
        );
    }

    #[test]
    fn json_object_format_and_string_input() {
        let plan = responses_to_chat(&json!({
            "model": "m", "input": "hi", "text": {"format": {"type": "json_object"}},
            "tool_choice": "none"
        }))
        .expect("converts");
        assert_eq!(
            plan.chat_body["messages"],
            json!([{"role": "user", "content": "hi"}])
        );
        assert_eq!(
            plan.chat_body["response_format"],
            json!({"type": "json_object"})
        );
        assert!(plan.chat_body.get("tool_choice").is_none());
        assert_eq!(plan.meta.echo["tool_choice"], "none");
        assert_eq!(plan.meta.echo["parallel_tool_calls"], true);
    }

    #[test]
    fn malformed_fields_are_400s_naming_the_field() {
        let ok_input = json!([{"role": "user", "content": "hi"}]);
        let cases: Vec<(Value, &str)> = vec![
            (json!({"input": "hi"}), "model"),
            (json!({"model": 3, "input": "hi"}), "model"),
            (json!({"model": "m"}), "input"),
            (json!({"model": "m", "input": 5}), "input"),
            (
                json!({"model": "m", "input": "hi", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "input": "hi", "instructions": 1}),
                "instructions",
            ),
            (json!({"model": "m", "input": [1]}), "input[0]"),
            (
                json!({"model": "m", "input": [{"type": 1}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "bogus"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "robot", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "m", "input": [{"role": "user"}]}),
                "input[0].content",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": 7}]}),
                "input[0].content",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}),
                "input[0].content[0].text",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].file_id",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "system", "content": [{"type": "input_image", "image_url": "u"}]}]}),
                "input[0].content",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "name": "f"}]}),
                "input[0].call_id",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]}),
                "input[0].output",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0]",
            ),
            (
                json!({"model": "m", "input": ok_input, "tools": {}}),
                "tools",
            ),
            (
                json!({"model": "m", "input": ok_input, "tools": [{"name": "f"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": ok_input, "tools": [{"type": "function"}]}),
                "tools[0].name",
            ),
            (
                json!({"model": "m", "input": ok_input, "tools": [{"type": "function", "name": "f", "parameters": 1}]}),
                "tools[0].parameters",
            ),
            (
                json!({"model": "m", "input": ok_input, "tools": [{"type": "namespace", "name": "n"}]}),
                "tools[0].tools",
            ),
            (
                json!({"model": "m", "input": ok_input, "tools": [{"type": "namespace", "name": "n",
                "tools": [{"type": "web_search"}]}]}),
                "tools[0].tools[0].type",
            ),
            (
                json!({"model": "m", "input": ok_input, "tool_choice": "sometimes"}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "input": ok_input, "tool_choice": {"type": "function", "name": "nope"}}),
                "tool_choice.name",
            ),
            (
                json!({"model": "m", "input": ok_input, "tool_choice": {"type": "web_search"}}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "input": ok_input, "parallel_tool_calls": "y"}),
                "parallel_tool_calls",
            ),
            (
                json!({"model": "m", "input": ok_input, "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"model": "m", "input": ok_input, "max_output_tokens": -1}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": ok_input, "reasoning": "high"}),
                "reasoning",
            ),
            (
                json!({"model": "m", "input": ok_input, "reasoning": {"effort": 3}}),
                "reasoning.effort",
            ),
            (
                json!({"model": "m", "input": ok_input, "text": {"format": {"type": "xml"}}}),
                "text.format.type",
            ),
            (
                json!({"model": "m", "input": ok_input, "text": {"format": {"type": "json_schema", "name": "n"}}}),
                "text.format.schema",
            ),
            (
                json!({"model": "m", "input": ok_input, "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": ok_input, "conversation": "conv_1"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": ok_input, "background": true}),
                "background",
            ),
        ];
        for (body, param) in cases {
            let err = error_for(body.clone());
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.param.as_deref(), Some(param), "{body}: {}", err.message);
            let error: Value = serde_json::from_str(&err.to_body()).unwrap_or_default();
            assert_eq!(error["error"]["param"], param);
            assert_eq!(error["error"]["type"], "invalid_request_error");
        }
        let err = error_for(json!([]));
        assert_eq!((err.status, err.param), (400, None));
        let err = error_for(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"}));
        assert!(err.message.contains("not supported in bridge mode"));
    }
}
