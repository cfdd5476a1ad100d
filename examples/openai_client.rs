//! A real OpenAI client (async-openai) pointed at tokentap — what a user's app does.
//!
//! Start tokentap with `cargo run --release -- --demo`, then run
//! `cargo run --example openai_client` (set `OPENAI_BASE_URL` to point elsewhere).
//! It makes one plain and one streamed chat call and prints the usage the
//! plain call reports; `curl -s localhost:8080/metrics | grep llm_` then shows
//! the same numbers.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080/v1".to_owned());
    let key = std::env::var("OPENAI_API_KEY").unwrap_or_else(|_| "sk-demo".to_owned());
    let client = Client::with_config(OpenAIConfig::new().with_api_base(&base).with_api_key(key));

    let request = CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("What is OpenTelemetry?")
            .build()?
            .into()])
        .build()?;
    let reply = client.chat().create(request.clone()).await?;
    let text = reply
        .choices
        .first()
        .and_then(|c| c.message.content.clone())
        .unwrap_or_default();
    println!("reply: {text}");
    if let Some(u) = reply.usage {
        println!(
            "usage: prompt={} completion={} total={}",
            u.prompt_tokens, u.completion_tokens, u.total_tokens
        );
    }

    let mut stream = client.chat().create_stream(request).await?;
    print!("stream: ");
    while let Some(chunk) = stream.next().await {
        for choice in chunk?.choices {
            print!("{}", choice.delta.content.unwrap_or_default());
        }
    }
    println!();
    println!(
        "metrics: {}",
        base.trim_end_matches("/v1").to_owned() + "/metrics"
    );
    Ok(())
}
