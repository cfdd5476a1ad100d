//! The agent-in-production settings: where conversations live and which
//! models the agent may spend the operator's key on.
//!
//! Parsed here so a bad store URL or model list stops tokentap at start with
//! one line; the Redis URL may hold a password, so it is kept as a
//! [`Secret`] and only its host part is ever shown.

use super::Secret;

/// `--agent-store`: where the agent keeps conversations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AgentStore {
    /// In this process (lost at restart, not shared by replicas).
    #[default]
    Memory,
    /// In Redis, shared by every replica and kept across restarts.
    Redis(RedisUrl),
}

/// A `redis://` URL, validated; printable only as [`RedisUrl::shown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    url: Secret,
    shown: String,
}

impl RedisUrl {
    /// The URL itself (credentials included): only for connecting.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// `redis at HOST:PORT[/DB]`, without credentials: for logs and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// `--agent-store` as given: checked in `Config::try_from`, because clap would
/// quote a refused value — and a Redis URL may hold a password.
#[derive(Debug, Clone)]
pub struct AgentStoreArg(pub(super) Result<AgentStore, String>);

pub(super) fn parse_agent_store_arg(s: &str) -> Result<AgentStoreArg, String> {
    Ok(AgentStoreArg(parse_agent_store(s)))
}

/// `memory`, or a `redis://[user:pass@]host:port[/db]` URL.
pub(super) fn parse_agent_store(s: &str) -> Result<AgentStore, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("memory") {
        return Ok(AgentStore::Memory);
    }
    let Some(rest) = s.strip_prefix("redis://") else {
        return Err("must be `memory` or a redis://[user:pass@]host:port[/db] URL".into());
    };
    // never echo the input: it may hold a password
    if let Err(e) = redis::Client::open(s) {
        return Err(format!("not a usable redis:// URL ({:?})", e.kind()));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split(['?', '#']).next().unwrap_or(host);
    if host.is_empty() || host.starts_with('/') {
        return Err("a redis:// URL needs a host".into());
    }
    Ok(AgentStore::Redis(RedisUrl {
        url: Secret::new(s),
        shown: format!("redis at {host}"),
    }))
}

/// `--agent-models`: `*` (any model) or a comma-separated list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentModels {
    Any,
    Only(Vec<String>),
}

impl AgentModels {
    /// Whether a `/chat` may ask for `model`.
    pub fn allows(&self, model: &str) -> bool {
        match self {
            AgentModels::Any => true,
            AgentModels::Only(list) => list.iter().any(|m| m == model),
        }
    }
}

pub(super) fn parse_agent_models(s: &str) -> Result<AgentModels, String> {
    let list: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err("name at least one model, or `*` for any".into());
    }
    if list.iter().any(|m| m == "*") {
        return Ok(AgentModels::Any);
    }
    Ok(AgentModels::Only(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_never_show_their_password() {
        assert_eq!(parse_agent_store("memory"), Ok(AgentStore::Memory));
        let Ok(AgentStore::Redis(u)) = parse_agent_store("redis://app:hunter2@cache:6379/2") else {
            panic!("a redis URL parses");
        };
        assert_eq!(u.shown(), "redis at cache:6379/2");
        assert!(!format!("{u:?}").contains("hunter2"));
        assert_eq!(u.expose(), "redis://app:hunter2@cache:6379/2");
        for bad in ["", "mysql://x", "redis://", "redis:///0", "file.db"] {
            let e = parse_agent_store(bad).expect_err(bad);
            assert!(!e.contains("hunter2"));
        }
        let e = parse_agent_store("redis://u:hunter2@h:notaport").expect_err("bad port");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn model_lists() {
        assert_eq!(parse_agent_models("*"), Ok(AgentModels::Any));
        let m = parse_agent_models("gpt-4o-mini, gpt-4o").expect("list");
        assert!(m.allows("gpt-4o") && m.allows("gpt-4o-mini") && !m.allows("o3"));
        assert!(parse_agent_models(" , ").is_err());
    }
}
