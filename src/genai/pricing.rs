//! Prices, and the cost of one call from the provider's usage.
//!
//! Cost is only ever computed from reported usage and a known price; a model
//! without a price gets no cost at all (and is counted as unpriced), never a
//! guess. The built-in table is dated so users can tell when to override it
//! with `--pricing`.

use std::collections::HashMap;

use super::response::Usage;

/// Where and when the built-in prices were read (standard tier, USD per 1M tokens).
pub const BUILTIN_SOURCE: &str = "OpenAI API pricing page, standard tier, as of 2025-08-07";

/// USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input: f64,
    /// Price of cached input tokens; `None` prices them as input.
    pub cached_input: Option<f64>,
    pub output: f64,
}

const fn p(input: f64, cached: f64, output: f64) -> Price {
    Price {
        input,
        cached_input: Some(cached),
        output,
    }
}

const fn nc(input: f64, output: f64) -> Price {
    Price {
        input,
        cached_input: None,
        output,
    }
}

const BUILTIN: &[(&str, Price)] = &[
    ("gpt-5", p(1.25, 0.125, 10.0)),
    ("gpt-5-mini", p(0.25, 0.025, 2.0)),
    ("gpt-5-nano", p(0.05, 0.005, 0.40)),
    ("gpt-5-chat-latest", p(1.25, 0.125, 10.0)),
    ("gpt-4.1", p(2.0, 0.50, 8.0)),
    ("gpt-4.1-mini", p(0.40, 0.10, 1.60)),
    ("gpt-4.1-nano", p(0.10, 0.025, 0.40)),
    ("gpt-4o", p(2.50, 1.25, 10.0)),
    ("gpt-4o-mini", p(0.15, 0.075, 0.60)),
    ("o1", p(15.0, 7.50, 60.0)),
    ("o3", p(2.0, 0.50, 8.0)),
    ("o3-mini", p(1.10, 0.55, 4.40)),
    ("o4-mini", p(1.10, 0.275, 4.40)),
    ("gpt-4-turbo", nc(10.0, 30.0)),
    ("gpt-4", nc(30.0, 60.0)),
    ("gpt-3.5-turbo", nc(0.50, 1.50)),
    ("text-embedding-3-small", nc(0.02, 0.0)),
    ("text-embedding-3-large", nc(0.13, 0.0)),
    ("text-embedding-ada-002", nc(0.10, 0.0)),
];

/// The price table in force: built-in entries, overridden and extended by a file.
#[derive(Debug, Clone)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable {
            prices: BUILTIN.iter().map(|(m, p)| ((*m).to_owned(), *p)).collect(),
        }
    }
}

/// Why a pricing file was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct PricingError(pub String);

impl std::fmt::Display for PricingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    models: HashMap<String, TomlPrice>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPrice {
    input: f64,
    cached_input: Option<f64>,
    #[serde(default)]
    output: f64,
}

#[derive(serde::Deserialize)]
struct LiteLlmEntry {
    input_cost_per_token: Option<f64>,
    output_cost_per_token: Option<f64>,
    cache_read_input_token_cost: Option<f64>,
}

/// Per-token to per-1M, rounded to 1e-9 USD so 2.5e-6 reads as 2.5.
fn per_million(per_token: f64) -> f64 {
    (per_token * 1e6 * 1e9).round() / 1e9
}

impl PriceTable {
    /// Adds or replaces prices from a file's text; `json` selects LiteLLM's layout, else TOML.
    pub fn extend_from_str(&mut self, text: &str, json: bool) -> Result<usize, PricingError> {
        let entries: Vec<(String, Price)> = if json {
            let map: HashMap<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| PricingError(format!("invalid JSON: {e}")))?;
            map.into_iter()
                .filter_map(|(name, v)| {
                    let e: LiteLlmEntry = serde::Deserialize::deserialize(v).ok()?;
                    let input = e.input_cost_per_token?;
                    Some((
                        name,
                        Price {
                            input: per_million(input),
                            cached_input: e.cache_read_input_token_cost.map(per_million),
                            output: per_million(e.output_cost_per_token.unwrap_or(0.0)),
                        },
                    ))
                })
                .collect()
        } else {
            let file: TomlFile = toml::from_str(text)
                .map_err(|e| PricingError(format!("invalid TOML: {}", e.message())))?;
            file.models
                .into_iter()
                .map(|(name, t)| {
                    (
                        name,
                        Price {
                            input: t.input,
                            cached_input: t.cached_input,
                            output: t.output,
                        },
                    )
                })
                .collect()
        };
        for (name, price) in &entries {
            let ok = [price.input, price.output, price.cached_input.unwrap_or(0.0)]
                .iter()
                .all(|v| v.is_finite() && *v >= 0.0);
            if !ok {
                return Err(PricingError(format!(
                    "model {name:?}: prices must be finite and not negative"
                )));
            }
        }
        let n = entries.len();
        self.prices.extend(entries);
        Ok(n)
    }

    /// Loads a file, telling the format by its extension (`.json` or TOML).
    pub fn extend_from_file(&mut self, path: &std::path::Path) -> Result<usize, PricingError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PricingError(format!("cannot read {}: {e}", path.display())))?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        self.extend_from_str(&text, json)
    }

    pub fn get(&self, model: &str) -> Option<&Price> {
        self.prices.get(model)
    }

    /// Lookup order of SPEC §7: response model, undated; request model, undated.
    pub fn lookup(
        &self,
        response_model: Option<&str>,
        request_model: Option<&str>,
    ) -> Option<&Price> {
        [response_model, request_model]
            .into_iter()
            .flatten()
            .find_map(|m| self.get(m).or_else(|| undated(m).and_then(|u| self.get(u))))
    }
}

/// `gpt-4o-2024-08-06` → `gpt-4o`.
///
/// ```
/// use tokentap::genai::pricing::undated;
/// assert_eq!(undated("gpt-4o-2024-08-06"), Some("gpt-4o"));
/// assert_eq!(undated("gpt-4o"), None);
/// ```
pub fn undated(model: &str) -> Option<&str> {
    let b = model.as_bytes();
    if b.len() < 12 {
        return None;
    }
    let tail = &b[b.len() - 11..];
    let shape = tail.iter().enumerate().all(|(i, c)| match i {
        0 | 5 | 8 => *c == b'-',
        _ => c.is_ascii_digit(),
    });
    shape.then(|| &model[..model.len() - 11])
}

/// USD for `usage` at `price`.
pub fn cost(price: &Price, usage: &Usage) -> f64 {
    let cached = usage
        .cached_input_tokens
        .unwrap_or(0)
        .min(usage.input_tokens);
    let uncached = usage.input_tokens - cached;
    let cached_price = price.cached_input.unwrap_or(price.input);
    (uncached as f64 * price.input
        + cached as f64 * cached_price
        + usage.output_tokens as f64 * price.output)
        / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, cached: Option<u64>, output: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            total_tokens: input + output,
            cached_input_tokens: cached,
            reasoning_tokens: None,
        }
    }

    #[test]
    fn builtin_has_spec_models() {
        let t = PriceTable::default();
        for m in [
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "gpt-4o",
            "gpt-4o-mini",
            "o1",
            "o3",
            "o3-mini",
            "o4-mini",
            "gpt-4-turbo",
            "gpt-4",
            "gpt-3.5-turbo",
            "text-embedding-3-small",
            "text-embedding-3-large",
        ] {
            assert!(t.get(m).is_some(), "{m}");
        }
        assert_eq!(t.get("gpt-4o-mini"), Some(&p(0.15, 0.075, 0.60)));
        assert_eq!(t.get("o4-mini"), Some(&p(1.10, 0.275, 4.40)));
    }

    #[test]
    fn cost_splits_cached_input() {
        let t = PriceTable::default();
        let price = t.get("gpt-4o").expect("priced");
        // 1000 uncached × 2.50 + 1000 cached × 1.25 + 500 × 10, per 1M
        let c = cost(price, &usage(2000, Some(1000), 500));
        assert!((c - (2500.0 + 1250.0 + 5000.0) / 1e6).abs() < 1e-15, "{c}");
        // no cached price: cached tokens priced as input
        let g4 = t.get("gpt-4").expect("priced");
        assert!(
            (cost(g4, &usage(100, Some(50), 10)) - (100.0 * 30.0 + 10.0 * 60.0) / 1e6).abs()
                < 1e-15
        );
    }

    #[test]
    fn lookup_order_and_dates() {
        let t = PriceTable::default();
        assert_eq!(undated("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(undated("gpt-4o"), None);
        assert_eq!(undated("gpt-4-0613"), None);
        assert_eq!(
            t.lookup(Some("gpt-4o-mini-2024-07-18"), Some("x")),
            t.get("gpt-4o-mini")
        );
        assert_eq!(
            t.lookup(Some("unknown-model"), Some("gpt-4.1")),
            t.get("gpt-4.1")
        );
        assert_eq!(t.lookup(None, Some("gpt-5-2025-08-07")), t.get("gpt-5"));
        assert_eq!(t.lookup(Some("nope"), Some("nada")), None);
        // exact dated entry wins over its undated model
        let mut t2 = t.clone();
        t2.extend_from_str(
            "[models.\"gpt-4o-2024-05-13\"]\ninput = 5.0\noutput = 15.0\n",
            false,
        )
        .expect("toml");
        assert_eq!(
            t2.lookup(Some("gpt-4o-2024-05-13"), None).map(|p| p.input),
            Some(5.0)
        );
    }

    #[test]
    fn toml_file_overrides_and_extends() {
        let mut t = PriceTable::default();
        let n = t
            .extend_from_str(
                "[models.\"gpt-4o-mini\"]\ninput = 0.2\ncached_input = 0.1\noutput = 0.8\n\n[models.my-model]\ninput = 1\noutput = 2\n",
                false,
            )
            .expect("valid");
        assert_eq!(n, 2);
        assert_eq!(t.get("gpt-4o-mini"), Some(&p(0.2, 0.1, 0.8)));
        assert_eq!(t.get("my-model"), Some(&nc(1.0, 2.0)));
        assert!(
            t.extend_from_str("[models.x]\ninput = -1\n", false)
                .is_err()
        );
        assert!(t.extend_from_str("[models.x]\nprice = 1\n", false).is_err());
        assert!(t.extend_from_str("not toml", false).is_err());
    }

    #[test]
    fn litellm_json_layout() {
        let mut t = PriceTable::default();
        let json = r#"{
          "sample_spec": {"max_tokens": "set to max_output_tokens"},
          "gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05,
                     "cache_read_input_token_cost": 1.25e-06, "litellm_provider": "openai"},
          "whisper-1": {"input_cost_per_second": 0.0001},
          "custom/llama": {"input_cost_per_token": 1e-07, "output_cost_per_token": 2e-07}
        }"#;
        assert_eq!(t.extend_from_str(json, true).expect("valid"), 2);
        assert_eq!(t.get("gpt-4o"), Some(&p(2.5, 1.25, 10.0)));
        assert_eq!(t.get("custom/llama"), Some(&nc(0.1, 0.2)));
        assert!(t.get("whisper-1").is_none());
        assert!(t.extend_from_str("{", true).is_err());
    }
}
