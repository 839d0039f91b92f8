//! [`FromJson`] for the wire types the filter reads, [`ToJson`] for those it
//! writes. Field lists follow the declarations and serde attributes in
//! [`crate::wire`]; the tests compare every type with serde_json.

use std::collections::BTreeMap;

use super::write::{push_decimal, push_json_string};
use super::{Error, Field, Fields, FromJson, Object, Reader, ToJson};
use crate::wire::{
    FleetLeases, KeyUsage, LimitScope, QuotaSlice, QuotaStanding, ShareGrant, SyncResponse,
    UsageBatch, UsageReceipt, WireAnonymous, WireKey, WireLimit, WirePlan, WireRouteCost,
    WireScope,
};

const LIMIT: Fields = Fields::closed(&[
    Field::required("name"),
    Field::required("max"),
    Field::required("window_seconds"),
    Field::optional("burst"),
    Field::optional("scope"),
    Field::optional("per_envoy"),
]);

impl FromJson for WireLimit {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = WireLimit {
            name: String::new(),
            max: 0,
            window_seconds: 0,
            burst: None,
            scope: LimitScope::Key,
            per_envoy: false,
        };
        reader.object(&LIMIT, &mut |r, field| match field {
            0 => r.set(&mut v.name),
            1 => r.set(&mut v.max),
            2 => r.set(&mut v.window_seconds),
            3 => r.set(&mut v.burst),
            4 => r.set(&mut v.scope),
            5 => r.set(&mut v.per_envoy),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for WireLimit {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .field("name", &self.name)
            .field("max", &self.max)
            .field("window_seconds", &self.window_seconds)
            .option("burst", &self.burst)
            .field_if(!self.scope.is_key(), "scope", &self.scope)
            .field_if(self.per_envoy, "per_envoy", &self.per_envoy)
            .end();
    }
}

/// `rename_all = "lowercase"`.
const SCOPES: [&str; 2] = ["key", "tenant"];

impl FromJson for LimitScope {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        Ok(match reader.variant(&SCOPES)? {
            0 => LimitScope::Key,
            _ => LimitScope::Tenant,
        })
    }
}

impl ToJson for LimitScope {
    fn write_json(&self, out: &mut String) {
        let [key, tenant] = SCOPES;
        super::write::push_json_string(
            out,
            match self {
                LimitScope::Key => key,
                LimitScope::Tenant => tenant,
            },
        );
    }
}

const ROUTE_COST: Fields = Fields::closed(&[
    Field::optional("methods"),
    Field::optional("path_prefix"),
    Field::required("cost"),
]);

impl FromJson for WireRouteCost {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = WireRouteCost {
            methods: None,
            path_prefix: None,
            cost: 0,
        };
        reader.object(&ROUTE_COST, &mut |r, field| match field {
            0 => r.set(&mut v.methods),
            1 => r.set(&mut v.path_prefix),
            2 => r.set(&mut v.cost),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for WireRouteCost {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .option("methods", &self.methods)
            .option("path_prefix", &self.path_prefix)
            .field("cost", &self.cost)
            .end();
    }
}

const PLAN: Fields = Fields::closed(&[
    Field::required("id"),
    Field::required("name"),
    Field::required("limits"),
    Field::optional("monthly_quota"),
    Field::optional("route_costs"),
]);

impl FromJson for WirePlan {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = WirePlan {
            id: String::new(),
            name: String::new(),
            limits: Vec::new(),
            monthly_quota: None,
            route_costs: Vec::new(),
        };
        reader.object(&PLAN, &mut |r, field| match field {
            0 => r.set(&mut v.id),
            1 => r.set(&mut v.name),
            2 => r.set(&mut v.limits),
            3 => r.set(&mut v.monthly_quota),
            4 => r.set(&mut v.route_costs),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for WirePlan {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .field("id", &self.id)
            .field("name", &self.name)
            .field("limits", &self.limits)
            .option("monthly_quota", &self.monthly_quota)
            .field_if(
                !self.route_costs.is_empty(),
                "route_costs",
                &self.route_costs,
            )
            .end();
    }
}

const SCOPE: Fields = Fields::closed(&[Field::optional("methods"), Field::optional("path_prefix")]);

impl FromJson for WireScope {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = WireScope::default();
        reader.object(&SCOPE, &mut |r, field| match field {
            0 => r.set(&mut v.methods),
            1 => r.set(&mut v.path_prefix),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for WireScope {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .option("methods", &self.methods)
            .option("path_prefix", &self.path_prefix)
            .end();
    }
}

const KEY: Fields = Fields::closed(&[
    Field::required("hash"),
    Field::required("id"),
    Field::required("tenant_id"),
    Field::required("plan_id"),
    Field::required("active"),
    Field::optional("expires_at_ms"),
    Field::optional("scopes"),
    Field::optional("allowed_cidrs"),
    Field::optional("limits"),
    Field::optional("monthly_quota"),
    Field::optional("billing_anchor_day"),
]);

impl FromJson for WireKey {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = WireKey::default();
        reader.object(&KEY, &mut |r, field| match field {
            0 => r.set(&mut v.hash),
            1 => r.set(&mut v.id),
            2 => r.set(&mut v.tenant_id),
            3 => r.set(&mut v.plan_id),
            4 => r.set(&mut v.active),
            5 => r.set(&mut v.expires_at_ms),
            6 => r.set(&mut v.scopes),
            7 => r.set(&mut v.allowed_cidrs),
            8 => r.set(&mut v.limits),
            9 => r.set(&mut v.monthly_quota),
            10 => r.set(&mut v.billing_anchor_day),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

const ANONYMOUS: Fields = Fields::closed(&[Field::optional("routes"), Field::optional("plan_id")]);

impl FromJson for WireAnonymous {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = WireAnonymous::default();
        reader.object(&ANONYMOUS, &mut |r, field| match field {
            0 => r.set(&mut v.routes),
            1 => r.set(&mut v.plan_id),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for WireAnonymous {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .field("routes", &self.routes)
            .option("plan_id", &self.plan_id)
            .end();
    }
}

const SYNC: Fields = Fields::closed(&[
    Field::required("version"),
    Field::optional("plans"),
    Field::optional("keys"),
    Field::optional("deleted_keys"),
    Field::optional("deleted_plans"),
    Field::optional("anonymous"),
    Field::optional("next"),
]);

impl FromJson for SyncResponse {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = SyncResponse::default();
        reader.object(&SYNC, &mut |r, field| match field {
            0 => r.set(&mut v.version),
            1 => r.set(&mut v.plans),
            2 => r.set(&mut v.keys),
            3 => r.set(&mut v.deleted_keys),
            4 => r.set(&mut v.deleted_plans),
            5 => r.set(&mut v.anonymous),
            6 => r.set(&mut v.next),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

const BATCH: Fields = Fields::closed(&[
    Field::required("batch_id"),
    Field::optional("reporter_id"),
    Field::optional("standings_since"),
    Field::optional("keys"),
    Field::optional("unattributed"),
    Field::optional("dropped"),
    Field::optional("leases_applied"),
]);

impl FromJson for UsageBatch {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = UsageBatch::default();
        reader.object(&BATCH, &mut |r, field| match field {
            0 => r.set(&mut v.batch_id),
            1 => r.set(&mut v.reporter_id),
            2 => r.set(&mut v.standings_since),
            3 => r.set(&mut v.keys),
            4 => r.set(&mut v.unattributed),
            5 => r.set(&mut v.dropped),
            6 => r.set(&mut v.leases_applied),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for UsageBatch {
    fn write_json(&self, out: &mut String) {
        Object::new(out)
            .field("batch_id", &self.batch_id)
            .field("reporter_id", &self.reporter_id)
            .field("standings_since", &self.standings_since)
            .field("keys", &self.keys)
            .field("unattributed", &self.unattributed)
            .field("dropped", &self.dropped)
            .field("leases_applied", &self.leases_applied)
            .end();
    }
}

const KEY_USAGE: Fields = Fields::closed(&[
    Field::required("key_id"),
    Field::optional("allowed"),
    Field::optional("cost"),
    Field::optional("denied"),
    Field::optional("last_used_ms"),
]);

impl FromJson for KeyUsage {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = KeyUsage::default();
        reader.object(&KEY_USAGE, &mut |r, field| match field {
            0 => r.set(&mut v.key_id),
            1 => r.set(&mut v.allowed),
            2 => r.set(&mut v.cost),
            3 => r.set(&mut v.denied),
            4 => r.set(&mut v.last_used_ms),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

impl ToJson for KeyUsage {
    fn write_json(&self, out: &mut String) {
        write_key_usage(
            out,
            &self.key_id,
            self.allowed,
            self.cost,
            &self.denied,
            self.last_used_ms,
        );
    }
}

/// A [`KeyUsage`] from its fields: a worker's tally holds them with the
/// key's id shared (`crate::usage`). Written field by field without
/// [`Object`]: a worker writes one of these for every key it counted in a
/// tick, on the thread its requests wait on, and the field names need no
/// escaping.
pub(crate) fn write_key_usage(
    out: &mut String,
    key_id: &str,
    allowed: u64,
    cost: u64,
    denied: &BTreeMap<String, u64>,
    last_used_ms: Option<u64>,
) {
    out.push_str("{\"key_id\":");
    push_json_string(out, key_id);
    out.push_str(",\"allowed\":");
    push_decimal(out, allowed);
    out.push_str(",\"cost\":");
    push_decimal(out, cost);
    out.push_str(",\"denied\":");
    if denied.is_empty() {
        out.push_str("{}");
    } else {
        denied.write_json(out);
    }
    if let Some(ms) = last_used_ms {
        out.push_str(",\"last_used_ms\":");
        push_decimal(out, ms);
    }
    out.push('}');
}

const RECEIPT: Fields = Fields::closed(&[
    Field::optional("standings"),
    Field::required("cursor"),
    Field::optional("more"),
    Field::optional("leases"),
]);

impl FromJson for UsageReceipt {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = UsageReceipt::default();
        reader.object(&RECEIPT, &mut |r, field| match field {
            0 => r.set(&mut v.standings),
            1 => r.set(&mut v.cursor),
            2 => r.set(&mut v.more),
            3 => r.set(&mut v.leases),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

const LEASES: Fields = Fields::closed(&[
    Field::required("generation"),
    Field::required("seq"),
    Field::required("valid_ms"),
    Field::required("default_share"),
    Field::optional("grants"),
    Field::optional("slices"),
]);

impl FromJson for FleetLeases {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = FleetLeases::default();
        reader.object(&LEASES, &mut |r, field| match field {
            0 => r.set(&mut v.generation),
            1 => r.set(&mut v.seq),
            2 => r.set(&mut v.valid_ms),
            3 => r.set(&mut v.default_share),
            4 => r.set(&mut v.grants),
            5 => r.set(&mut v.slices),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

const SLICE: Fields = Fields::closed(&[
    Field::required("key_hash"),
    Field::required("period_start_ms"),
    Field::required("cap"),
]);

impl FromJson for QuotaSlice {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = QuotaSlice::default();
        reader.object(&SLICE, &mut |r, field| match field {
            0 => r.set(&mut v.key_hash),
            1 => r.set(&mut v.period_start_ms),
            2 => r.set(&mut v.cap),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

const GRANT: Fields = Fields::closed(&[
    Field::optional("key_hash"),
    Field::optional("tenant_id"),
    Field::required("share"),
]);

impl FromJson for ShareGrant {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = ShareGrant::default();
        reader.object(&GRANT, &mut |r, field| match field {
            0 => r.set(&mut v.key_hash),
            1 => r.set(&mut v.tenant_id),
            2 => r.set(&mut v.share),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}

const STANDING: Fields = Fields::closed(&[
    Field::required("key_hash"),
    Field::required("period_start_ms"),
    Field::required("others_used"),
]);

impl FromJson for QuotaStanding {
    fn read_json(reader: &mut Reader<'_>) -> Result<Self, Error> {
        let mut v = QuotaStanding::default();
        reader.object(&STANDING, &mut |r, field| match field {
            0 => r.set(&mut v.key_hash),
            1 => r.set(&mut v.period_start_ms),
            2 => r.set(&mut v.others_used),
            _ => Ok(()),
        })?;
        Ok(v)
    }
}
