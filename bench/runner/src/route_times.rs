//! How long the control plane took to answer the routes a soak leans on,
//! read from its own `/metrics` histograms at the end of the run: the
//! Envoy's usage reports and the admin's writes, which share SQLite's one
//! writer. A figure from the server's side, so the load generator's own
//! queueing is not in it.

use std::net::SocketAddr;

use crate::load::Conn;
use crate::Result;

/// The routes reported, as (method, route template).
pub const ROUTES: [(&str, &str); 3] = [
    ("POST", "/v1/usage"),
    ("POST", "/v1/tenants/{tenant_id}/keys"),
    ("PATCH", "/v1/keys/{id}"),
];

const HISTOGRAM: &str = "tollgate_control_plane_http_request_duration_seconds";

/// One route's answers over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTime {
    pub method: String,
    pub route: String,
    pub count: u64,
    pub mean_ms: f64,
    /// The upper bound of the histogram bucket holding the 99th percentile;
    /// `None` when it is the open-ended one.
    pub p99_at_most_ms: Option<f64>,
}

/// The [`ROUTES`]' times from the control plane at `addr`.
pub fn read(addr: SocketAddr) -> Result<Vec<RouteTime>> {
    let request = format!(
        "GET /metrics HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {}\r\n\r\n",
        crate::ADMIN_TOKEN
    );
    let answer = Conn::open(addr)?.exchange(request.as_bytes())?;
    if answer.status != 200 {
        return Err(format!("GET /metrics: {}", answer.status));
    }
    let text = String::from_utf8_lossy(&answer.body);
    Ok(ROUTES
        .iter()
        .filter_map(|(method, route)| parse(&text, method, route))
        .collect())
}

/// One route's figures from a Prometheus text exposition; `None` if it
/// was never called.
pub fn parse(text: &str, method: &str, route: &str) -> Option<RouteTime> {
    let labels = format!("route=\"{route}\",method=\"{method}\"");
    let value = |line: &str| line.rsplit(' ').next()?.parse::<f64>().ok();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let (mut sum, mut count) = (None, None);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{HISTOGRAM}_bucket{{{labels},le=\"")) {
            let le = rest.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            buckets.push((le, value(line)?));
        } else if line.starts_with(&format!("{HISTOGRAM}_sum{{{labels}}} ")) {
            sum = value(line);
        } else if line.starts_with(&format!("{HISTOGRAM}_count{{{labels}}} ")) {
            count = value(line);
        }
    }
    let (sum, count) = (sum?, count?);
    if count < 1.0 {
        return None;
    }
    let p99 = buckets
        .iter()
        .find(|(_, cumulative)| *cumulative >= 0.99 * count)
        .map(|(le, _)| *le)
        .filter(|le| le.is_finite())
        .map(|le| le * 1e3);
    Some(RouteTime {
        method: method.to_owned(),
        route: route.to_owned(),
        count: count as u64,
        mean_ms: sum / count * 1e3,
        p99_at_most_ms: p99,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_count_mean_and_the_p99_bucket() {
        let h = HISTOGRAM;
        let l = r#"route="/v1/usage",method="POST""#;
        let text = format!(
            "{h}_bucket{{{l},le=\"0.005\"}} 90\n{h}_bucket{{{l},le=\"0.025\"}} 98\n\
             {h}_bucket{{{l},le=\"0.05\"}} 99\n{h}_bucket{{{l},le=\"+Inf\"}} 100\n\
             {h}_sum{{{l}}} 0.5\n{h}_count{{{l}}} 100\n\
             {h}_count{{route=\"/v1/plans\",method=\"POST\"}} 3\n"
        );
        let t = parse(&text, "POST", "/v1/usage").unwrap();
        assert_eq!((t.count, t.mean_ms), (100, 5.0));
        assert_eq!(t.p99_at_most_ms, Some(50.0));
        assert_eq!(parse(&text, "PATCH", "/v1/keys/{id}"), None);
    }
}
