//! Azure OpenAI as the demo plays it.
//!
//! Azure names a model by a deployment the user made (`prod-chat`), and its
//! answers carry the dated model version serving that deployment
//! (`gpt-4o-mini-2024-07-18`), not the deployment name. Playing that here is
//! what lets `--demo` show the Azure accounting rule end to end: the request
//! model is the deployment, the cost comes from the response model.

use crate::genai::azure;
use crate::genai::request::Operation;

/// Which Azure shape a request path has, if any.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Shape<'a> {
    /// `/openai/deployments/{deployment}/…`
    pub(super) deployment: Option<&'a str>,
    /// `/openai/v1/…` or a deployment path.
    pub(super) azure: bool,
}

impl<'a> Shape<'a> {
    pub(super) fn of(path: &'a str) -> Shape<'a> {
        let deployment = path
            .strip_prefix("/openai/deployments/")
            .and_then(|_| azure::deployment(path));
        Shape {
            deployment,
            azure: deployment.is_some() || azure::is_v1(path),
        }
    }

    /// The model an answer names for a request that named `model` (or whose
    /// deployment is `model`): on Azure, the dated version behind it.
    pub(super) fn answered_model<'m>(&self, operation: Operation, model: &'m str) -> &'m str {
        if !self.azure || model.starts_with("demo-") {
            return model;
        }
        version_of(operation, model)
    }
}

/// The dated version Azure reports for a deployment or model name: the known
/// family it names, else a typical default for the operation.
fn version_of(operation: Operation, name: &str) -> &'static str {
    const VERSIONS: &[(&str, &str)] = &[
        ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
        ("gpt-4o", "gpt-4o-2024-08-06"),
        ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
        ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"),
        ("gpt-4.1", "gpt-4.1-2025-04-14"),
        ("text-embedding-3-large", "text-embedding-3-large"),
        ("text-embedding-3-small", "text-embedding-3-small"),
        ("text-embedding-ada-002", "text-embedding-ada-002"),
        ("gpt-35-turbo-instruct", "gpt-3.5-turbo-instruct"),
    ];
    let lower = name.to_ascii_lowercase();
    if let Some((_, version)) = VERSIONS.iter().find(|(family, _)| lower.contains(family)) {
        return version;
    }
    match operation {
        Operation::Embeddings => "text-embedding-3-small",
        Operation::Completions => "gpt-3.5-turbo-instruct",
        _ => "gpt-4o-mini-2024-07-18",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_answer_with_dated_versions() {
        let d = Shape::of("/openai/deployments/prod-chat/chat/completions");
        assert_eq!(d.deployment, Some("prod-chat"));
        assert_eq!(
            d.answered_model(Operation::ChatCompletions, "prod-chat"),
            "gpt-4o-mini-2024-07-18"
        );
        assert_eq!(
            d.answered_model(Operation::ChatCompletions, "my-gpt-4o"),
            "gpt-4o-2024-08-06"
        );
        assert_eq!(
            d.answered_model(Operation::Embeddings, "emb"),
            "text-embedding-3-small"
        );
        // fault models keep working on Azure paths
        assert_eq!(
            d.answered_model(Operation::ChatCompletions, "demo-error-429"),
            "demo-error-429"
        );
        let v1 = Shape::of("/openai/v1/chat/completions");
        assert!(v1.azure && v1.deployment.is_none());
        let openai = Shape::of("/v1/chat/completions");
        assert!(!openai.azure);
        assert_eq!(
            openai.answered_model(Operation::ChatCompletions, "gpt-4o-mini"),
            "gpt-4o-mini"
        );
    }
}
