//! Who serves a model call, in the GenAI conventions' words.
//!
//! `gen_ai.provider.name` and the `provider` labels name the company or
//! product behind an upstream, not its URL: dashboards group spend by it.
//! The name is decided once per route (configured, or inferred from the
//! upstream host) and every call on that route carries it, so no other
//! module spells a provider name.

use std::sync::Arc;

/// A provider name (`openai`, `azure.ai.openai`, or one a route configures).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Provider(Arc<str>);

/// OpenAI's own API, and the name of any host not otherwise known.
pub const OPENAI: &str = "openai";

/// Azure OpenAI (`*.openai.azure.com`, `*.cognitiveservices.azure.com`).
pub const AZURE_OPENAI: &str = "azure.ai.openai";

impl Provider {
    /// A configured name, as given.
    pub fn new(name: &str) -> Provider {
        Provider(Arc::from(name))
    }

    /// The provider of an upstream host (docs/configuration.md, Providers): OpenAI unless the host is known to be
    /// another. Hosts compare case-insensitively, a trailing dot ignored; Azure's are
    /// matched by their domain, whatever the resource name.
    pub fn for_host(host: &str) -> Provider {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let name = match host.as_str() {
            "api.openai.com" => OPENAI,
            "api.groq.com" => "groq",
            "api.deepseek.com" => "deepseek",
            "api.x.ai" => "x_ai",
            "api.mistral.ai" => "mistral_ai",
            "api.perplexity.ai" => "perplexity",
            "openrouter.ai" => "openrouter",
            h if h.ends_with(".openai.azure.com")
                || h.ends_with(".cognitiveservices.azure.com") =>
            {
                AZURE_OPENAI
            }
            _ => OPENAI,
        };
        Provider::new(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Provider {
    fn default() -> Provider {
        Provider::new(OPENAI)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_map_to_the_spec_table() {
        for (host, want) in [
            ("api.openai.com", "openai"),
            ("myres.openai.azure.com", "azure.ai.openai"),
            ("MyRes.OpenAI.Azure.com", "azure.ai.openai"),
            ("myres.cognitiveservices.azure.com", "azure.ai.openai"),
            ("api.groq.com", "groq"),
            ("api.deepseek.com", "deepseek"),
            ("api.x.ai", "x_ai"),
            ("api.mistral.ai", "mistral_ai"),
            ("api.perplexity.ai", "perplexity"),
            ("openrouter.ai", "openrouter"),
            ("api.groq.com.", "groq"),
            ("127.0.0.1", "openai"),
            ("localhost", "openai"),
            ("[::1]", "openai"),
            // a look-alike is not Azure: the domain must match whole labels
            ("openai.azure.com.evil.example", "openai"),
            ("evilopenai.azure.com", "openai"),
            ("groq.com", "openai"),
        ] {
            assert_eq!(Provider::for_host(host).as_str(), want, "{host}");
        }
    }
}
