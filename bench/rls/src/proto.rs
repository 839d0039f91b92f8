//! The few messages of Envoy's rate limit service protocol (RLS v3) this
//! service reads and writes, declared by hand with prost's derive.
//!
//! Hand-written, not generated: generating them needs `protoc` and Envoy's
//! whole API tree (validate, udpa, core types), for five messages. The field
//! numbers are Envoy's, from `api/envoy/service/ratelimit/v3/rls.proto` and
//! `api/envoy/extensions/common/ratelimit/v3/ratelimit.proto`; the tests pin
//! them to bytes on the wire. Fields this service neither reads nor sets
//! (a descriptor's limit override, headers to add, quotas) are left out:
//! protobuf decoders skip unknown fields, and absent ones are the defaults.

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// 0 when unset, which the protocol reads as 1.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    /// One per descriptor of the request, in its order.
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus`: what
/// Envoy's `enable_x_ratelimit_headers` builds the headers from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(enumeration = "Unit", tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`, declared here rather than taken from
/// `prost-types`, a crate for one two-field message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Unit {
    Unknown = 0,
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
}

impl Unit {
    /// The unit a window of `seconds` is exactly one of; `Unknown` for any
    /// other window, which the protocol cannot express.
    pub fn of_window(seconds: u64) -> Self {
        match seconds {
            1 => Self::Second,
            60 => Self::Minute,
            3_600 => Self::Hour,
            86_400 => Self::Day,
            _ => Self::Unknown,
        }
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // Below 1e9, so it fits.
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A request as Envoy puts it on the wire, written out field by field
    /// (tag byte = field number << 3 | wire type).
    #[test]
    fn decodes_a_request_by_envoys_field_numbers() {
        let entry = [
            &[0x0a, 7][..],
            b"api_key",
            &[0x12, 2],
            b"k1", // key = 1, value = 2
        ]
        .concat();
        let descriptor = [&[0x0a, entry.len() as u8][..], &entry].concat(); // entries = 1
        let wire = [
            &[0x0a, 5][..],
            b"bench", // domain = 1
            &[0x12, descriptor.len() as u8],
            &descriptor,   // descriptors = 2
            &[0x18, 3],    // hits_addend = 3
            &[0x12, 0],    // a second, empty descriptor
            &[0x2a, 1, 0], // an unknown field 5: skipped
        ]
        .concat();
        let request = RateLimitRequest::decode(&wire[..]).unwrap();
        assert_eq!(request.domain, "bench");
        assert_eq!(request.hits_addend, 3);
        assert_eq!(request.descriptors.len(), 2);
        assert_eq!(
            request.descriptors[0].entries,
            vec![Entry {
                key: "api_key".into(),
                value: "k1".into()
            }]
        );
    }

    #[test]
    fn encodes_a_response_by_envoys_field_numbers() {
        let response = RateLimitResponse {
            overall_code: Code::OverLimit as i32,
            statuses: vec![DescriptorStatus {
                code: Code::OverLimit as i32,
                current_limit: Some(RateLimit {
                    name: "x".into(),
                    requests_per_unit: 1,
                    unit: Unit::Hour as i32,
                }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            }],
        };
        let limit = [0x08, 1, 0x10, 3, 0x1a, 1, b'x']; // per unit = 1, unit = 2, name = 3
        let status = [
            &[0x08, 2][..], // code = 1
            &[0x12, limit.len() as u8],
            &limit,               // current_limit = 2; limit_remaining = 3 is 0: not sent
            &[0x22, 2, 0x08, 60], // duration_until_reset = 4, its seconds = 1
        ]
        .concat();
        let wire = [&[0x08, 2, 0x12, status.len() as u8][..], &status].concat();
        assert_eq!(response.encode_to_vec(), wire);
    }

    #[test]
    fn units_are_whole_windows_only() {
        assert_eq!(Unit::of_window(1), Unit::Second);
        assert_eq!(Unit::of_window(3_600), Unit::Hour);
        assert_eq!(Unit::of_window(2), Unit::Unknown);
    }
}
