//! Reading: a cursor over the bytes, and [`FromJson`] for the types read.
//!
//! Everything generic here is a few lines that hand a closure to one of the
//! non-generic loops ([`Reader::object`], [`Reader::array`], the members of
//! a map), so each type read adds little more than its own fields.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::Error;

/// A type read from JSON as serde_json reads its `Deserialize` derive.
pub trait FromJson: Sized {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error>;
}

/// One field of a struct, by its JSON name.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    name: &'static str,
    required: bool,
}

impl Field {
    /// Must be present: no `#[serde(default)]`.
    pub const fn required(name: &'static str) -> Self {
        Self {
            name,
            required: true,
        }
    }

    /// May be absent: `#[serde(default)]`, the struct keeps its default.
    pub const fn optional(name: &'static str) -> Self {
        Self {
            name,
            required: false,
        }
    }
}

/// A struct's fields in declaration order (at most 32), and what an
/// unknown field is.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    fields: &'static [Field],
    /// Unknown fields are skipped, as without `deny_unknown_fields`.
    open: bool,
}

impl Fields {
    /// Unknown fields are errors: `#[serde(deny_unknown_fields)]`.
    pub const fn closed(fields: &'static [Field]) -> Self {
        assert!(fields.len() <= 32, "a struct's fields are a u32's bits");
        Self {
            fields,
            open: false,
        }
    }

    /// Unknown fields are skipped.
    pub const fn open(fields: &'static [Field]) -> Self {
        assert!(fields.len() <= 32, "a struct's fields are a u32's bits");
        Self { fields, open: true }
    }
}

/// A struct's field callback: the reader is at the value of field `index`.
pub type FieldFn<'r, 'a> = dyn FnMut(&mut Reader<'a>, usize) -> Result<(), Error> + 'r;
/// An array's element callback: the reader is at an element.
pub type ElementFn<'r, 'a> = dyn FnMut(&mut Reader<'a>) -> Result<(), Error> + 'r;
/// An object's member callback: the reader is at the value of the member named.
type MemberFn<'r, 'a> = dyn FnMut(&mut Reader<'a>, Cow<'a, str>) -> Result<(), Error> + 'r;

/// A cursor over JSON bytes. Each method skips the whitespace before its
/// token; the value methods read one value of their kind or fail.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// Reads one `T`.
    pub fn read<T: FromJson>(&mut self) -> Result<T, Error> {
        T::read_json(self)
    }

    /// Reads one `T` into `slot`, for a struct's field callback. Not
    /// inlined: all fields of one type share the code that drops the
    /// slot's old value, where each would have its own copy.
    #[inline(never)]
    pub fn set<T: FromJson>(&mut self, slot: &mut T) -> Result<(), Error> {
        *slot = T::read_json(self)?;
        Ok(())
    }

    /// Succeeds if only whitespace is left.
    pub fn end(mut self) -> Result<(), Error> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    fn error(&self, reason: &'static str) -> Error {
        Error {
            reason,
            offset: self.at,
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.at) {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                return Some(b);
            }
            self.at += 1;
        }
        None
    }

    /// Consumes `byte` if it is the next token.
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8, reason: &'static str) -> Result<(), Error> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    /// After a member or element: `true` at a comma, `false` at `close`.
    fn comma_or(&mut self, close: u8) -> Result<bool, Error> {
        if self.eat(b',') {
            Ok(true)
        } else if self.eat(close) {
            Ok(false)
        } else {
            Err(self.error("expected a comma or the end of the array or object"))
        }
    }

    /// `word` (a literal) at the next token.
    fn literal(&mut self, word: &[u8]) -> Result<(), Error> {
        self.peek();
        match self.bytes.get(self.at..) {
            Some(rest) if rest.starts_with(word) => {
                self.at += word.len();
                Ok(())
            }
            _ => Err(self.error("expected a value")),
        }
    }

    /// Consumes a `null` if one is next; whether it did.
    pub fn null(&mut self) -> Result<bool, Error> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    pub fn bool(&mut self) -> Result<bool, Error> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(self.error("expected a boolean")),
        }
    }

    /// A non-negative integer that fits: no sign, fraction or exponent
    /// (serde_json makes those a negative or a float, which no unsigned
    /// field takes), no leading zero.
    pub fn u64(&mut self) -> Result<u64, Error> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.error("expected a non-negative integer"));
        }
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            if n == 0 && self.at > start {
                return Err(self.error("leading zero in a number"));
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| self.error("integer too large"))?;
            self.at += 1;
        }
        if matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')) {
            return Err(self.error("expected an integer"));
        }
        Ok(n)
    }

    pub fn string(&mut self) -> Result<String, Error> {
        self.str().map(Cow::into_owned)
    }

    /// A string, borrowed unless it has escapes.
    fn str(&mut self) -> Result<Cow<'a, str>, Error> {
        self.expect(b'"', "expected a string")?;
        let start = self.at;
        let escaped = self.scan_string()?;
        let raw = self
            .bytes
            .get(start..self.at.saturating_sub(1))
            .unwrap_or_default();
        let invalid = Error {
            reason: "invalid UTF-8 in a string",
            offset: start,
        };
        if !escaped {
            return core::str::from_utf8(raw)
                .map(Cow::Borrowed)
                .map_err(|_| invalid);
        }
        let text = unescape(raw, start)?;
        String::from_utf8(text).map(Cow::Owned).map_err(|_| invalid)
    }

    /// Moves past the closing quote of a string whose opening quote was
    /// consumed, checking its escapes' syntax and that it has no control
    /// characters, as serde_json does for every string, even one skipped.
    /// Whether it has escapes.
    fn scan_string(&mut self) -> Result<bool, Error> {
        let mut escaped = false;
        loop {
            let Some(&b) = self.bytes.get(self.at) else {
                return Err(self.error("unterminated string"));
            };
            self.at += 1;
            match b {
                b'"' => return Ok(escaped),
                b'\\' => {
                    escaped = true;
                    let len = match self.bytes.get(self.at) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 1,
                        Some(b'u') => match self.bytes.get(self.at + 1..self.at + 5) {
                            Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => 5,
                            _ => 0,
                        },
                        _ => 0,
                    };
                    if len == 0 {
                        return Err(self.error("invalid escape in a string"));
                    }
                    self.at += len;
                }
                0..=0x1f => {
                    self.at -= 1;
                    return Err(self.error("control character in a string"));
                }
                _ => {}
            }
        }
    }

    /// A unit variant of `names`, as a string or as serde_json's
    /// `{"name":null}`; its index.
    pub fn variant(&mut self, names: &[&str]) -> Result<usize, Error> {
        let wrapped = self.eat(b'{');
        let name = self.str()?;
        let index = names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| self.error("unknown variant"))?;
        if wrapped {
            self.expect(b':', "expected a colon")?;
            self.literal(b"null")?;
            self.expect(b'}', "expected the end of the object")?;
        }
        Ok(index)
    }

    /// An array, each element read by `element`.
    pub fn array(&mut self, element: &mut ElementFn<'_, 'a>) -> Result<(), Error> {
        self.expect(b'[', "expected an array")?;
        self.elements(element)
    }

    /// The rest of an array whose `[` was consumed.
    fn elements(&mut self, element: &mut ElementFn<'_, 'a>) -> Result<(), Error> {
        if self.eat(b']') {
            return Ok(());
        }
        loop {
            element(self)?;
            if !self.comma_or(b']')? {
                return Ok(());
            }
        }
    }

    /// The rest of an object whose `{` was consumed, each member's value
    /// read by `member`, given the name.
    fn members(&mut self, member: &mut MemberFn<'_, 'a>) -> Result<(), Error> {
        if self.eat(b'}') {
            return Ok(());
        }
        loop {
            let name = self.str()?;
            self.expect(b':', "expected a colon")?;
            member(self, name)?;
            if !self.comma_or(b'}')? {
                return Ok(());
            }
        }
    }

    /// A struct of `fields`: `field` reads the value of the field with the
    /// index given, at most once each. An object, or as serde_json also
    /// reads a struct, an array of the fields' values in declaration order,
    /// those at the end that may be absent left out.
    pub fn object(&mut self, fields: &Fields, field: &mut FieldFn<'_, 'a>) -> Result<(), Error> {
        let list = fields.fields;
        let mut seen = 0u32;
        let bit = |index: usize| {
            u32::try_from(index)
                .ok()
                .and_then(|i| 1u32.checked_shl(i))
                .unwrap_or(0)
        };
        if self.eat(b'[') {
            let mut index = 0;
            self.elements(&mut |reader| {
                if index >= list.len() {
                    return Err(reader.error("too many values for a struct"));
                }
                seen |= bit(index);
                field(reader, index)?;
                index += 1;
                Ok(())
            })?;
        } else {
            self.expect(b'{', "expected an object")?;
            self.members(&mut |reader, name| {
                let Some(index) = list.iter().position(|f| f.name == name) else {
                    if fields.open {
                        return reader.skip_value();
                    }
                    return Err(reader.error("unknown field"));
                };
                if seen & bit(index) != 0 {
                    return Err(reader.error("duplicate field"));
                }
                seen |= bit(index);
                field(reader, index)
            })?;
        }
        let missing = list
            .iter()
            .enumerate()
            .any(|(i, f)| f.required && seen & bit(i) == 0);
        if missing {
            return Err(self.error("missing field"));
        }
        Ok(())
    }

    /// Moves past one value of any kind, checking it as serde_json checks a
    /// value it ignores: its syntax, and of its strings only what
    /// [`Self::scan_string`] checks. Not recursive, so nesting costs no stack.
    fn skip_value(&mut self) -> Result<(), Error> {
        // The brackets and braces open around the value being skipped.
        let mut open = Vec::new();
        loop {
            // At a value.
            match self.peek() {
                Some(opening @ (b'[' | b'{')) => {
                    self.at += 1;
                    // `]` and `}` are two after `[` and `{` in ASCII.
                    let close = opening + 2;
                    if !self.eat(close) {
                        if close == b'}' {
                            self.skip_key()?;
                        }
                        open.push(close);
                        continue;
                    }
                }
                Some(b'"') => {
                    self.at += 1;
                    self.scan_string()?;
                }
                Some(b'n') => self.literal(b"null")?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'-' | b'0'..=b'9') => self.skip_number()?,
                _ => return Err(self.error("expected a value")),
            }
            // After a value: close what it ends, up to the next one.
            loop {
                let Some(&close) = open.last() else {
                    return Ok(());
                };
                if self.comma_or(close)? {
                    if close == b'}' {
                        self.skip_key()?;
                    }
                    break;
                }
                open.pop();
            }
        }
    }

    /// A member's name and colon, in a value being skipped.
    fn skip_key(&mut self) -> Result<(), Error> {
        self.expect(b'"', "expected a string")?;
        self.scan_string()?;
        self.expect(b':', "expected a colon")
    }

    /// A number of any kind, as JSON's grammar has it.
    fn skip_number(&mut self) -> Result<(), Error> {
        self.eat_byte(|b| b == b'-');
        let first = self.bytes.get(self.at).copied();
        let whole = self.digits();
        if whole == 0 || (first == Some(b'0') && whole > 1) {
            return Err(self.error("invalid number"));
        }
        if self.eat_byte(|b| b == b'.') && self.digits() == 0 {
            return Err(self.error("invalid number"));
        }
        if self.eat_byte(|b| b == b'e' || b == b'E') {
            self.eat_byte(|b| b == b'+' || b == b'-');
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(())
    }

    /// Consumes the next byte, whitespace or not, if `is` it.
    fn eat_byte(&mut self, is: impl Fn(u8) -> bool) -> bool {
        let found = self.bytes.get(self.at).is_some_and(|&b| is(b));
        if found {
            self.at += 1;
        }
        found
    }

    /// Consumes digits; how many.
    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.eat_byte(|b| b.is_ascii_digit()) {}
        self.at - start
    }
}

/// The text of a string's escaped content `raw`, which [`Reader::scan_string`]
/// checked, as bytes still to be checked for UTF-8. `\u` escapes must be
/// characters: a surrogate only as the first half of a pair. `start` is
/// where `raw` is in the input, for errors.
fn unescape(raw: &[u8], start: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    let error = |rest: &[u8], reason| Error {
        reason,
        offset: start + (raw.len() - rest.len()),
    };
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some((&escape, tail)) = rest.split_first() else {
            return Err(error(rest, "invalid escape in a string"));
        };
        rest = tail;
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let mut code = hex4(&mut rest).ok_or_else(|| error(rest, "invalid escape"))?;
                if (0xD800..0xDC00).contains(&code) {
                    let low = match rest {
                        [b'\\', b'u', tail @ ..] => {
                            rest = tail;
                            hex4(&mut rest)
                        }
                        _ => None,
                    };
                    code = match low {
                        Some(low @ 0xDC00..0xE000) => {
                            0x1_0000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        }
                        _ => return Err(error(rest, "lone surrogate in a string")),
                    };
                }
                char::from_u32(code).ok_or_else(|| error(rest, "lone surrogate in a string"))?
            }
            _ => return Err(error(rest, "invalid escape in a string")),
        };
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
    }
    Ok(out)
}

/// Four hex digits from the front of `rest`.
fn hex4(rest: &mut &[u8]) -> Option<u32> {
    let (digits, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    digits
        .iter()
        .try_fold(0, |n, &d| Some(n * 16 + char::from(d).to_digit(16)?))
}

impl FromJson for u64 {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        reader.u64()
    }
}

impl FromJson for u8 {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let n = reader.u64()?;
        u8::try_from(n).map_err(|_| reader.error("integer out of range for u8"))
    }
}

impl FromJson for bool {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        reader.bool()
    }
}

impl FromJson for String {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        reader.string()
    }
}

/// `null` is `None`.
impl<T: FromJson> FromJson for Option<T> {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        if reader.null()? {
            return Ok(None);
        }
        reader.read().map(Some)
    }
}

impl<T: FromJson> FromJson for Vec<T> {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut out = Vec::new();
        reader.array(&mut |reader| {
            out.push(reader.read()?);
            Ok(())
        })?;
        Ok(out)
    }
}

/// A repeated name is no error: the last value stays, as serde's does.
impl<T: FromJson> FromJson for BTreeMap<String, T> {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut out = BTreeMap::new();
        reader.expect(b'{', "expected an object")?;
        reader.members(&mut |reader, name| {
            out.insert(name.into_owned(), reader.read()?);
            Ok(())
        })?;
        Ok(out)
    }
}
