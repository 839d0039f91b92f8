//! Usage charts as SVG drawn on the server: no chart library, nothing run in
//! the browser. Each chart is a picture of a table the page also shows, so
//! the numbers are there for screen readers and for tests.

use std::fmt::Write;

/// One bar: requests let through and refused in one hour or day.
pub struct ChartPoint {
    pub label: String,
    pub allowed: u64,
    pub denied: u64,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 220;
const LEFT: u32 = 48;
const BOTTOM: u32 = 28;
const TOP: u32 = 12;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Stacked bars, allowed below refused, with the largest total on the axis.
/// `title_id` names the element that describes the chart.
pub fn stacked_bars(points: &[ChartPoint], title_id: &str) -> String {
    let max = points
        .iter()
        .map(|p| p.allowed.saturating_add(p.denied))
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT - 8;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let n = u32::try_from(points.len()).unwrap_or(u32::MAX).max(1);
    let slot = f64::from(plot_w) / f64::from(n);
    let bar = (slot * 0.8).max(1.0);
    let scale = |v: u64| v as f64 / max as f64 * f64::from(plot_h);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{id}" xmlns="http://www.w3.org/2000/svg">"#,
        id = escape(title_id)
    );
    let base = TOP + plot_h;
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{base}" x2="{WIDTH}" y2="{base}" stroke="#8c959f"/><text x="{x}" y="{y}" text-anchor="end">{max}</text><text x="{x}" y="{base}" text-anchor="end">0</text>"##,
        x = LEFT - 6,
        y = TOP + 10,
    );
    let every = (points.len() / 6).max(1);
    for (i, p) in points.iter().enumerate() {
        let x = f64::from(LEFT) + slot * i as f64 + (slot - bar) / 2.0;
        let allowed_h = scale(p.allowed);
        let denied_h = scale(p.denied);
        let allowed_y = f64::from(base) - allowed_h;
        let denied_y = allowed_y - denied_h;
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{allowed_y:.1}" width="{bar:.1}" height="{allowed_h:.1}" fill="#0b5cad"><title>{label}: {a} allowed</title></rect>"##,
            label = escape(&p.label),
            a = p.allowed
        );
        if p.denied > 0 {
            let _ = write!(
                svg,
                r##"<rect x="{x:.1}" y="{denied_y:.1}" width="{bar:.1}" height="{denied_h:.1}" fill="#a40e26"><title>{label}: {d} refused</title></rect>"##,
                label = escape(&p.label),
                d = p.denied
            );
        }
        if i % every == 0 {
            let _ = write!(
                svg,
                r#"<text x="{x:.1}" y="{y}">{label}</text>"#,
                y = HEIGHT - 8,
                label = escape(&p.label)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_are_scaled_to_the_largest_total_and_labels_escaped() {
        let points = [
            ChartPoint {
                label: "10:00".into(),
                allowed: 30,
                denied: 10,
            },
            ChartPoint {
                label: "<11>".into(),
                allowed: 20,
                denied: 0,
            },
        ];
        let svg = stacked_bars(&points, "t");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(
            svg.contains(">40</text>"),
            "the axis shows the largest total"
        );
        assert!(svg.contains("10:00: 30 allowed"));
        assert!(svg.contains("10:00: 10 refused"));
        assert!(svg.contains("&lt;11&gt;") && !svg.contains("<11>"));
        assert_eq!(
            svg.matches("refused</title>").count(),
            1,
            "no empty refused bar"
        );
    }

    #[test]
    fn an_empty_chart_is_still_a_picture() {
        let svg = stacked_bars(&[], "t");
        assert!(svg.contains(">1</text>"));
    }
}
