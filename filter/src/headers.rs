//! Header maps read in one host call and looked at in place.
//!
//! The SDK's `get_map` turns every header into two `String`s. Here the
//! host's serialized map (`crate::host::request_header_block`) is kept as
//! the one buffer the host wrote and searched where it lies.

/// A header map as the host serialized it: a `u32` count, then a `u32` key
/// length and value length per pair, then each key and value followed by a
/// NUL (proxy-wasm ABI, little-endian).
pub struct HeaderBlock {
    bytes: Vec<u8>,
}

impl HeaderBlock {
    /// The request's headers, or an empty block if the host has none to give.
    pub fn request() -> Self {
        Self::from_bytes(crate::host::request_header_block())
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }

    /// Every pair in order; stops at the first malformed one.
    pub fn pairs(&self) -> Pairs<'_> {
        let count = read_u32(&self.bytes, 0).unwrap_or(0);
        // A count the buffer cannot hold is a malformed block: no pairs.
        let (count, data) = match count.checked_mul(8).and_then(|n| n.checked_add(4)) {
            Some(data) if data <= self.bytes.len() => (count, data),
            _ => (0, 0),
        };
        Pairs {
            bytes: &self.bytes,
            index: 0,
            count,
            data,
        }
    }

    /// The first value of `name` (lower case), if it is valid UTF-8.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.raw(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `name` (lower case) as the bytes it came in.
    pub fn raw(&self, name: &str) -> Option<&[u8]> {
        self.pairs()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.pairs().any(|(n, _)| n == name.as_bytes())
    }
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(raw)).ok()
}

pub struct Pairs<'a> {
    bytes: &'a [u8],
    index: usize,
    count: usize,
    /// Where the next key starts.
    data: usize,
}

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let sizes = 4 + 8 * self.index;
        let key_len = read_u32(self.bytes, sizes)?;
        let value_len = read_u32(self.bytes, sizes + 4)?;
        let key_end = self.data.checked_add(key_len)?;
        let value_start = key_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let key = self.bytes.get(self.data..key_end)?;
        let value = self.bytes.get(value_start..value_end)?;
        self.data = value_end.checked_add(1)?;
        self.index += 1;
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn pairs_are_read_in_place_in_order() {
        let block = HeaderBlock::from_bytes(serialize(&[
            (":method", "GET"),
            (":path", "/v1/things?x=1"),
            ("x-api-key", "tg_abc"),
            ("empty", ""),
            ("x-api-key", "second"),
        ]));
        assert_eq!(block.pairs().count(), 5);
        assert_eq!(block.get(":path"), Some("/v1/things?x=1"));
        assert_eq!(block.get("x-api-key"), Some("tg_abc"));
        assert_eq!(block.get("empty"), Some(""));
        assert!(block.contains("empty"));
        assert_eq!(block.get("authorization"), None);
    }

    #[test]
    fn a_value_that_is_not_utf8_is_there_as_bytes() {
        let mut bytes = serialize(&[("x-api-key", "tg_?")]);
        let at = bytes.len() - 2;
        bytes[at] = 0xff;
        let block = HeaderBlock::from_bytes(bytes);
        assert_eq!(block.get("x-api-key"), None);
        assert_eq!(block.raw("x-api-key"), Some(&b"tg_\xff"[..]));
        let sources = tollgate_core::credential::KeySources::default();
        let (key, _) = sources.find(|n| block.raw(n), "/").unwrap();
        assert_eq!(key, tollgate_core::credential::Presented::Unreadable);
    }

    #[test]
    fn a_truncated_or_lying_block_yields_what_is_whole() {
        let bytes = serialize(&[("a", "1"), ("b", "2")]);
        let cut = HeaderBlock::from_bytes(bytes[..bytes.len() - 2].to_vec());
        assert_eq!(cut.get("a"), Some("1"));
        assert_eq!(cut.get("b"), None);
        let mut lying = serialize(&[("a", "1")]);
        lying[0] = 200;
        assert_eq!(HeaderBlock::from_bytes(lying).pairs().count(), 0);
        assert_eq!(HeaderBlock::from_bytes(Vec::new()).pairs().count(), 0);
        let huge = HeaderBlock::from_bytes(u32::MAX.to_le_bytes().to_vec());
        assert_eq!(huge.pairs().count(), 0);
    }
}
