//! Both directions held to serde_json: what it writes, what it accepts.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;

use super::write::{push_decimal, Quoted};
use super::*;
use crate::testing::{agree, limit, mutations_agree, plan, reads_back, round_trip};
use crate::wire::*;

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

fn full_limit() -> WireLimit {
    limit("per-second", u64::MAX, 0)
        .with_burst(7)
        .per_tenant()
        .per_envoy()
}

fn minimal_limit() -> WireLimit {
    limit("", 0, 1)
}

fn full_scope() -> WireScope {
    WireScope {
        methods: Some(vec!["GET".into(), "POST".into()]),
        path_prefix: Some("/v1/\"odd\"\\path/é😀".into()),
    }
}

fn full_plan() -> WirePlan {
    WirePlan {
        id: "plan_0aZ9bY8cX7dW6eV5fU4g".into(),
        name: "Pro \u{7f}\u{1f}".into(),
        limits: vec![full_limit(), minimal_limit()],
        monthly_quota: Some(u64::MAX),
        route_costs: vec![
            WireRouteCost {
                methods: Some(vec!["DELETE".into()]),
                path_prefix: Some("/expensive".into()),
                cost: 10,
            },
            WireRouteCost {
                methods: None,
                path_prefix: None,
                cost: 0,
            },
        ],
    }
}

fn minimal_plan() -> WirePlan {
    plan("", "", vec![])
}

fn full_anonymous() -> WireAnonymous {
    WireAnonymous {
        routes: vec![full_scope(), WireScope::default()],
        plan_id: Some("plan_anon".into()),
    }
}

fn full_key() -> WireKey {
    WireKey {
        hash: "ab".repeat(32),
        id: "key_1".into(),
        tenant_id: "tnt_1".into(),
        plan_id: "plan_1".into(),
        active: true,
        expires_at_ms: Some(u64::MAX),
        scopes: Some(vec![full_scope(), WireScope::default()]),
        allowed_cidrs: Some(vec!["10.0.0.0/8".into(), "::1/128".into()]),
        limits: Some(vec![full_limit()]),
        monthly_quota: Some(0),
        billing_anchor_day: Some(u8::MAX),
    }
}

fn full_sync() -> SyncResponse {
    SyncResponse {
        version: u64::MAX,
        plans: vec![full_plan(), minimal_plan()],
        keys: vec![full_key(), WireKey::default()],
        deleted_keys: vec!["cd".repeat(32)],
        deleted_plans: vec!["plan_old".into()],
        anonymous: Some(full_anonymous()),
        next: Some("5.key_1".into()),
    }
}

fn full_key_usage() -> KeyUsage {
    KeyUsage {
        key_id: "key_é".into(),
        allowed: u64::MAX,
        cost: 3,
        denied: counts(&[("rate_limited", 2), ("quota_exceeded", 0)]),
        last_used_ms: Some(1_700_000_000_000),
    }
}

fn full_batch() -> UsageBatch {
    UsageBatch {
        batch_id: "18c-1-42".into(),
        reporter_id: "18c-1".into(),
        standings_since: u64::MAX,
        keys: vec![full_key_usage(), KeyUsage::default()],
        unattributed: counts(&[("invalid_api_key", 4), ("anonymous", 9), ("\"odd\"", 1)]),
        dropped: 5,
        leases_applied: 77,
    }
}

fn full_receipt() -> UsageReceipt {
    UsageReceipt {
        standings: vec![
            QuotaStanding {
                key_hash: "ef".repeat(32),
                period_start_ms: 1_700_000_000_000,
                others_used: u64::MAX,
            },
            QuotaStanding::default(),
        ],
        cursor: 12,
        more: true,
        leases: Some(FleetLeases {
            generation: u64::MAX,
            seq: 3,
            valid_ms: 10_000,
            default_share: 65_536,
            grants: vec![
                ShareGrant {
                    key_hash: Some("ab".repeat(32)),
                    tenant_id: None,
                    share: 0,
                },
                ShareGrant {
                    key_hash: None,
                    tenant_id: Some("ten_1".into()),
                    share: 21_845,
                },
            ],
            slices: vec![QuotaSlice {
                key_hash: "cd".repeat(32),
                period_start_ms: 1_700_000_000_000,
                cap: u64::MAX,
            }],
        }),
    }
}

#[test]
fn written_types_are_written_as_serde_json_writes_them_and_read_back() {
    round_trip(&full_limit());
    round_trip(&minimal_limit());
    round_trip(&full_scope());
    round_trip(&WireScope::default());
    round_trip(&full_plan());
    round_trip(&minimal_plan());
    round_trip(&full_anonymous());
    round_trip(&WireAnonymous::default());
    round_trip(&full_key_usage());
    round_trip(&KeyUsage::default());
    round_trip(&full_batch());
    round_trip(&UsageBatch::default());
    round_trip(&LimitScope::Key);
    round_trip(&LimitScope::Tenant);
    round_trip(&counts(&[]));
    round_trip(&counts(&[("b", 1), ("a", 0), ("é", u64::MAX)]));
    round_trip(&vec![0u64, 1, u64::MAX]);
    round_trip(&Vec::<String>::new());
    round_trip(&0u8);
    round_trip(&u8::MAX);
    round_trip(&true);
    round_trip(&false);
}

#[test]
fn read_types_read_what_serde_json_writes() {
    reads_back(&full_key());
    reads_back(&WireKey::default());
    reads_back(&full_sync());
    reads_back(&SyncResponse::default());
    reads_back(&full_receipt());
    reads_back(&UsageReceipt::default());
    reads_back(&Some(3u64));
    reads_back(&None::<u64>);
}

#[test]
fn strings_are_escaped_and_unescaped_as_serde_json_does() {
    let every_control: String = (0u8..0x20).map(char::from).collect();
    let strings = [
        String::new(),
        "plain".into(),
        "quote \" backslash \\ slash / del \u{7f}".into(),
        every_control,
        "é ü ß € 中文".into(),
        "astral 😀 𝄞 \u{10ffff}".into(),
        "\u{ffff}\u{fffe}\u{d7ff}\u{e000}".into(),
        "\0".into(),
        // Escapes between multi-byte characters: runs are copied whole.
        "é\"中\n😀\\x\u{1}ü".into(),
    ];
    for text in &strings {
        round_trip(text);
        round_trip(&WireScope {
            methods: Some(vec![text.clone(), text.clone()]),
            path_prefix: Some(text.clone()),
        });
        round_trip(&counts(&[(text.as_str(), 1)]));
    }
    // Escapes serde_json reads but never writes.
    for (input, text) in [
        (r#""\/""#, "/"),
        (r#""\u00e9\u00E9""#, "éé"),
        (r#""\ud83d\ude00""#, "😀"),
        (r#""\uD834\uDD1E!""#, "𝄞!"),
        (r#""a\u0000b""#, "a\0b"),
        (r#""\b\f\n\r\t""#, "\u{8}\u{c}\n\r\t"),
    ] {
        assert!(agree::<String>(input.as_bytes()), "{input}");
        assert_eq!(from_slice::<String>(input.as_bytes()).unwrap(), text);
    }
}

/// Accepted (`true`) or refused, by us and by serde_json alike.
type Cases<'a> = &'a [(&'a [u8], bool)];

fn check<T>(cases: Cases<'_>)
where
    T: FromJson + DeserializeOwned + PartialEq + Debug,
{
    for (input, accepted) in cases {
        let what = String::from_utf8_lossy(input);
        assert_eq!(agree::<T>(input), *accepted, "{what}");
    }
}

#[test]
fn scalars_accept_and_refuse_what_serde_json_does() {
    check::<u64>(&[
        (b"0", true),
        (b"7", true),
        (b"18446744073709551615", true),
        (b" \t\r\n42 \t\r\n", true),
        (b"18446744073709551616", false),
        (b"99999999999999999999999", false),
        (b"1.0", false),
        (b"1.", false),
        (b".5", false),
        (b"1e3", false),
        (b"1E3", false),
        (b"1e-3", false),
        (b"-1", false),
        (b"-0", false),
        (b"+1", false),
        (b"01", false),
        (b"00", false),
        (b"0x1", false),
        (b"\"1\"", false),
        (b"null", false),
        (b"true", false),
        (b"", false),
        (b"   ", false),
        (b"1 2", false),
        (b"1,", false),
        (b"\xef\xbb\xbf1", false),
        (b"\x0c1", false),
    ]);
    check::<u8>(&[
        (b"0", true),
        (b"255", true),
        (b"256", false),
        (b"0255", false),
        (b"-1", false),
        (b"18446744073709551616", false),
    ]);
    check::<bool>(&[
        (b"true", true),
        (b" false ", true),
        (b"True", false),
        (b"tru", false),
        (b"truee", false),
        (b"1", false),
        (b"null", false),
    ]);
    check::<Option<u64>>(&[
        (b"null", true),
        (b" null ", true),
        (b"5", true),
        (b"nul", false),
        (b"nulll", false),
        (b"Null", false),
        (b"-5", false),
    ]);
    check::<String>(&[
        (b"\"\"", true),
        (b"\"caf\xc3\xa9\"", true),
        (b"\"\xf0\x9f\x98\x80\"", true),
        (b"\"\x7f\"", true),
        (b"\"\\ud83d\\ude00\"", true),
        (b"\"\\u0041\"", true),
        (b"\"abc", false),
        (b"\"", false),
        (b"abc", false),
        (b"'abc'", false),
        (b"\"a\nb\"", false),
        (b"\"a\tb\"", false),
        (b"\"a\x00b\"", false),
        (b"\"a\x1fb\"", false),
        (b"\"\\ud83d\"", false),
        (b"\"\\ude00\"", false),
        (b"\"\\ud83dx\"", false),
        (b"\"\\ud83d\\n\"", false),
        (b"\"\\ud83d\\u0041\"", false),
        (b"\"\\ud83d\\ud83d\"", false),
        (b"\"\\ude00\\ud83d\"", false),
        (b"\"\\u12\"", false),
        (b"\"\\u12g4\"", false),
        (b"\"\\x41\"", false),
        (b"\"\\'\"", false),
        (b"\"\\\"", false),
        (b"\"\\", false),
        (b"\"\xff\"", false),
        (b"\"\xc3\"", false),
        (b"\"\xc3\\u00a9\"", false),
        (b"\"\xed\xa0\xbd\"", false),
        (b"\"\xc0\xaf\"", false),
        (b"\"\\u00e9\xff\"", false),
        (b"\"a\" \"b\"", false),
        (b"null", false),
        (b"1", false),
    ]);
    check::<LimitScope>(&[
        (b"\"key\"", true),
        (b"\"tenant\"", true),
        (b"\"k\\u0065y\"", true),
        (b"{\"tenant\":null}", true),
        (b" { \"key\" : null } ", true),
        (b"\"Key\"", false),
        (b"\"KEY\"", false),
        (b"\"global\"", false),
        (b"0", false),
        (b"1", false),
        (b"null", false),
        (b"{\"key\":0}", false),
        (b"{\"key\":null,}", false),
        (b"{\"key\":null,\"tenant\":null}", false),
        (b"{\"key\"}", false),
        (b"{}", false),
        (b"[\"key\"]", false),
    ]);
    check::<Vec<u64>>(&[
        (b"[]", true),
        (b" [ ] ", true),
        (b"[1,2,3]", true),
        (b"[ 1 , 2 ]", true),
        (b"[1,]", false),
        (b"[,1]", false),
        (b"[,]", false),
        (b"[1 2]", false),
        (b"[1", false),
        (b"[1,", false),
        (b"[", false),
        (b"]", false),
        (b"[null]", false),
        (b"{}", false),
        (b"null", false),
        (b"[1]]", false),
    ]);
    check::<BTreeMap<String, u64>>(&[
        (b"{}", true),
        (b"{\"a\":1,\"b\":2}", true),
        (b"{\"a\":1,\"a\":2}", true),
        (b"{\"\":0}", true),
        (b"{\"a\\u0000\":0}", true),
        (b"{\"a\":1,}", false),
        (b"{,}", false),
        (b"{\"a\"1}", false),
        (b"{\"a\":}", false),
        (b"{a:1}", false),
        (b"{1:1}", false),
        (b"{\"a\":-1}", false),
        (b"{\"a\":null}", false),
        (b"{\"\xff\":1}", false),
        (b"{\"\\ud800\":1}", false),
        (b"[]", false),
        (b"{\"a\":1", false),
        (b"{", false),
    ]);
}

#[test]
fn structs_accept_and_refuse_what_serde_json_does() {
    check::<WireLimit>(&[
        (br#"{"name":"a","max":1,"window_seconds":2}"#, true),
        (br#"{"window_seconds":2,"max":1,"name":"a"}"#, true),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"burst":null,"scope":"key"}"#,
            true,
        ),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"burst":3,"scope":"tenant"}"#,
            true,
        ),
        (
            b" {\t\"name\"\r\n:\n\"a\" ,\"max\" : 1 , \"window_seconds\":2 } \n",
            true,
        ),
        (br#"{"n\u0061me":"a","max":1,"window_seconds":2}"#, true),
        (br#"{"name":"a","max":1}"#, false),
        (br#"{"name":"a","max":1,"window_seconds":null}"#, false),
        (br#"{"name":null,"max":1,"window_seconds":2}"#, false),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"scope":null}"#,
            false,
        ),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"extra":1}"#,
            false,
        ),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"extra":null}"#,
            false,
        ),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"Name":"a"}"#,
            false,
        ),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"name":"b"}"#,
            false,
        ),
        (
            br#"{"name":"a","max":1,"window_seconds":2,"burst":1,"burst":null}"#,
            false,
        ),
        (br#"{"name":"a","max":1.0,"window_seconds":2}"#, false),
        (br#"{"name":"a","max":1e3,"window_seconds":2}"#, false),
        (br#"{"name":"a","max":-1,"window_seconds":2}"#, false),
        (br#"{"name":"a","max":01,"window_seconds":2}"#, false),
        (
            br#"{"name":"a","max":18446744073709551616,"window_seconds":2}"#,
            false,
        ),
        (br#"{"name":"a","max":"1","window_seconds":2}"#, false),
        (br#"{"name":"a","max":1,"window_seconds":2,}"#, false),
        (br#"{"name":"a","max":1,"window_seconds":2}x"#, false),
        (br#"{"name":"a","max":1,"window_seconds":2}{}"#, false),
        (br#"{"name":"a","max":1,"window_seconds":2"#, false),
        (br#"{"name":"a","max":1,"window_seconds""#, false),
        (br#"{"name":"a""max":1,"window_seconds":2}"#, false),
        (br#"{"name":"a",,"max":1,"window_seconds":2}"#, false),
        (br#"{name:"a","max":1,"window_seconds":2}"#, false),
        (b"{\"name\":\"a\nb\",\"max\":1,\"window_seconds\":2}", false),
        (b"{\"name\":\"\xff\",\"max\":1,\"window_seconds\":2}", false),
        (
            b"{\"name\":\"\\udc00\",\"max\":1,\"window_seconds\":2}",
            false,
        ),
        (
            b"{\"na\xffme\":\"a\",\"max\":1,\"window_seconds\":2}",
            false,
        ),
        (b"", false),
        (b" ", false),
        (b"{}", false),
        (b"null", false),
        (b"[]", false),
        // serde_json also reads a struct as the array of its fields in
        // order, the absent ones at the end optional.
        (br#"["a",1,2]"#, true),
        (br#"["a",1,2,3,"tenant"]"#, true),
        (br#"[ "a" , 1 , 2 , null ]"#, true),
        (br#"["a",1]"#, false),
        (br#"["a",1,2,3,"tenant",5]"#, false),
        (br#"["a",1,2,]"#, false),
        (br#"["a",1,2,3,"tenant",]"#, false),
        (br#"[1,"a",2]"#, false),
    ]);
    check::<WireKey>(&[
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":true}"#,
            true,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":false,"billing_anchor_day":255}"#,
            true,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":true,"billing_anchor_day":256}"#,
            false,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":1}"#,
            false,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":null}"#,
            false,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p"}"#,
            false,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":true,"scopes":null,"limits":null,"allowed_cidrs":null}"#,
            true,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":true,"scopes":[{}],"limits":[],"allowed_cidrs":[]}"#,
            true,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":true,"scopes":[null]}"#,
            false,
        ),
        (
            br#"{"hash":"h","id":"k","tenant_id":"t","plan_id":"p","active":true,"scopes":[{"methods":null,"path":"/"}]}"#,
            false,
        ),
        (br#"["h","k","t","p",true]"#, true),
        (br#"["h","k","t","p"]"#, false),
    ]);
    check::<SyncResponse>(&[
        (br#"{"version":0}"#, true),
        (br#"{"version":1,"anonymous":null,"next":null}"#, true),
        (br#"{"version":1,"plans":null}"#, false),
        (br#"{"version":1,"anonymous":{}}"#, true),
        (br#"{"version":1,"anonymous":{"routes":[],"plan_id":null}}"#, true),
        (br#"{"version":1,"anonymous":{"routes":null}}"#, false),
        (br#"{"plans":[]}"#, false),
        (br#"{"version":1,"version":1}"#, false),
        (br#"{"version":1,"deleted_keys":["a",1]}"#, false),
        (br#"{"version":1,"plans":[{"id":"p","name":"n","limits":[]}]}"#, true),
        (br#"{"version":1,"plans":[{"id":"p","name":"n"}]}"#, false),
        (
            br#"{"version":1,"plans":[{"id":"p","name":"n","limits":[],"route_costs":[{"cost":0}]}]}"#,
            true,
        ),
        (
            br#"{"version":1,"plans":[{"id":"p","name":"n","limits":[],"route_costs":[{}]}]}"#,
            false,
        ),
        (br#"[1]"#, true),
        (br#"[1,[],[],[],[],null,"n"]"#, true),
        (br#"[]"#, false),
    ]);
    check::<UsageBatch>(&[
        (br#"{"batch_id":"b"}"#, true),
        (br#"{"batch_id":"b","unattributed":{"x":1,"x":2}}"#, true),
        (
            br#"{"batch_id":"b","keys":[{"key_id":"k","denied":{"a":1,"a":5}}]}"#,
            true,
        ),
        (
            br#"{"batch_id":"b","keys":[{"key_id":"k","last_used_ms":null}]}"#,
            true,
        ),
        (br#"{"batch_id":"b","keys":[{"allowed":1}]}"#, false),
        (br#"{"batch_id":"b","dropped":null}"#, false),
        (br#"{"batch_id":"b","unattributed":null}"#, false),
        (br#"{"reporter_id":"r"}"#, false),
    ]);
    check::<UsageReceipt>(&[
        (br#"{"cursor":0}"#, true),
        (br#"{"cursor":0,"more":false,"standings":[]}"#, true),
        (br#"{"more":true}"#, false),
        (br#"{"cursor":0,"more":null}"#, false),
        (
            br#"{"cursor":0,"standings":[{"key_hash":"h","period_start_ms":1}]}"#,
            false,
        ),
        (
            br#"{"cursor":0,"standings":[{"key_hash":"h","period_start_ms":1,"others_used":2}]}"#,
            true,
        ),
    ]);
}

#[test]
fn documents_one_byte_off_get_serde_jsons_verdict() {
    mutations_agree::<SyncResponse>(&serde_json::to_vec(&full_sync()).unwrap());
    mutations_agree::<UsageBatch>(&serde_json::to_vec(&full_batch()).unwrap());
    mutations_agree::<UsageReceipt>(&serde_json::to_vec(&full_receipt()).unwrap());
}

#[test]
fn errors_say_what_and_where() {
    let error = from_slice::<WireLimit>(br#"{"name":"a","oops":1}"#).unwrap_err();
    assert_eq!(error.reason(), "unknown field");
    assert_eq!(error.to_string(), "unknown field at byte 19");
    let error = from_slice::<u64>(b"12 x").unwrap_err();
    assert_eq!(error.to_string(), "trailing characters at byte 3");
    let error = from_slice::<u64>(b"1.5").unwrap_err();
    assert_eq!(error.to_string(), "expected an integer at byte 1");
    let error = from_slice::<u64>(b"1e3").unwrap_err();
    assert_eq!(error.reason(), "expected an integer");
    let error = from_slice::<String>(b"\"ab\\ud800\"").unwrap_err();
    assert_eq!(error.reason(), "lone surrogate in a string");
}

#[test]
fn decimals_are_written_as_format_writes_them() {
    for n in [
        0,
        1,
        9,
        10,
        99,
        100,
        // Around the base-10⁸ chunks: leading zeros inside, none in front.
        99_999_999,
        100_000_000,
        100_000_001,
        1_000_000_007,
        u64::from(u32::MAX),
        10_000_000_000_000_000,
        u64::MAX - 1,
        u64::MAX,
    ] {
        let mut text = String::from("x");
        push_decimal(&mut text, n);
        assert_eq!(text, format!("x{n}"));
    }
    // Every digit count, at its edges.
    for p in (0..20).map(|e| 10u64.pow(e)) {
        for n in [p - 1, p, p + 1, p.saturating_mul(5) - 1] {
            let mut text = String::new();
            push_decimal(&mut text, n);
            assert_eq!(text, n.to_string());
        }
    }
}

#[test]
fn quoted_text_reads_as_the_debug_form_but_for_control_characters() {
    for text in ["", "per-second", "a \"b\" \\ c", "é ✓", "x'y"] {
        assert_eq!(Quoted(text).to_string(), format!("{text:?}"));
    }
    assert_eq!(Quoted("a\tb\u{1}").to_string(), r#""a\tb\u0001""#);
}
