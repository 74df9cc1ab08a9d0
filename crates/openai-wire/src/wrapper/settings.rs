//! Wrapper settings: reasoning effort/summary, the reasoning output mode, model naming
//! (aliases, `-high`/`_high`-style effort suffixes, the `DEBUG_MODEL` override) and the model list
//! served on `/v1/models`.
//!
//! Everything here is parsed from plain strings so that the caller decides where they come
//! from (environment, flags, tests); [`WrapperSettings::from_lookup`] reads the documented
//! variable names through a lookup function.
//!
//! Uses: nothing else of this crate and serde, serde_json.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A setting that could not be parsed; the message names the setting and the accepted values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

/// Matches `value` (case-insensitively, surrounding spaces ignored) against `(name, variant)`.
fn parse_choice<T: Copy>(
    what: &str,
    value: &str,
    choices: &[(&str, T)],
) -> Result<T, SettingsError> {
    let wanted = value.trim();
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            SettingsError(format!(
                "invalid {what} {value:?}; expected one of: {}",
                names.join(", ")
            ))
        })
}

/// How much the model reasons (`reasoning.effort`). Default: low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningEffort {
    Minimal,
    #[default]
    Low,
    Medium,
    High,
}

impl ReasoningEffort {
    const CHOICES: [(&'static str, Self); 4] = [
        ("minimal", Self::Minimal),
        ("low", Self::Low),
        ("medium", Self::Medium),
        ("high", Self::High),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minimal => "minimal",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

impl FromStr for ReasoningEffort {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("reasoning effort", s, &Self::CHOICES)
    }
}

/// Which reasoning summary to ask for (`reasoning.summary`); `None` leaves the key out.
/// Default: auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningSummary {
    #[default]
    Auto,
    Concise,
    Detailed,
    None,
}

impl ReasoningSummary {
    const CHOICES: [(&'static str, Self); 4] = [
        ("auto", Self::Auto),
        ("concise", Self::Concise),
        ("detailed", Self::Detailed),
        ("none", Self::None),
    ];

    /// The value of `reasoning.summary`, or `None` when the key must be left out.
    pub fn as_request_value(self) -> Option<&'static str> {
        match self {
            Self::Auto => Some("auto"),
            Self::Concise => Some("concise"),
            Self::Detailed => Some("detailed"),
            Self::None => None,
        }
    }
}

impl FromStr for ReasoningSummary {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("reasoning summary", s, &Self::CHOICES)
    }
}

/// How reasoning text reaches Chat Completions clients. Default: openai.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReasoningOutputMode {
    /// `delta.reasoning_content`, a `"\n"` between summary parts.
    #[default]
    OpenAi,
    /// `delta.reasoning_content`, no separators (DeepSeek R1 style).
    R1,
    /// `delta.reasoning: {content: [{type: "text", text}]}`.
    O3,
    /// `<think>…</think>` inside `content`.
    Tagged,
    /// Dropped.
    Hidden,
    /// Every mode, each on its own route prefix; the root `/v1` routes use `OpenAi`.
    All,
}

impl ReasoningOutputMode {
    const CHOICES: [(&'static str, Self); 6] = [
        ("openai", Self::OpenAi),
        ("r1", Self::R1),
        ("o3", Self::O3),
        ("tagged", Self::Tagged),
        ("hidden", Self::Hidden),
        ("all", Self::All),
    ];

    /// Every mode, in the order of the setting's choices.
    pub fn every() -> [Self; 6] {
        Self::CHOICES.map(|(_, mode)| mode)
    }

    /// The route prefix (`/openai/v1`, …) that selects this mode when the setting is `All`.
    pub fn route_prefix(self) -> Option<&'static str> {
        match self {
            Self::OpenAi => Some("/openai"),
            Self::R1 => Some("/r1"),
            Self::O3 => Some("/o3"),
            Self::Tagged => Some("/tagged"),
            Self::Hidden => Some("/hidden"),
            Self::All => None,
        }
    }

    /// The mode a route prefix such as `openai` or `tagged` (without slashes) selects.
    pub fn from_route_prefix(prefix: &str) -> Option<Self> {
        Self::CHOICES
            .iter()
            .find(|(name, mode)| *name == prefix && *mode != Self::All)
            .map(|(_, mode)| *mode)
    }

    /// The concrete mode used to render one stream: `All` means `OpenAi` there.
    pub fn concrete(self) -> Self {
        match self {
            Self::All => Self::OpenAi,
            other => other,
        }
    }
}

impl FromStr for ReasoningOutputMode {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_choice("reasoning output mode", s, &Self::CHOICES)
    }
}

/// The model ids `/v1/models` lists when `EXPOSE_MODELS` is not set.
pub const DEFAULT_EXPOSED_MODELS: [&str; 5] = [
    "gpt-5",
    "gpt-5-latest",
    "gpt-5-codex",
    "gpt-5-codex-latest",
    "codex-mini-latest",
];

/// The model used when a request names none.
pub const DEFAULT_MODEL: &str = "gpt-5";

/// Everything configurable about the wrapper routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperSettings {
    pub effort: ReasoningEffort,
    pub summary: ReasoningSummary,
    pub output_mode: ReasoningOutputMode,
    /// Forces every request onto this model (`DEBUG_MODEL`).
    pub debug_model: Option<String>,
    /// Ids listed on `/v1/models`.
    pub exposed_models: Vec<String>,
}

impl Default for WrapperSettings {
    fn default() -> Self {
        WrapperSettings {
            effort: ReasoningEffort::default(),
            summary: ReasoningSummary::default(),
            output_mode: ReasoningOutputMode::default(),
            debug_model: None,
            exposed_models: DEFAULT_EXPOSED_MODELS
                .iter()
                .map(|m| m.to_string())
                .collect(),
        }
    }
}

impl WrapperSettings {
    /// Reads `REASONING_EFFORT`, `REASONING_SUMMARY`, `REASONING_OUTPUT_MODE`, `DEBUG_MODEL`
    /// and `EXPOSE_MODELS` through `lookup` (for example `|k| std::env::var(k).ok()`).
    /// Unset or blank values keep their defaults; invalid ones are errors.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut settings = WrapperSettings::default();
        if let Some(v) = get("REASONING_EFFORT") {
            settings.effort = v.parse()?;
        }
        if let Some(v) = get("REASONING_SUMMARY") {
            settings.summary = v.parse()?;
        }
        if let Some(v) = get("REASONING_OUTPUT_MODE") {
            settings.output_mode = v.parse()?;
        }
        settings.debug_model = get("DEBUG_MODEL").map(|v| v.trim().to_string());
        if let Some(v) = get("EXPOSE_MODELS") {
            settings.exposed_models = parse_exposed_models(&v)?;
        }
        Ok(settings)
    }
}

/// Parses `EXPOSE_MODELS`: a JSON array of strings, or names separated by commas and/or
/// whitespace. Duplicates are dropped, order kept.
pub fn parse_exposed_models(value: &str) -> Result<Vec<String>, SettingsError> {
    let trimmed = value.trim();
    let names: Vec<String> = if trimmed.starts_with('[') {
        serde_json::from_str::<Vec<String>>(trimmed).map_err(|e| {
            SettingsError(format!(
                "invalid EXPOSE_MODELS: not a JSON array of strings ({e})"
            ))
        })?
    } else {
        trimmed
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(str::to_string)
            .collect()
    };
    let mut unique: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let name = name.trim();
        if !name.is_empty() && !unique.iter().any(|u| u == name) {
            unique.push(name.to_string());
        }
    }
    if unique.is_empty() {
        return Err(SettingsError(
            "invalid EXPOSE_MODELS: no model names".into(),
        ));
    }
    Ok(unique)
}

/// The upstream model for one request, and the effort its name asked for (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    pub upstream: String,
    pub effort_from_name: Option<ReasoningEffort>,
}

/// Splits a `-minimal`/`-low`/`-medium`/`-high` suffix off a model name; the TypeScript
/// wrapper's clients also write it with an underscore (`gpt-5_high`), which counts the same.
fn split_effort_suffix(name: &str) -> (&str, Option<ReasoningEffort>) {
    for (suffix, effort) in ReasoningEffort::CHOICES {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(base) = base.strip_suffix(['-', '_']).filter(|b| !b.is_empty()) {
                return (base, Some(effort));
            }
        }
    }
    (name, None)
}

/// Maps the wrapper's model aliases to upstream model names; other names pass unchanged.
pub fn canonical_model(name: &str) -> &str {
    match name {
        "" | "gpt5" | "gpt-5-latest" => DEFAULT_MODEL,
        "gpt5-codex" | "gpt-5-codex-latest" => "gpt-5-codex",
        "codex" | "codex-mini" => "codex-mini-latest",
        other => other,
    }
}

/// Resolves a requested model name: effort suffix, aliases, then `DEBUG_MODEL` (whose own
/// suffix, if any, wins over the requested one).
pub fn resolve_model(requested: &str, debug_model: Option<&str>) -> ResolvedModel {
    let (base, mut effort) = split_effort_suffix(requested.trim());
    let mut upstream = canonical_model(base).to_string();
    if let Some(forced) = debug_model.map(str::trim).filter(|m| !m.is_empty()) {
        let (forced_base, forced_effort) = split_effort_suffix(forced);
        upstream = canonical_model(forced_base).to_string();
        effort = forced_effort.or(effort);
    }
    ResolvedModel {
        upstream,
        effort_from_name: effort,
    }
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelEntry<'a>>,
}

#[derive(Serialize)]
struct ModelEntry<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

/// The `/v1/models` body: `{object: "list", data: [{id, object: "model", created, owned_by}]}`.
pub fn models_list_body(ids: &[String], created: u64) -> String {
    let list = ModelList {
        object: "list",
        data: ids
            .iter()
            .map(|id| ModelEntry {
                id,
                object: "model",
                created,
                owned_by: "openai",
            })
            .collect(),
    };
    serde_json::to_string(&list).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn enums_parse_case_insensitively_and_reject_with_the_choices() {
        assert_eq!(
            " HIGH ".parse::<ReasoningEffort>(),
            Ok(ReasoningEffort::High)
        );
        assert_eq!(
            "none".parse::<ReasoningSummary>(),
            Ok(ReasoningSummary::None)
        );
        assert_eq!(
            "o3".parse::<ReasoningOutputMode>(),
            Ok(ReasoningOutputMode::O3)
        );
        let err = "max".parse::<ReasoningEffort>().unwrap_err();
        assert!(err.0.contains("\"max\"") && err.0.contains("minimal, low, medium, high"));
        assert!("thinking".parse::<ReasoningOutputMode>().is_err());
        assert_eq!(ReasoningSummary::None.as_request_value(), None);
        assert_eq!(
            ReasoningSummary::Detailed.as_request_value(),
            Some("detailed")
        );
        assert_eq!(ReasoningEffort::default(), ReasoningEffort::Low);
    }

    #[test]
    fn output_mode_route_prefixes() {
        assert_eq!(
            ReasoningOutputMode::from_route_prefix("tagged"),
            Some(ReasoningOutputMode::Tagged)
        );
        assert_eq!(ReasoningOutputMode::from_route_prefix("all"), None);
        assert_eq!(ReasoningOutputMode::R1.route_prefix(), Some("/r1"));
        assert_eq!(
            ReasoningOutputMode::All.concrete(),
            ReasoningOutputMode::OpenAi
        );
    }

    #[test]
    fn aliases_suffixes_and_debug_model() {
        let r = |m: &str| resolve_model(m, None);
        assert_eq!(r("gpt5").upstream, "gpt-5");
        assert_eq!(r("gpt-5-latest").upstream, "gpt-5");
        assert_eq!(r("").upstream, "gpt-5");
        assert_eq!(r("gpt5-codex").upstream, "gpt-5-codex");
        assert_eq!(r("gpt-5-codex-latest").upstream, "gpt-5-codex");
        assert_eq!(r("codex").upstream, "codex-mini-latest");
        assert_eq!(r("codex-mini").upstream, "codex-mini-latest");
        assert_eq!(r("o4-mini").upstream, "o4-mini");
        let high = r("gpt-5-high");
        assert_eq!(high.upstream, "gpt-5");
        assert_eq!(high.effort_from_name, Some(ReasoningEffort::High));
        let codex = r("gpt5-codex-minimal");
        assert_eq!(codex.upstream, "gpt-5-codex");
        assert_eq!(codex.effort_from_name, Some(ReasoningEffort::Minimal));
        assert_eq!(r("-high").upstream, "-high");
        for (name, base, effort) in [
            ("gpt-5_minimal", "gpt-5", ReasoningEffort::Minimal),
            ("gpt-5_low", "gpt-5", ReasoningEffort::Low),
            ("gpt-5_medium", "gpt-5", ReasoningEffort::Medium),
            ("gpt-5_high", "gpt-5", ReasoningEffort::High),
            ("gpt5_high", "gpt-5", ReasoningEffort::High),
            ("gpt-5-codex_medium", "gpt-5-codex", ReasoningEffort::Medium),
            (
                "codex-mini_minimal",
                "codex-mini-latest",
                ReasoningEffort::Minimal,
            ),
        ] {
            let resolved = r(name);
            assert_eq!(resolved.upstream, base, "{name}");
            assert_eq!(resolved.effort_from_name, Some(effort), "{name}");
        }
        assert_eq!(r("_high").upstream, "_high");
        assert_eq!(r("gpt-5_mini").effort_from_name, None);
        assert_eq!(r("gpt-5high").effort_from_name, None);
        let forced = resolve_model("gpt-5", Some("gpt-5-codex_high"));
        assert_eq!(forced.upstream, "gpt-5-codex");
        assert_eq!(forced.effort_from_name, Some(ReasoningEffort::High));
        assert_eq!(r("gpt-5-mini").effort_from_name, None);
        let forced = resolve_model("gpt-5-high", Some("codex"));
        assert_eq!(forced.upstream, "codex-mini-latest");
        assert_eq!(forced.effort_from_name, Some(ReasoningEffort::High));
        let forced = resolve_model("gpt-5-high", Some("gpt-5-low"));
        assert_eq!(forced.effort_from_name, Some(ReasoningEffort::Low));
    }

    #[test]
    fn exposed_models_json_or_separated() {
        assert_eq!(
            parse_exposed_models(r#"["a","b","a"]"#).unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(
            parse_exposed_models("a, b  c,,d").unwrap(),
            vec!["a", "b", "c", "d"]
        );
        assert!(parse_exposed_models("[1,2]").is_err());
        assert!(parse_exposed_models(" , ").is_err());
    }

    #[test]
    fn settings_from_lookup() {
        let env: HashMap<&str, &str> = [
            ("REASONING_EFFORT", "high"),
            ("REASONING_SUMMARY", "none"),
            ("REASONING_OUTPUT_MODE", "all"),
            ("DEBUG_MODEL", " gpt-5-codex "),
            ("EXPOSE_MODELS", "x y"),
        ]
        .into_iter()
        .collect();
        let s = WrapperSettings::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(s.effort, ReasoningEffort::High);
        assert_eq!(s.summary, ReasoningSummary::None);
        assert_eq!(s.output_mode, ReasoningOutputMode::All);
        assert_eq!(s.debug_model.as_deref(), Some("gpt-5-codex"));
        assert_eq!(s.exposed_models, vec!["x", "y"]);
        assert_eq!(
            WrapperSettings::from_lookup(|_| None).unwrap(),
            WrapperSettings::default()
        );
        let err = WrapperSettings::from_lookup(|k| {
            (k == "REASONING_OUTPUT_MODE").then(|| "loud".to_string())
        })
        .unwrap_err();
        assert!(err.0.contains("reasoning output mode"));
    }

    #[test]
    fn models_body_shape() {
        let body: serde_json::Value = serde_json::from_str(&models_list_body(
            &WrapperSettings::default().exposed_models,
            1_700_000_000,
        ))
        .unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"].as_array().unwrap().len(), 5);
        assert_eq!(
            body["data"][4],
            serde_json::json!({"id":"codex-mini-latest","object":"model","created":1_700_000_000u64,"owned_by":"openai"})
        );
    }
}
