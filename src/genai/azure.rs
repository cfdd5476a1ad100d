//! Azure OpenAI's URL shapes, which put the model in the path.
//!
//! Azure serves the OpenAI API under `/openai/deployments/{deployment}/…` and,
//! in its v1 API, under `/openai/v1/…`. The operation is still told by the path's
//! suffix ([`Operation::from_path`](super::request::Operation::from_path)), so
//! both shapes need nothing special there; what Azure adds is that a request body
//! may carry no `model` at all, the deployment naming it instead. A deployment
//! name is the user's (`prod-chat`), not a model, which is why cost is looked up
//! by the response model first (docs/configuration.md, Pricing).

/// The deployment named by an Azure path (`…/openai/deployments/{deployment}/…`),
/// wherever the shape starts (behind a route's or the upstream's prefix too).
pub fn deployment(path: &str) -> Option<&str> {
    let mut segments = path.split('/');
    while let Some(seg) = segments.next() {
        if seg == "openai" {
            let mut rest = segments.clone();
            if rest.next() == Some("deployments") {
                return rest.next().filter(|d| !d.is_empty());
            }
        }
    }
    None
}

/// True for Azure's v1 shape, `/openai/v1/…`, at the start of `path`.
pub fn is_v1(path: &str) -> bool {
    path.starts_with("/openai/v1/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::genai::request::Operation;

    #[test]
    fn deployments_are_read_from_the_path() {
        assert_eq!(
            deployment("/openai/deployments/prod-chat/chat/completions"),
            Some("prod-chat")
        );
        assert_eq!(
            deployment("/azure/openai/deployments/emb/embeddings"),
            Some("emb")
        );
        assert_eq!(deployment("/openai/deployments//chat/completions"), None);
        assert_eq!(deployment("/openai/deployments"), None);
        assert_eq!(deployment("/v1/chat/completions"), None);
        assert_eq!(deployment("/openai/v1/chat/completions"), None);
        assert_eq!(deployment("/x/deployments/d/chat/completions"), None);
        assert!(is_v1("/openai/v1/embeddings"));
        assert!(!is_v1("/v1/embeddings"));
    }

    #[test]
    fn azure_paths_are_the_usual_operations() {
        for (path, op) in [
            (
                "/openai/deployments/d/chat/completions",
                Operation::ChatCompletions,
            ),
            ("/openai/deployments/d/completions", Operation::Completions),
            ("/openai/deployments/d/embeddings", Operation::Embeddings),
            ("/openai/v1/chat/completions", Operation::ChatCompletions),
            ("/openai/v1/responses", Operation::Responses),
            ("/openai/v1/embeddings", Operation::Embeddings),
            // a deployment may be named like an operation
            (
                "/openai/deployments/embeddings/chat/completions",
                Operation::ChatCompletions,
            ),
        ] {
            assert_eq!(Operation::from_path(path), Some(op), "{path}");
        }
        assert_eq!(Operation::from_path("/openai/deployments/d/models"), None);
    }
}
