//! The token-usage object, read once for both APIs: Responses (`input_tokens`,
//! `output_tokens`, `*_details`) and Chat Completions (`prompt_tokens`, `completion_tokens`,
//! `*_details`, and DeepSeek's `prompt_cache_hit_tokens`), and the counts taken from either.
//! The bridge, the wrapper and the proxy's usage tap all read usage through this one type, so
//! they count alike.
//!
//! Uses: nothing else of this crate and serde.

use serde::Deserialize;

/// A `usage` object of either API; every field optional, unknown fields ignored.
#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub input_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    pub output_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<TokenDetails>,
    /// DeepSeek's name for cached prompt tokens.
    #[serde(default)]
    pub prompt_cache_hit_tokens: Option<u64>,
}

/// `*_tokens_details` of either API.
#[derive(Deserialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenDetails {
    #[serde(default)]
    pub cached_tokens: Option<u64>,
    #[serde(default)]
    pub reasoning_tokens: Option<u64>,
}

/// What a usage object counts; absent fields count 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
    /// Part of `input` served from the prompt cache.
    pub cached: u64,
    /// Part of `output` spent on reasoning.
    pub reasoning: u64,
}

impl WireUsage {
    /// The counts, whichever API's names the object uses (Responses names win when both are
    /// present; for cached tokens, the larger of the details and DeepSeek's field).
    pub fn counts(&self) -> TokenCounts {
        let cached = |d: Option<TokenDetails>| d.and_then(|d| d.cached_tokens);
        let reasoning = |d: Option<TokenDetails>| d.and_then(|d| d.reasoning_tokens);
        TokenCounts {
            input: self.input_tokens.or(self.prompt_tokens).unwrap_or(0),
            output: self.output_tokens.or(self.completion_tokens).unwrap_or(0),
            cached: cached(self.input_tokens_details)
                .or(cached(self.prompt_tokens_details))
                .unwrap_or(0)
                .max(self.prompt_cache_hit_tokens.unwrap_or(0)),
            reasoning: reasoning(self.output_tokens_details)
                .or(reasoning(self.completion_tokens_details))
                .unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(json: &str) -> TokenCounts {
        serde_json::from_str::<WireUsage>(json).unwrap().counts()
    }

    #[test]
    fn both_apis_and_deepseek_count_alike() {
        let expected = TokenCounts {
            input: 100,
            output: 20,
            cached: 40,
            reasoning: 5,
        };
        assert_eq!(
            counts(
                r#"{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":20,"output_tokens_details":{"reasoning_tokens":5},"total_tokens":120}"#
            ),
            expected
        );
        assert_eq!(
            counts(
                r#"{"prompt_tokens":100,"prompt_tokens_details":{"cached_tokens":40},"completion_tokens":20,"completion_tokens_details":{"reasoning_tokens":5},"total_tokens":120}"#
            ),
            expected
        );
        assert_eq!(
            counts(
                r#"{"prompt_tokens":100,"prompt_cache_hit_tokens":40,"prompt_cache_miss_tokens":60,"completion_tokens":20,"completion_tokens_details":{"reasoning_tokens":5}}"#
            ),
            expected
        );
        assert_eq!(counts("{}"), TokenCounts::default());
        assert!(serde_json::from_str::<WireUsage>(r#"{"input_tokens":-1}"#).is_err());
    }
}
