//! Where a request carries its API key, and how to take it off the request.
//!
//! Each API has its own convention, so the plugin configuration names the
//! places to look: header names (`x-api-key` by default), `Authorization:
//! Bearer` (on by default), and, opted into, a query parameter (the
//! `?api_key=` of the systems Tollgate replaces) or a cookie. They are
//! looked at in that order and the first one carrying a key wins.
//!
//! A key never travels upstream: every configured place that carries one is
//! taken off the request before it goes on: the query parameter out of
//! `:path` ([`KeySources::upstream_path`]), the headers and the cookie out
//! of `Cookie` ([`KeySources::removals`]).

use crate::json::write::Quoted;

/// The places a key may be, as configured; `Default` is `x-api-key`, then
/// `Authorization: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySources {
    /// Header names, lower case, looked at in order.
    pub headers: Vec<String>,
    /// Whether `Authorization: Bearer <key>` is looked at.
    pub bearer: bool,
    /// A query parameter's name, if keys may come in the URL.
    pub query: Option<String>,
    /// A cookie's name, if keys may come in a cookie.
    pub cookie: Option<String>,
}

impl Default for KeySources {
    fn default() -> Self {
        Self {
            headers: vec!["x-api-key".to_owned()],
            bearer: true,
            query: None,
            cookie: None,
        }
    }
}

/// Most header names one configuration may list.
pub const MAX_KEY_HEADERS: usize = 8;
/// Longest header, parameter or cookie name accepted.
const MAX_NAME_LEN: usize = 64;

/// Why a [`KeySources`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSources(pub String);

impl core::fmt::Display for InvalidSources {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An RFC 9110 token of at most 64 characters: what header names and
/// cookie names are made of.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl KeySources {
    /// Refuses what could never match, or would take headers Envoy or
    /// Tollgate itself owns.
    pub fn validate(&self) -> Result<(), InvalidSources> {
        let bad = |why: String| Err(InvalidSources(why));
        if self.headers.len() > MAX_KEY_HEADERS {
            return bad(format!(
                "api_key.headers lists {} headers, at most {MAX_KEY_HEADERS}",
                self.headers.len()
            ));
        }
        for (i, name) in self.headers.iter().enumerate() {
            if !is_token(name) || name.bytes().any(|b| b.is_ascii_uppercase()) {
                return bad(format!(
                    "api_key.headers: {} is not a lower-case header name (1 to {MAX_NAME_LEN} token characters)",
                    Quoted(name)
                ));
            }
            if matches!(name.as_str(), "authorization" | "cookie" | "host")
                || crate::response::STRIPPED_REQUEST_HEADERS.contains(&name.as_str())
            {
                return bad(format!(
                    "api_key.headers: {} cannot carry a key (use \"bearer\" or \"cookie\" for those)",
                    Quoted(name)
                ));
            }
            if self
                .headers
                .get(..i)
                .is_some_and(|seen| seen.contains(name))
            {
                return bad(format!("api_key.headers lists {} twice", Quoted(name)));
            }
        }
        if let Some(query) = &self.query {
            let ok = !query.is_empty()
                && query.len() <= MAX_NAME_LEN
                && query
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if !ok {
                return bad(format!(
                    "api_key.query: {} is not a query parameter name (1 to {MAX_NAME_LEN} of A-Z a-z 0-9 - . _ ~)",
                    Quoted(query)
                ));
            }
        }
        if let Some(cookie) = &self.cookie {
            if !is_token(cookie) {
                return bad(format!(
                    "api_key.cookie: {} is not a cookie name (1 to {MAX_NAME_LEN} token characters)",
                    Quoted(cookie)
                ));
            }
        }
        if self.headers.is_empty() && !self.bearer && self.query.is_none() && self.cookie.is_none()
        {
            return bad("api_key names no place to read a key from".to_owned());
        }
        Ok(())
    }

    /// Where to send a key, for the `missing_api_key` refusal's detail.
    pub fn describe(&self) -> String {
        let mut places: Vec<String> = self
            .headers
            .iter()
            .map(|h| format!("the {h} header"))
            .collect();
        if self.bearer {
            places.push("as Authorization: Bearer <key>".to_owned());
        }
        if let Some(q) = &self.query {
            places.push(format!("the {q} query parameter"));
        }
        if let Some(c) = &self.cookie {
            places.push(format!("the {c} cookie"));
        }
        let mut text = String::from("Send your API key in ");
        let last = places.len().saturating_sub(1);
        for (i, place) in places.iter().enumerate() {
            if i > 0 {
                text.push_str(if i == last { " or " } else { ", " });
            }
            text.push_str(place);
        }
        text.push('.');
        text
    }

    /// The key the request presents, from the first configured place that
    /// has one. `header` gives a request header's first value by lower-case
    /// name, as the bytes it came in (a value need not be UTF-8); `path` is
    /// `:path`, query included. A key header or bearer token that is not
    /// UTF-8 is a key that was sent but cannot be read:
    /// [`Presented::Unreadable`], refused as invalid rather than missing.
    pub fn find<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a [u8]>,
        path: &'a str,
    ) -> Option<(Presented<'a>, Source)> {
        let text = |name: &str| header(name).and_then(|v| core::str::from_utf8(v).ok());
        for name in &self.headers {
            if let Some(key) = header(name).and_then(presented) {
                return Some((key, Source::Header));
            }
        }
        if self.bearer {
            if let Some(key) = header("authorization").and_then(bearer_bytes) {
                if let Some(key) = presented(key) {
                    return Some((key, Source::Bearer));
                }
            }
        }
        if let Some(name) = &self.query {
            if let Some(key) = query_value(path, name) {
                return Some((key, Source::Query));
            }
        }
        if let Some(name) = &self.cookie {
            if let Some(key) = text("cookie").and_then(|c| cookie_value(c, name)) {
                return Some((Presented::Borrowed(key), Source::Cookie));
            }
        }
        None
    }

    /// What to change on an admitted request so that no key goes upstream:
    /// every configured place that carries something is emptied, whichever
    /// one the key came from, except an `Authorization` that is not a
    /// Tollgate key when the key came from elsewhere (it belongs to the
    /// upstream then).
    /// `path` without the key's query parameter, if it carried one: what
    /// goes upstream, and what scopes and route costs see.
    pub fn upstream_path(&self, path: &str) -> Option<String> {
        self.query
            .as_deref()
            .and_then(|name| path_without_param(path, name))
    }

    /// The other edits [`KeySources::upstream_path`] leaves: headers and
    /// the cookie.
    pub fn removals<'a>(
        &'a self,
        header: impl Fn(&str) -> Option<&'a [u8]>,
        key_from: Option<Source>,
    ) -> Removals<'a> {
        let text = |name: &str| header(name).and_then(|v| core::str::from_utf8(v).ok());
        let key_came_from_bearer = key_from == Some(Source::Bearer);
        let headers = self
            .headers
            .iter()
            .filter(|name| header(name).is_some())
            .map(String::as_str)
            .collect();
        // On the raw bytes: a token that looks like a key goes even when
        // something else in the header is not UTF-8.
        let authorization = self.bearer
            && header("authorization")
                .and_then(bearer_bytes)
                .is_some_and(|k| {
                    key_came_from_bearer || k.starts_with(crate::key::KEY_PREFIX.as_bytes())
                });
        let cookie = self.cookie.as_deref().and_then(|name| {
            let cookies = text("cookie")?;
            cookie_value(cookies, name)?;
            Some(cookies_without(cookies, name))
        });
        Removals {
            headers,
            authorization,
            cookie,
        }
    }
}

/// Which kind of place a key was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Header,
    Bearer,
    Query,
    Cookie,
}

/// A presented key: where it lies in the request, or decoded from a
/// percent-encoded query parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented<'a> {
    Borrowed(&'a str),
    Decoded(String),
    /// Sent, but not UTF-8: never a valid key.
    Unreadable,
}

impl Presented<'_> {
    /// The key as text; an unreadable key is [`UNREADABLE_KEY`], which no
    /// key parses as.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Borrowed(key) => key,
            Self::Decoded(key) => key,
            Self::Unreadable => UNREADABLE_KEY,
        }
    }
}

/// What [`Presented::as_str`] gives for a key that is not UTF-8.
pub const UNREADABLE_KEY: &str = "\u{FFFD}";

/// A header value as a presented key: trimmed, `None` when blank,
/// [`Presented::Unreadable`] when not UTF-8.
fn presented(value: &[u8]) -> Option<Presented<'_>> {
    match core::str::from_utf8(value) {
        Ok(text) => Some(text.trim())
            .filter(|k| !k.is_empty())
            .map(Presented::Borrowed),
        Err(_) => Some(value.trim_ascii())
            .filter(|k| !k.is_empty())
            .map(|_| Presented::Unreadable),
    }
}

/// [`bearer_token`] on raw bytes: the token may be anything, the scheme
/// must be `Bearer`.
fn bearer_bytes(authorization: &[u8]) -> Option<&[u8]> {
    let value = authorization.trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// The edits [`KeySources::removals`] asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removals<'a> {
    /// Key headers to remove.
    pub headers: Vec<&'a str>,
    /// Whether to remove `Authorization`.
    pub authorization: bool,
    /// The new `Cookie` (empty: remove the header), when the key cookie was in it.
    pub cookie: Option<String>,
}

/// `<token>` of `Bearer <token>`, scheme case-insensitive.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The query string's `&`-separated pairs.
fn query_pairs(path: &str) -> impl Iterator<Item = &str> {
    let path = path.split_once('#').map_or(path, |(p, _)| p);
    path.split_once('?').map_or("", |(_, q)| q).split('&')
}

/// The first non-empty value of parameter `name`, percent-decoded.
fn query_value<'a>(path: &'a str, name: &str) -> Option<Presented<'a>> {
    query_pairs(path).find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k != name || v.is_empty() {
            return None;
        }
        if !v.contains(['%', '+']) {
            return Some(Presented::Borrowed(v));
        }
        percent_decode(v).map(Presented::Decoded)
    })
}

/// `%XX` and `+` decoded; `None` if that is not UTF-8 or a `%` is malformed.
fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            b'+' => out.push(b' '),
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

/// `path` without any `name=` parameter, or `None` if it has none; the
/// other parameters keep their order and bytes.
pub fn path_without_param(path: &str, name: &str) -> Option<String> {
    let (path, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (path, None),
    };
    let (base, query) = path.split_once('?')?;
    let is_key = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
    if !query.split('&').any(|pair| is_key(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_key(pair) && !pair.is_empty())
        .collect();
    let mut out = String::with_capacity(path.len());
    out.push_str(base);
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    Some(out)
}

/// The `Cookie` header's `name=value` pairs, trimmed.
fn cookie_pairs(cookies: &str) -> impl Iterator<Item = (&str, &str)> {
    cookies.split(';').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        Some((k.trim(), v.trim()))
    })
}

/// The first non-empty value of cookie `name`, without quotes.
fn cookie_value<'a>(cookies: &'a str, name: &str) -> Option<&'a str> {
    cookie_pairs(cookies).find_map(|(k, v)| {
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (k == name && !v.is_empty()).then_some(v)
    })
}

/// `cookies` without any cookie called `name`; empty if none is left.
pub fn cookies_without(cookies: &str, name: &str) -> String {
    let kept: Vec<&str> = cookies
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k.trim()) != name
        })
        .collect();
    kept.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a [u8]> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_bytes())
        }
    }

    fn raw_headers<'a>(pairs: &'a [(&'a str, &'a [u8])]) -> impl Fn(&str) -> Option<&'a [u8]> + 'a {
        move |name| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    #[test]
    fn a_key_that_is_not_utf8_is_sent_but_unreadable() {
        let s = KeySources::default();
        let find = |pairs: &[(&str, &[u8])]| {
            s.find(raw_headers(pairs), "/")
                .map(|(key, from)| (key.as_str().to_owned(), from))
        };
        let unreadable = UNREADABLE_KEY.to_owned();
        let found = find(&[("x-api-key", b"tg_\xff")]);
        assert_eq!(found, Some((unreadable.clone(), Source::Header)));
        assert!(crate::key::ApiKey::parse(UNREADABLE_KEY).is_err());
        let found = find(&[("authorization", b"bearer \xff\x80 ")]);
        assert_eq!(found, Some((unreadable, Source::Bearer)));
        // Blank, or a scheme other than Bearer, is still no key.
        assert_eq!(find(&[("x-api-key", b" ")]), None);
        assert_eq!(find(&[("authorization", b"Basic \xff")]), None);
        assert_eq!(find(&[("authorization", b"Bearer ")]), None);
        // A readable key header still wins over an unreadable bearer token.
        let found = find(&[("x-api-key", b"k"), ("authorization", b"Bearer \xff")]);
        assert_eq!(found, Some(("k".to_owned(), Source::Header)));
    }

    fn all() -> KeySources {
        KeySources {
            headers: vec!["x-api-key".into(), "x-key".into()],
            bearer: true,
            query: Some("api_key".into()),
            cookie: Some("tg_key".into()),
        }
    }

    fn found(sources: &KeySources, pairs: &[(&str, &str)], path: &str) -> Option<String> {
        sources
            .find(headers(pairs), path)
            .map(|(p, _)| p.as_str().to_owned())
    }

    #[test]
    fn the_first_configured_place_with_a_key_wins() {
        let s = all();
        let every = [
            ("x-key", "b"),
            ("x-api-key", "a"),
            ("authorization", "Bearer c"),
            ("cookie", "x=1; tg_key=e"),
        ];
        assert_eq!(found(&s, &every, "/p?api_key=d").as_deref(), Some("a"));
        assert_eq!(found(&s, &every[..1], "/").as_deref(), Some("b"));
        assert_eq!(found(&s, &every[2..], "/?api_key=d").as_deref(), Some("c"));
        assert_eq!(found(&s, &every[3..], "/?api_key=d").as_deref(), Some("d"));
        assert_eq!(found(&s, &every[3..], "/?x=1").as_deref(), Some("e"));
        // Empty values are no key: the next place is looked at.
        let blank = [("x-api-key", " "), ("authorization", "Bearer ")];
        assert_eq!(
            found(&s, &blank, "/?api_key=&api_key=f").as_deref(),
            Some("f")
        );
        assert_eq!(found(&s, &[], "/"), None);
    }

    #[test]
    fn the_refusal_says_where_this_gateway_reads_keys() {
        assert_eq!(
            KeySources::default().describe(),
            "Send your API key in the x-api-key header or as Authorization: Bearer <key>."
        );
        assert_eq!(
            all().describe(),
            "Send your API key in the x-api-key header, the x-key header, \
             as Authorization: Bearer <key>, the api_key query parameter or the tg_key cookie."
        );
    }

    #[test]
    fn the_defaults_read_x_api_key_and_bearer_only() {
        let s = KeySources::default();
        assert!(s.validate().is_ok());
        assert_eq!(
            found(&s, &[("authorization", "bearer  k ")], "/").as_deref(),
            Some("k")
        );
        let (_, from) = s
            .find(headers(&[("authorization", "Bearer k")]), "/")
            .unwrap();
        assert_eq!(from, Source::Bearer);
        assert_eq!(found(&s, &[("authorization", "Basic k")], "/"), None);
        assert_eq!(found(&s, &[("cookie", "api_key=k")], "/?api_key=k"), None);
    }

    #[test]
    fn query_keys_are_percent_decoded_and_fragments_ignored() {
        let s = all();
        assert_eq!(
            found(&s, &[], "/?api_key=tg%5Fab").as_deref(),
            Some("tg_ab")
        );
        assert_eq!(found(&s, &[], "/?api_key=%zz"), None);
        assert_eq!(found(&s, &[], "/#?api_key=x"), None);
        assert_eq!(found(&s, &[], "/?a=1#api_key=x"), None);
    }

    #[test]
    fn the_key_parameter_is_cut_out_of_the_path() {
        let cut = |p: &str| path_without_param(p, "api_key");
        assert_eq!(cut("/a?api_key=k").as_deref(), Some("/a"));
        assert_eq!(cut("/a?x=1&api_key=k&y=2").as_deref(), Some("/a?x=1&y=2"));
        assert_eq!(cut("/a?api_key=k&api_key=j&y").as_deref(), Some("/a?y"));
        assert_eq!(cut("/a?api_key&y=%20").as_deref(), Some("/a?y=%20"));
        assert_eq!(cut("/a?x=1&api_key=k#frag").as_deref(), Some("/a?x=1#frag"));
        assert_eq!(cut("/a?x=api_key"), None);
        assert_eq!(cut("/a?api_keys=k"), None);
        assert_eq!(cut("/api_key=k"), None);
    }

    #[test]
    fn the_key_cookie_is_cut_out_of_the_cookie_header() {
        assert_eq!(cookies_without("a=1; tg_key=k; b=2", "tg_key"), "a=1; b=2");
        assert_eq!(cookies_without("tg_key=k", "tg_key"), "");
        assert_eq!(
            cookies_without("tg_key_x=1;tg_key=\"k\"", "tg_key"),
            "tg_key_x=1"
        );
        assert_eq!(cookie_value("a=1; tg_key=\"k\"", "tg_key"), Some("k"));
        assert_eq!(cookie_value("tg_key=", "tg_key"), None);
    }

    #[test]
    fn removals_empty_every_place_that_carries_a_key() {
        let s = all();
        let pairs = [
            ("x-api-key", "tg_a"),
            ("authorization", "Bearer upstream-token"),
            ("cookie", "tg_key=k; theme=dark"),
        ];
        let r = s.removals(headers(&pairs), Some(Source::Header));
        assert_eq!(r.headers, vec!["x-api-key"]);
        assert!(!r.authorization, "someone else's bearer token stays");
        assert_eq!(
            s.upstream_path("/p?api_key=k&q=1").as_deref(),
            Some("/p?q=1")
        );
        assert_eq!(r.cookie.as_deref(), Some("theme=dark"));
        let r = s.removals(
            headers(&[("authorization", "Bearer x")]),
            Some(Source::Bearer),
        );
        assert!(r.authorization && r.headers.is_empty() && r.cookie.is_none());
        assert!(s.upstream_path("/").is_none());
        let r = s.removals(headers(&[("authorization", "Bearer tg_x")]), None);
        assert!(r.authorization, "a Tollgate key never goes upstream");
        // Found by fuzzing: a byte that is not UTF-8 after the token kept
        // the header from being read as text, so the token went upstream.
        let not_utf8: &[u8] = b"Bearer tg_x \xff";
        let r = s.removals(
            |name| (name == "authorization").then_some(not_utf8),
            Some(Source::Header),
        );
        assert!(r.authorization, "a Tollgate key never goes upstream");
        let defaults = KeySources::default();
        let r = defaults.removals(headers(&[("cookie", "tg_key=k")]), None);
        assert_eq!(r, Removals::default());
        assert!(defaults.upstream_path("/?api_key=k").is_none());
    }

    #[test]
    fn names_that_cannot_work_are_refused() {
        let with = |f: &dyn Fn(&mut KeySources)| {
            let mut s = KeySources::default();
            f(&mut s);
            s.validate()
        };
        assert!(with(&|s| s.headers = vec!["X-Api-Key".into()]).is_err());
        assert!(with(&|s| s.headers = vec!["x api".into()]).is_err());
        assert!(with(&|s| s.headers = vec![String::new()]).is_err());
        assert!(with(&|s| s.headers = vec!["authorization".into()]).is_err());
        assert!(with(&|s| s.headers = vec!["x-tenant-id".into()]).is_err());
        assert!(with(&|s| s.headers = vec!["a".into(), "a".into()]).is_err());
        assert!(with(&|s| s.headers = (0..9).map(|i| format!("h{i}")).collect()).is_err());
        assert!(with(&|s| s.query = Some("a&b".into())).is_err());
        assert!(with(&|s| s.query = Some(String::new())).is_err());
        assert!(with(&|s| s.cookie = Some("a=b".into())).is_err());
        assert!(with(&|s| {
            s.headers.clear();
            s.bearer = false;
        })
        .is_err());
        assert!(with(&|s| {
            s.headers.clear();
            s.bearer = false;
            s.cookie = Some("k".into());
        })
        .is_ok());
    }
}
