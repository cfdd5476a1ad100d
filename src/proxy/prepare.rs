//! Prepare: what the request says about the call, before anything is sent.
//!
//! The facts (operation, model, stream, sampling parameters) are read here
//! once and become the [`Call`] every later stage and every signal works
//! from. A body tokentap can't parse is still forwarded: the call just knows
//! less, and the failure is counted.

use bytes::Bytes;

use crate::call::{Call, ConversationTag, ParseFailure};
use crate::genai::attribution::Attribution;
use crate::genai::inject::request_with_usage;
use crate::genai::request::{Operation, RequestFacts};
use crate::genai::{azure, content};
use crate::route::Chosen;

/// Switches that change how a call is prepared.
#[derive(Debug, Clone, Copy)]
pub(super) struct Options<'a> {
    /// `--baggage-keys`: the caller's baggage entries recorded on the call.
    pub(super) baggage_keys: &'a [String],
    /// Ask streams that would carry no usage for it (`--no-usage-injection` turns it off).
    pub(super) usage_injection: bool,
    /// Keep prompts for the span (opt-in).
    pub(super) capture_content: bool,
}

/// A prepared call and the body to send upstream (edited only for usage injection).
pub(super) struct Prepared {
    pub(super) call: Call,
    pub(super) upstream_body: Bytes,
}

/// A new call on the `chosen` route. `Call.path` stays the client's path (the
/// `url.path` it asked for, route prefix included); the Azure deployment, when
/// the body names no model, is read from the forwarded one.
fn new_call(
    chosen: &Chosen<'_>,
    parts: &http::request::Parts,
    op: Option<Operation>,
    mut facts: RequestFacts,
    baggage_keys: &[String],
) -> Call {
    if op.is_some() && facts.model.is_none() {
        facts.model = azure::deployment(chosen.path()).map(str::to_owned);
    }
    let who =
        Attribution::from_headers(&parts.headers, baggage_keys).with_user(facts.user.as_deref());
    let route = chosen.route;
    let mut call = Call::new(
        op,
        facts,
        parts.method.to_string(),
        parts.uri.path().to_owned(),
        route.provider.clone(),
        route.upstream.host().to_owned(),
        route.upstream.port(),
    );
    call.who = who;
    call.conversation_id = parts
        .extensions
        .get::<ConversationTag>()
        .map(|t| t.0.clone());
    call
}

/// A call whose body could not be read: only the path tells what it was.
pub(super) fn unread(chosen: &Chosen<'_>, parts: &http::request::Parts, opts: Options) -> Call {
    new_call(
        chosen,
        parts,
        Operation::from_path(parts.uri.path()),
        RequestFacts::default(),
        opts.baggage_keys,
    )
}

/// The call of a WebSocket tunnel: not a model call, whatever its path.
pub(super) fn tunnel(chosen: &Chosen<'_>, parts: &http::request::Parts, opts: Options) -> Call {
    new_call(
        chosen,
        parts,
        None,
        RequestFacts::default(),
        opts.baggage_keys,
    )
}

/// Reads `body`'s facts into a new call and decides on usage injection.
pub(super) fn call(
    chosen: &Chosen<'_>,
    parts: &http::request::Parts,
    body: &Bytes,
    opts: Options,
) -> Prepared {
    let op = Operation::from_path(parts.uri.path());
    let mut parse_failure = None;
    let facts = match op {
        Some(op) if !body.is_empty() => RequestFacts::parse_for(
            op,
            body,
            parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )
        .unwrap_or_else(|_| {
            parse_failure = Some(ParseFailure::InvalidJson);
            RequestFacts::default()
        }),
        _ => RequestFacts::default(),
    };
    let inject = opts.usage_injection
        && op.is_some_and(Operation::usage_is_opt_in)
        && facts.stream
        && facts.include_usage != Some(true);
    let mut call = new_call(chosen, parts, op, facts, opts.baggage_keys);
    if let Some(f) = parse_failure {
        call.note_parse_failure(f);
    }
    if opts.capture_content {
        call.content = op.and_then(|op| content::from_request(op, body));
    }
    let upstream_body = match inject.then(|| request_with_usage(body)).flatten() {
        Some(edited) => {
            call.usage_injected = true;
            Bytes::from(edited)
        }
        None => body.clone(),
    };
    Prepared {
        call,
        upstream_body,
    }
}
