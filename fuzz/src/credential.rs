//! `credential`: finding the key in a request's headers, path or cookie,
//! and the edits that take it off before the request goes upstream. Every
//! request runs this on what the client chose to send.
//!
//! The input is text, one request per file so that seeds read as requests:
//!
//! ```text
//! h=x-api-key h=x-key bearer q=api_key c=tg_key   <- where keys are read
//! /v1/items?api_key=tg_...#top                     <- :path
//! x-api-key: tg_...                                <- headers, name: value
//! cookie: theme=dark; tg_key="tg_..."
//! ```
//!
//! Lines are split on `\n` only and header values are raw bytes, so they
//! may hold anything, invalid UTF-8 included. Every configuration is tried,
//! not only those `validate` accepts: a property that held only for valid
//! ones would say so here.

use tollgate_core::credential::{
    bearer_token, cookies_without, path_without_param, KeySources, Presented, Source,
    UNREADABLE_KEY,
};
use tollgate_core::key::KEY_PREFIX;

/// A request as the fuzz input describes it.
struct Request<'a> {
    sources: KeySources,
    path: String,
    /// In the order sent; the filter sees the first value of a name.
    headers: Vec<(&'a str, &'a [u8])>,
}

impl<'a> Request<'a> {
    fn parse(input: &'a [u8]) -> Self {
        let mut lines = input.split(|&b| b == b'\n');
        let sources = lines.next().map_or_else(KeySources::default, sources);
        let path = String::from_utf8_lossy(lines.next().unwrap_or(b"/")).into_owned();
        let headers = lines
            .filter_map(|line| {
                let colon = line.iter().position(|&b| b == b':')?;
                let name = core::str::from_utf8(&line[..colon]).ok()?;
                Some((name, &line[colon + 1..]))
            })
            .collect();
        Self {
            sources,
            path,
            headers,
        }
    }

    fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| *value)
    }

    fn text(&self, name: &str) -> Option<&'a str> {
        self.header(name)
            .and_then(|value| core::str::from_utf8(value).ok())
    }
}

/// `h=<header>`, `bearer`, `q=<parameter>`, `c=<cookie>`, space-separated.
fn sources(line: &[u8]) -> KeySources {
    let line = String::from_utf8_lossy(line);
    let mut sources = KeySources {
        headers: Vec::new(),
        bearer: false,
        query: None,
        cookie: None,
    };
    for word in line.split(' ') {
        match word.split_once('=') {
            Some(("h", name)) => sources.headers.push(name.to_owned()),
            Some(("q", name)) => sources.query = Some(name.to_owned()),
            Some(("c", name)) => sources.cookie = Some(name.to_owned()),
            _ => sources.bearer |= word == "bearer",
        }
    }
    sources
}

pub fn check(input: &[u8]) {
    let request = Request::parse(input);
    let sources = &request.sources;
    if sources.validate().is_ok() {
        let described = sources.describe();
        assert!(described.ends_with('.'), "{described}");
        for name in &sources.headers {
            assert!(described.contains(name.as_str()), "{described}");
        }
    }
    let header = |name: &str| request.header(name);
    let found = sources.find(header, &request.path);
    if let Some((key, from)) = &found {
        found_where_it_says(&request, key, *from);
    }
    let came_from = found.as_ref().map(|(_, from)| *from);
    let removals = sources.removals(header, came_from);
    let upstream_path = sources.upstream_path(&request.path);

    // A key that reads is taken off wherever it came from.
    if let Some((key, from)) = &found {
        if !matches!(key, Presented::Unreadable) {
            match from {
                Source::Header => assert!(!removals.headers.is_empty()),
                Source::Bearer => assert!(removals.authorization),
                Source::Query => assert!(upstream_path.is_some()),
                Source::Cookie => assert!(removals.cookie.is_some()),
            }
        }
    }
    // Every configured key header that was sent goes, in configured order.
    let sent: Vec<&str> = sources
        .headers
        .iter()
        .filter(|name| request.header(name).is_some())
        .map(String::as_str)
        .collect();
    assert_eq!(removals.headers, sent);
    // A bearer token that looks like a Tollgate key never stays, even with
    // bytes that are not UTF-8 in it.
    if sources.bearer {
        let keyish = request.header("authorization").is_some_and(|value| {
            let value = value.trim_ascii();
            value.len() > 7
                && value[..7].eq_ignore_ascii_case(b"bearer ")
                && value[7..].trim_ascii().starts_with(KEY_PREFIX.as_bytes())
        });
        assert!(!keyish || removals.authorization);
    }
    if let (Some(name), Some(cookie)) = (&sources.cookie, &removals.cookie) {
        assert!(!has_cookie(cookie, name), "{cookie:?} still has {name}");
    }

    bearer(&request);
    if let Some(name) = &sources.query {
        query(&request.path, name);
    }
    if let Some(name) = &sources.cookie {
        cookies(request.text("cookie").unwrap_or(""), name);
    }
    // The configuration's own names, as parameters and cookies to cut.
    for name in &sources.headers {
        query(&request.path, name);
        cookies(request.text("cookie").unwrap_or(""), name);
    }
}

/// The key is a trimmed, non-blank piece of the place it says it came
/// from, and the places before it in order had none.
fn found_where_it_says(request: &Request<'_>, key: &Presented<'_>, from: Source) {
    let text = key.as_str();
    assert!(!text.is_empty());
    if let Presented::Unreadable = key {
        assert_eq!(text, UNREADABLE_KEY);
        assert!(matches!(from, Source::Header | Source::Bearer));
        return;
    }
    // Header values and cookies are trimmed of whitespace; a query value is
    // taken as sent (a `+` decodes to a space, and no key has one), and so
    // is a quoted cookie value, between its quotes (what it holds then is
    // no key either: a key has no whitespace or control character).
    if from == Source::Header || from == Source::Bearer {
        assert_eq!(text, text.trim(), "{from:?} key {text:?} is not trimmed");
    }
    let within = |haystack: &[u8]| {
        haystack
            .windows(text.len())
            .any(|window| window == text.as_bytes())
    };
    let sources = &request.sources;
    match (from, key) {
        (Source::Header, Presented::Borrowed(_)) => {
            let name = sources
                .headers
                .iter()
                .find(|name| request.header(name).is_some_and(not_blank))
                .expect("a header key comes from a configured header");
            let value = request.header(name).unwrap_or_default();
            assert_eq!(core::str::from_utf8(value).map(str::trim), Ok(text));
        }
        (Source::Bearer, Presented::Borrowed(_)) => {
            assert!(sources.bearer);
            let authorization = request.text("authorization").unwrap_or_default();
            assert_eq!(bearer_token(authorization), Some(text));
        }
        (Source::Query, Presented::Borrowed(_)) => assert!(within(request.path.as_bytes())),
        (Source::Query, Presented::Decoded(_)) => {}
        (Source::Cookie, Presented::Borrowed(_)) => {
            assert!(within(
                request.text("cookie").unwrap_or_default().as_bytes()
            ));
        }
        (from, key) => panic!("{key:?} cannot come from {from:?}"),
    }
}

/// Whether a header value holds more than whitespace: Unicode's when it is
/// text, ASCII's when it is not (then it is a key sent but unreadable).
fn not_blank(value: &[u8]) -> bool {
    match core::str::from_utf8(value) {
        Ok(text) => !text.trim().is_empty(),
        Err(_) => !value.trim_ascii().is_empty(),
    }
}

/// `Bearer <token>`: the token is a trimmed, non-empty part of the header.
fn bearer(request: &Request<'_>) {
    let Some(authorization) = request.text("authorization") else {
        return;
    };
    if let Some(token) = bearer_token(authorization) {
        assert!(!token.is_empty() && token == token.trim());
        assert!(authorization.contains(token));
        let scheme = authorization.trim().split(' ').next().unwrap_or_default();
        assert!(scheme.eq_ignore_ascii_case("bearer"));
    }
}

/// `path_without_param`: the parameter is gone, everything else stays.
fn query(path: &str, name: &str) {
    let (before_fragment, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (path, None),
    };
    let named = |pair: &str| pair.split_once('=').map_or(pair, |(k, _)| k) == name;
    let pairs = before_fragment
        .split_once('?')
        .map(|(_, query)| query.split('&').collect::<Vec<_>>());
    let Some(cut) = path_without_param(path, name) else {
        assert!(!pairs.is_some_and(|pairs| pairs.iter().any(|p| named(p))));
        return;
    };
    let pairs = pairs.expect("a parameter was cut, so there was a query");
    assert!(pairs.iter().any(|p| named(p)));
    // Cutting again finds nothing: no pair of that name is left.
    assert_eq!(path_without_param(&cut, name), None, "{path:?} -> {cut:?}");
    let base = before_fragment.split('?').next().unwrap_or_default();
    assert!(cut.starts_with(base));
    if let Some(fragment) = fragment {
        assert!(cut.ends_with(&format!("#{fragment}")));
    }
    let kept: Vec<&str> = pairs
        .into_iter()
        .filter(|p| !named(p) && !p.is_empty())
        .collect();
    let cut_query = cut
        .split('#')
        .next()
        .and_then(|p| p.split_once('?'))
        .map_or(Vec::new(), |(_, q)| q.split('&').collect());
    assert_eq!(cut_query, kept, "{path:?} -> {cut:?}");
}

/// Whether `cookies` has a cookie called `name`, as `cookies_without` sees it.
fn has_cookie(cookies: &str, name: &str) -> bool {
    cookies.split(';').map(str::trim).any(|pair| {
        !pair.is_empty() && pair.split_once('=').map_or(pair, |(k, _)| k.trim()) == name
    })
}

/// `cookies_without`: that cookie gone, the rest as they were, and a
/// second cut changes nothing.
fn cookies(cookies: &str, name: &str) {
    let cut = cookies_without(cookies, name);
    assert!(!has_cookie(&cut, name), "{cookies:?} -> {cut:?}");
    assert_eq!(cookies_without(&cut, name), cut);
    let kept: Vec<&str> = cookies
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k.trim()) != name)
        .collect();
    assert_eq!(cut, kept.join("; "));
}
