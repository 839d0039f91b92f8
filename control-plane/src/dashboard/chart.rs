//! Usage charts as SVG drawn on the server: no chart library, nothing run in
//! the browser. Each chart is a picture of a table the page also shows, so
//! the numbers are there for screen readers and for tests.

use std::fmt::Write;

/// One bar: its label and how many requests each series had in it, in the
/// order of the chart's series (allowed first, then refusals by reason).
pub struct ChartPoint {
    pub label: String,
    pub counts: Vec<u64>,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 220;
const LEFT: u32 = 48;
const BOTTOM: u32 = 28;
const TOP: u32 = 12;

/// Series colours, distinct for the common kinds of colour blindness, with
/// the legend naming each, so no series is told by colour alone.
const COLOURS: [&str; 6] = [
    "#0b5cad", "#a40e26", "#b35c00", "#6a3d9a", "#1b7e5a", "#57606a",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The colour of series `i` (the last colour for any beyond the palette).
pub fn colour(i: usize) -> &'static str {
    COLOURS.get(i).copied().unwrap_or("#57606a")
}

/// Bars of `series` stacked bottom up, with the largest total on the axis.
/// `title_id` names the element that describes the chart.
pub fn stacked_bars(series: &[String], points: &[ChartPoint], title_id: &str) -> String {
    let total = |p: &ChartPoint| p.counts.iter().fold(0u64, |a, n| a.saturating_add(*n));
    let max = points.iter().map(total).max().unwrap_or(0).max(1);
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
        let mut top = f64::from(base);
        for (s, count) in p.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let h = scale(*count);
            top -= h;
            let name = series.get(s).map_or("", String::as_str);
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{top:.1}" width="{bar:.1}" height="{h:.1}" fill="{fill}"><title>{label}: {count} {name}</title></rect>"#,
                fill = colour(s),
                label = escape(&p.label),
                name = escape(name),
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

    fn series() -> Vec<String> {
        vec!["allowed".into(), "rate_limited".into()]
    }

    #[test]
    fn bars_stack_each_series_and_scale_to_the_largest_total() {
        let points = [
            ChartPoint {
                label: "10:00".into(),
                counts: vec![30, 10],
            },
            ChartPoint {
                label: "<11>".into(),
                counts: vec![20, 0],
            },
        ];
        let svg = stacked_bars(&series(), &points, "t");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(
            svg.contains(">40</text>"),
            "the axis shows the largest total"
        );
        assert!(svg.contains("10:00: 30 allowed"));
        assert!(svg.contains("10:00: 10 rate_limited"));
        assert!(svg.contains(&format!("fill=\"{}\"", colour(1))));
        assert!(svg.contains("&lt;11&gt;") && !svg.contains("<11>"));
        assert_eq!(
            svg.matches("rate_limited</title>").count(),
            1,
            "no empty bar"
        );
    }

    #[test]
    fn an_empty_chart_is_still_a_picture() {
        let svg = stacked_bars(&series(), &[], "t");
        assert!(svg.contains(">1</text>"));
    }
}
