//! Writing, byte for byte as serde_json's `to_vec` writes: no whitespace,
//! fields in declaration order, `skip_serializing_if` fields left out.

use std::collections::BTreeMap;

/// A type written as serde_json writes its `Serialize` derive.
pub trait ToJson {
    fn write_json(&self, out: &mut String);
}

/// An object being written: each field says whether serde writes it.
pub struct Object<'a> {
    out: &'a mut String,
    empty: bool,
}

impl<'a> Object<'a> {
    /// Writes the `{`.
    pub fn new(out: &'a mut String) -> Self {
        out.push('{');
        Self { out, empty: true }
    }

    /// Not inlined: it is called for every field of every type written.
    #[inline(never)]
    pub fn field(&mut self, name: &str, value: &dyn ToJson) -> &mut Self {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
        push_json_string(self.out, name);
        self.out.push(':');
        value.write_json(self.out);
        self
    }

    /// A field written only when `write` (the opposite of its
    /// `skip_serializing_if`).
    pub fn field_if(&mut self, write: bool, name: &str, value: &dyn ToJson) -> &mut Self {
        if write {
            self.field(name, value);
        }
        self
    }

    /// An `Option` field with `skip_serializing_if = "Option::is_none"`.
    pub fn option<T: ToJson>(&mut self, name: &str, value: &Option<T>) -> &mut Self {
        if let Some(value) = value {
            self.field(name, value);
        }
        self
    }

    /// Writes the `}`.
    pub fn end(&mut self) {
        self.out.push('}');
    }
}

impl ToJson for u64 {
    fn write_json(&self, out: &mut String) {
        push_decimal(out, *self);
    }
}

impl ToJson for u8 {
    fn write_json(&self, out: &mut String) {
        push_decimal(out, u64::from(*self));
    }
}

impl ToJson for bool {
    fn write_json(&self, out: &mut String) {
        out.push_str(if *self { "true" } else { "false" });
    }
}

impl ToJson for String {
    fn write_json(&self, out: &mut String) {
        push_json_string(out, self);
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn write_json(&self, out: &mut String) {
        Each(self.iter()).write_json(out);
    }
}

/// The items of an iterator, written as a JSON array.
pub(crate) struct Each<I>(pub I);

impl<'a, T: ToJson + 'a, I: Iterator<Item = &'a T> + Clone> ToJson for Each<I> {
    fn write_json(&self, out: &mut String) {
        out.push('[');
        for (i, value) in self.0.clone().enumerate() {
            if i > 0 {
                out.push(',');
            }
            value.write_json(out);
        }
        out.push(']');
    }
}

/// A borrowed string, written as a JSON string.
pub(crate) struct Text<'a>(pub &'a str);

impl ToJson for Text<'_> {
    fn write_json(&self, out: &mut String) {
        push_json_string(out, self.0);
    }
}

impl<T: ToJson> ToJson for BTreeMap<String, T> {
    fn write_json(&self, out: &mut String) {
        let mut object = Object::new(out);
        for (name, value) in self {
            object.field(name, value);
        }
        object.end();
    }
}

/// Appends `n` in decimal, as JSON and the rate-limit headers write it.
/// `core::fmt` costs several times as much on wasm32, and the headers are
/// written on every admitted request (some fifteen numbers). `n` is cut
/// into base-10⁸ chunks with `u64` arithmetic (at most two divisions) and
/// each chunk's digits are taken off by multiplying ([`div10`]). In V8 that
/// is no faster than a `u64` division per digit (`cargo xtask bench --vm`,
/// 2026-12-06), but `filter.wasm` is 1.7 KB smaller with it.
pub(crate) fn push_decimal(text: &mut String, n: u64) {
    const CHUNK: u64 = 100_000_000;
    let mut digits = [0u8; 20];
    let mut slots = digits.iter_mut().rev();
    let mut used = 0;
    let mut rest = n;
    loop {
        let last = rest < CHUNK;
        let mut chunk = u32::try_from(rest % CHUNK).unwrap_or(0);
        rest /= CHUNK;
        // A chunk below the first is written whole, leading zeros and all.
        let mut width = if last { 1 } else { 8 };
        while width > 0 || (last && chunk > 0) {
            let tenth = div10(chunk);
            if let Some(slot) = slots.next() {
                *slot = b'0' + u8::try_from(chunk - tenth * 10).unwrap_or(0);
            }
            chunk = tenth;
            used += 1;
            width -= usize::from(width > 0);
        }
        if last {
            break;
        }
    }
    let start = digits.len().saturating_sub(used);
    let written = digits.get(start..).unwrap_or_default();
    text.push_str(std::str::from_utf8(written).unwrap_or_default());
}

/// `x / 10` for any `u32`, by a multiplication and a shift (exact: the
/// multiplier is ⌈2³⁵ / 10⌉ and `x < 2³²`).
fn div10(x: u32) -> u32 {
    u32::try_from((u64::from(x) * 0xCCCC_CCCD) >> 35).unwrap_or(0)
}

/// `text` in double quotes, escaped as a JSON string: how a message names
/// the value it refuses. Not `{:?}`: the debug form of a `str` brings std's
/// Unicode tables and debug formatting into `filter.wasm`, 7.6 KB of it
/// (2026-12-07). The two write the same but for control characters.
pub struct Quoted<'a>(pub &'a str);

impl core::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut out = String::with_capacity(self.0.len() + 2);
        push_json_string(&mut out, self.0);
        f.write_str(&out)
    }
}

/// Appends `text` as a JSON string, escaped as serde_json escapes. What
/// needs no escape is copied a run at a time: the leader writes a key id per
/// key counted, thousands to a report, on a thread requests may share.
pub(crate) fn push_json_string(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut run = 0;
    for (i, &b) in text.as_bytes().iter().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..0x20 => "\\u00",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `i` is on a character boundary.
        out.push_str(text.get(run..i).unwrap_or_default());
        out.push_str(escape);
        if escape == "\\u00" {
            for nibble in [b >> 4, b & 15] {
                let digit = HEX.get(usize::from(nibble)).copied().unwrap_or(b'0');
                out.push(char::from(digit));
            }
        }
        run = i + 1;
    }
    out.push_str(text.get(run..).unwrap_or_default());
    out.push('"');
}
