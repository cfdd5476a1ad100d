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

impl Provider {
    /// A configured name, as given.
    pub fn new(name: &str) -> Provider {
        Provider(Arc::from(name))
    }

    /// The provider of an upstream host: OpenAI unless the host is known to be another.
    pub fn for_host(_host: &str) -> Provider {
        Provider::new(OPENAI)
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
