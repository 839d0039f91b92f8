//! JSON for the filter without serde: the wire types and a few shapes of
//! the filter's own, read and written by hand.
//!
//! Why: filter.wasm's size. serde's derives are generic code, monomorphised
//! for every type and every deserializer, and with serde_json's error and
//! number machinery they were about 180 KB of a 437 KB filter. The filter
//! reads and writes only the shapes [`crate::wire`] defines, so this reads
//! exactly those, with one non-generic loop for all objects and one for all
//! arrays, and writes them byte for byte as serde_json writes them. The
//! control plane keeps serde: the wire types keep their derives, the one
//! definition both sides use.
//!
//! Reading accepts and refuses exactly what serde_json and those derives
//! do: unknown fields (`deny_unknown_fields`), duplicate and missing fields
//! are errors, `#[serde(default)]` fields and `Option`s may be absent, `null`
//! is `None`, integers have no sign, fraction, exponent or leading zero and
//! must fit, strings must be valid UTF-8 with valid escapes and surrogate
//! pairs and no raw control characters, nothing may follow the value but
//! whitespace. serde_json's two lesser-known forms read too: a struct as an
//! array of its fields in declaration order, and a unit variant as
//! `{"name":null}`. So what filters wrote into shared data with serde_json
//! still reads, and the tests hold both directions to serde_json.
//!
//! - [`read`]: [`Reader`], a cursor over the bytes, and [`FromJson`];
//! - [`mod@write`]: [`ToJson`], and the string and number writers the
//!   problem+json bodies and rate-limit headers use as well;
//! - `wire`: both for the wire types.

pub mod read;
pub mod write;

mod wire;

#[cfg(test)]
mod tests;

pub use read::{Field, Fields, FromJson, Reader};
pub(crate) use wire::write_key_usage;
pub use write::{Object, ToJson};

/// Why bytes are not the JSON of the type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    reason: &'static str,
    offset: usize,
}

impl Error {
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// Where in the input it was found.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} at byte {}", self.reason, self.offset)
    }
}

/// Reads `bytes` as one `T`, with nothing but whitespace after it.
pub fn from_slice<T: FromJson>(bytes: &[u8]) -> Result<T, Error> {
    let mut reader = Reader::new(bytes);
    let value = reader.read()?;
    reader.end()?;
    Ok(value)
}

/// `value` as serde_json's `to_vec` writes it.
pub fn to_vec<T: ToJson + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = String::new();
    value.write_json(&mut out);
    out.into_bytes()
}
