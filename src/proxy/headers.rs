//! Which headers belong to a connection rather than to the message.
//!
//! A proxy must not forward them (RFC 9110 §7.6.1): they describe one hop,
//! and passing them on would, e.g., make the upstream think the client asked
//! to keep a connection it never opened.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
/// A `static`, not a `const`: each use of a `const` array of names makes and drops a copy.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // most messages carry none: a look at each name (a standard one compares as a
    // number) costs less than nine removals by hash that find nothing (round eight)
    let any = headers
        .keys()
        .any(|k| *k == header::UPGRADE || HOP_BY_HOP.contains(k));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for h in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(h);
    }
    headers.remove(header::UPGRADE);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    v.parse().expect("value"),
                )
            })
            .collect()
    }

    #[test]
    fn each_hop_by_hop_header_goes_alone_and_the_rest_stays() {
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        for name in hop {
            let mut h = map(&[("content-type", "application/json"), (name, "x")]);
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name} stayed");
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
    }

    #[test]
    fn headers_the_connection_header_names_go_and_a_map_without_any_is_untouched() {
        let mut h = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("x-kept", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h, map(&[("x-kept", "2")]));
        let plain = map(&[("content-type", "text/plain"), ("x-hop", "1")]);
        let mut h = plain.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, plain);
    }
}
