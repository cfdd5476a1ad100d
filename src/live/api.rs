//! The live view over HTTP: the page (`/ui` and its two assets, compiled in)
//! and its data (`/api/calls`, `/api/calls/stream`, `/api/summary`).
//!
//! The page loads nothing from anywhere else (its Content-Security-Policy
//! says so to the browser too), so it works offline and leaks nothing. The
//! stream is a task per subscriber between the broadcast of calls and the
//! response body; it ends when the client leaves or tokentap shuts down, so a
//! open page never holds the shutdown's drain for its whole grace period.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::{broadcast, mpsc, watch};

use super::summary::{Window, summarize};
use super::{Entry, Live};
use crate::access::{self, Access};
use crate::genai::query;
use crate::proxy::{ResponseBody, event_stream_response, full_response};

const PAGE: &str = include_str!("../../assets/ui/index.html");
const SCRIPT: &str = include_str!("../../assets/ui/app.js");
const STYLE: &str = include_str!("../../assets/ui/app.css");

/// The page may load and connect only to this origin; inline code is refused.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// A comment line now and then keeps idle streams open through proxies.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Frames queued for one stream client before its task waits for it.
const CLIENT_QUEUE: usize = 64;

/// The live view's routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveRoute {
    Page,
    Script,
    Style,
    Calls,
    Stream,
    Summary,
}

impl LiveRoute {
    pub(crate) fn recognise(method: &Method, path: &str) -> Option<LiveRoute> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        Some(match path {
            "/ui" | "/ui/" => LiveRoute::Page,
            "/ui/app.js" => LiveRoute::Script,
            "/ui/app.css" => LiveRoute::Style,
            "/api/calls" => LiveRoute::Calls,
            "/api/calls/stream" => LiveRoute::Stream,
            "/api/summary" => LiveRoute::Summary,
            _ => return None,
        })
    }
}

/// What the live view's routes need.
pub(crate) struct LiveView {
    /// `None` with `--recent-calls 0`: the view is off.
    live: Option<Arc<Live>>,
    /// The page, with its settings filled in.
    page: Bytes,
    stop: watch::Receiver<bool>,
}

impl LiveView {
    pub(crate) fn new(
        live: Option<Arc<Live>>,
        trace_url: Option<&str>,
        capture_content: bool,
        stop: watch::Receiver<bool>,
    ) -> LiveView {
        let page = PAGE
            .replace("{{TRACE_URL}}", &escape_html(trace_url.unwrap_or("")))
            .replace("{{CAPTURE}}", if capture_content { "on" } else { "off" })
            .replace(
                "{{RECENT}}",
                &live.as_ref().map_or(0, |l| l.capacity()).to_string(),
            );
        LiveView {
            live,
            page: Bytes::from(page),
            stop,
        }
    }

    pub(crate) fn handle<B>(
        &self,
        route: LiveRoute,
        req: &Request<B>,
        access: &Access,
    ) -> Response<ResponseBody> {
        let query = req.uri().query().unwrap_or("");
        if !access.permits(req.headers()) {
            // a browser's first visit: `/ui?token=…` once, then the cookie
            return match (route, query::param(query, "token")) {
                (LiveRoute::Page, Some(t)) if access.is(&t) => with_cookie(&t),
                _ => access::unauthorized(),
            };
        }
        let Some(live) = &self.live else {
            return detail(
                StatusCode::NOT_FOUND,
                "the live view is off (--recent-calls 0)",
            );
        };
        match route {
            LiveRoute::Page => page(self.page.clone(), "text/html; charset=utf-8"),
            LiveRoute::Script => page(
                Bytes::from_static(SCRIPT.as_bytes()),
                "text/javascript; charset=utf-8",
            ),
            LiveRoute::Style => page(
                Bytes::from_static(STYLE.as_bytes()),
                "text/css; charset=utf-8",
            ),
            LiveRoute::Calls => match Filter::parse(query) {
                Ok(f) => calls(live, &f),
                Err(e) => detail(StatusCode::BAD_REQUEST, e),
            },
            LiveRoute::Stream => match Filter::parse(query) {
                Ok(f) => stream(live.subscribe(), f, self.stop.clone()),
                Err(e) => detail(StatusCode::BAD_REQUEST, e),
            },
            LiveRoute::Summary => match Window::parse(query::param(query, "window").as_deref()) {
                Ok(w) => json_reply(&summarize(live, w, SystemTime::now())),
                Err(e) => detail(StatusCode::BAD_REQUEST, e),
            },
        }
    }
}

/// Which calls a client asked for (`?limit=&model=&provider=&status=&project=&key_id=`).
#[derive(Debug, Default)]
struct Filter {
    limit: Option<usize>,
    model: Option<String>,
    provider: Option<String>,
    status: Option<String>,
    project: Option<String>,
    key_id: Option<String>,
}

impl Filter {
    fn parse(query: &str) -> Result<Filter, String> {
        let get = |k| query::param(query, k).filter(|v| !v.is_empty());
        let limit = match get("limit") {
            None => None,
            Some(n) => Some(
                n.parse::<usize>()
                    .map_err(|_| format!("limit: {n:?} is not a number"))?,
            ),
        };
        let status = get("status");
        if let Some(s) = &status {
            if s != "success" && s != "error" {
                return Err(format!("status: {s:?} is not success or error"));
            }
        }
        Ok(Filter {
            limit,
            model: get("model"),
            provider: get("provider"),
            status,
            project: get("project"),
            key_id: get("key_id"),
        })
    }

    fn matches(&self, e: &Entry) -> bool {
        let same = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| Some(w) == have)
        };
        same(&self.model, e.model.as_deref())
            && same(&self.provider, Some(&e.provider))
            && same(
                &self.status,
                Some(if e.error { "error" } else { "success" }),
            )
            && same(&self.project, e.project.as_deref())
            && same(&self.key_id, e.key_id.as_deref())
    }
}

/// `/api/calls`: the matching recent calls, newest first, as one JSON array.
fn calls(live: &Live, f: &Filter) -> Response<ResponseBody> {
    let mut body = Vec::with_capacity(4096);
    body.push(b'[');
    let limit = f.limit.unwrap_or(usize::MAX);
    for (i, e) in live
        .newest_first()
        .iter()
        .filter(|e| f.matches(e))
        .take(limit)
        .enumerate()
    {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e.json());
    }
    body.push(b']');
    no_store(full_response(
        StatusCode::OK,
        "application/json",
        Bytes::from(body),
    ))
}

/// `/api/calls/stream`: one `call` event per finished call that matches.
fn stream(
    mut calls: broadcast::Receiver<Arc<Entry>>,
    f: Filter,
    mut stop: watch::Receiver<bool>,
) -> Response<ResponseBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(CLIENT_QUEUE);
    tokio::spawn(async move {
        // the first bytes tell the client (and any proxy) the stream is live
        if !send(&tx, Bytes::from_static(b"retry: 2000\n\n"), &mut stop).await {
            return;
        }
        let mut keepalive =
            tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            let frame = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tx.closed() => return,
                _ = keepalive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                next = calls.recv() => match next {
                    Ok(e) if f.matches(&e) => event(&e),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Bytes::from(format!(": skipped {n} calls (client too slow)\n\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if !send(&tx, frame, &mut stop).await {
                return;
            }
        }
    });
    no_store(event_stream_response(rx))
}

/// Queues `frame` for the client; false once it left or tokentap is stopping.
async fn send(tx: &mpsc::Sender<Bytes>, frame: Bytes, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        sent = tx.send(frame) => sent.is_ok(),
        _ = stop.wait_for(|s| *s) => false,
    }
}

fn event(e: &Entry) -> Bytes {
    let json = e.json();
    let mut b = Vec::with_capacity(json.len() + 20);
    b.extend_from_slice(b"event: call\ndata: ");
    b.extend_from_slice(&json);
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// `/ui?token=…` with the right token: the cookie, and the page without the token in its URL.
fn with_cookie(token: &str) -> Response<ResponseBody> {
    let mut r = full_response(StatusCode::SEE_OTHER, "text/plain", Bytes::new());
    let cookie = format!(
        "{}={}; Path=/; HttpOnly; SameSite=Strict",
        access::COOKIE,
        access::cookie_value(token)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/ui"));
    no_store(r)
}

/// A compiled-in asset with the headers that keep it to this origin.
fn page(body: Bytes, content_type: &'static str) -> Response<ResponseBody> {
    let mut r = full_response(StatusCode::OK, content_type, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    no_store(r)
}

fn no_store(mut r: Response<ResponseBody>) -> Response<ResponseBody> {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_reply(v: &impl serde::Serialize) -> Response<ResponseBody> {
    match serde_json::to_vec(v) {
        Ok(b) => no_store(full_response(
            StatusCode::OK,
            "application/json",
            Bytes::from(b),
        )),
        Err(e) => detail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn detail(status: StatusCode, msg: impl Into<String>) -> Response<ResponseBody> {
    full_response(
        status,
        "application/json",
        Bytes::from(json!({ "detail": msg.into() }).to_string()),
    )
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_get_only_and_exact() {
        assert_eq!(
            LiveRoute::recognise(&Method::GET, "/ui"),
            Some(LiveRoute::Page)
        );
        assert_eq!(
            LiveRoute::recognise(&Method::GET, "/api/calls/stream"),
            Some(LiveRoute::Stream)
        );
        assert_eq!(LiveRoute::recognise(&Method::POST, "/api/calls"), None);
        assert_eq!(LiveRoute::recognise(&Method::GET, "/v1/ui"), None);
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        assert!(Filter::parse("limit=ten").is_err());
        assert!(Filter::parse("status=ok").is_err());
        let f = Filter::parse("limit=3&model=gpt-4o-mini&status=error").expect("valid");
        assert_eq!(f.limit, Some(3));
        assert_eq!(f.model.as_deref(), Some("gpt-4o-mini"));
    }

    #[test]
    fn the_trace_url_cannot_break_out_of_its_attribute() {
        assert_eq!(
            escape_html(r#"http://x/"><script>"#),
            "http://x/&quot;&gt;&lt;script&gt;"
        );
    }
}
