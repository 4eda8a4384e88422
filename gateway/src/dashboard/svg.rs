//! Server-side SVG line charts (loss curves, overlays of several runs): plain SVG with a
//! `<title>` and an `aria-label`, a `viewBox` so it scales to the page width, axes with
//! 1/2/5×10ⁿ ticks and a legend. No script, no fonts to fetch. Labels are escaped. The
//! model crate's `plot` module draws the same kind of figure for `model finetune`; the
//! gateway does not depend on the model crate, so this is its own small writer.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub label: String,
    /// `(x, y)` points, drawn in order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
    /// Dashed (eval curves) or solid (train curves).
    pub dashed: bool,
    /// Index into the palette (runs of an overlay share a colour for train and eval).
    pub color: usize,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];
const W: f64 = 720.0;
const H: f64 = 360.0;
const L: f64 = 64.0;
const R: f64 = 16.0;
const T: f64 = 36.0;
const B: f64 = 48.0;

/// `text` with the XML metacharacters escaped.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Ticks covering `[lo, hi]` at a 1/2/5×10ⁿ step, about `target` of them, and the step.
fn ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return (vec![lo], 1.0);
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let (a, b) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
    ((a..=b).map(|i| i as f64 * step).collect(), step)
}

fn label(v: f64, step: f64) -> String {
    let d = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.d$}")
}

/// The chart as an SVG element.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="{t}" class="chart"><title>{t}</title><rect width="{W}" height="{H}" fill="#fff"/><text x="{cx}" y="22" text-anchor="middle" font-size="15" font-family="sans-serif">{t}</text>"##,
        t = escape(title),
        cx = W / 2.0
    );
    if x0 > x1 {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-family="sans-serif" fill="#555">no points yet</text></svg>"##,
            W / 2.0,
            H / 2.0
        );
        return out;
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    (y0, y1) = ((y0 - pad).max(0.0_f64.min(y0)), y1 + pad);
    let sx = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let sy = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
    let axis = r##"stroke="#333" stroke-width="1""##;
    let _ = write!(
        out,
        r#"<line x1="{L}" y1="{yb}" x2="{xr}" y2="{yb}" {axis}/><line x1="{L}" y1="{T}" x2="{L}" y2="{yb}" {axis}/>"#,
        yb = H - B,
        xr = W - R
    );
    let font = r#"font-size="11" font-family="sans-serif""#;
    let (xt, xs) = ticks(x0, x1, 8);
    for x in xt {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" {font}>{}</text>"#,
            sx(x),
            H - B + 16.0,
            label(x, xs)
        );
    }
    let (yt, ys) = ticks(y0, y1, 6);
    for y in yt {
        let _ = write!(
            out,
            r##"<line x1="{L}" y1="{py:.1}" x2="{xr}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{tx}" y="{ty:.1}" text-anchor="end" {font}>{}</text>"##,
            label(y, ys),
            py = sy(y),
            xr = W - R,
            tx = L - 6.0,
            ty = sy(y) + 4.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" {font}>{}</text><text transform="translate(16 {}) rotate(-90)" text-anchor="middle" {font}>{}</text>"#,
        (L + W - R) / 2.0,
        H - 12.0,
        escape(x_label),
        (T + H - B) / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[s.color % PALETTE.len()];
        let d: Vec<String> = s
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        if d.len() == 1 {
            let _ = write!(
                out,
                r#"<circle cx="{}" cy="{}" r="3" fill="{color}"/>"#,
                d[0].split(',').next().unwrap_or("0"),
                d[0].split(',').nth(1).unwrap_or("0")
            );
        } else if !d.is_empty() {
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}" class="series"/>"#,
                d.join(" ")
            );
        }
        let ly = T + 8.0 + 16.0 * i as f64;
        let lx = W - R - 190.0;
        let _ = write!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}" {font}>{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_draws_each_series_and_escapes_labels() {
        let s = [
            Series {
                label: "train <b>".into(),
                points: vec![(1.0, 2.0), (2.0, 1.5), (3.0, f64::NAN), (4.0, 1.0)],
                ..Series::default()
            },
            Series {
                label: "eval".into(),
                points: vec![(0.0, 2.2), (4.0, 1.2)],
                dashed: true,
                color: 1,
            },
        ];
        let svg = line_chart("loss & more", "step", "loss", &s);
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        assert!(svg.contains("train &lt;b&gt;") && svg.contains("loss &amp; more"));
        assert!(!svg.contains("NaN"));
        assert!(line_chart("x", "s", "l", &[]).contains("no points yet"));
    }
}
