//! Loss-curve plots (SVG) for training runs.
//!
//! [`LossCurve`] holds the training loss per optimizer step and, optionally, held-out
//! evaluation losses at some steps; [`LossCurve::to_svg`] draws them as a self-contained
//! SVG (no fonts or scripts to fetch) with axes, "nice" tick values, axis labels, a title
//! and a legend. Non-finite losses are skipped rather than breaking the scale.
// Metrics may come from a job's stored files: index nothing.
#![deny(clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::path::Path;

/// Errors writing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The SVG could not be written.
    #[error("cannot write the plot to {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Training (and optional evaluation) losses by step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossCurve {
    /// Title drawn above the plot.
    pub title: String,
    /// `(step, loss)` of every training step.
    pub train: Vec<(f64, f64)>,
    /// `(step, loss)` of held-out evaluations.
    pub eval: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;
const TRAIN_COLOR: &str = "#1f77b4";
const EVAL_COLOR: &str = "#d62728";

/// Tick values covering `[lo, hi]` at a 1/2/5×10ⁿ step, about `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || target == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / target as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn format_tick(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl LossCurve {
    /// An empty curve with a title.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            ..Self::default()
        }
    }

    /// Ranges of the finite points: ((x_lo, x_hi), (y_lo, y_hi)), padded when degenerate.
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let points = self
            .train
            .iter()
            .chain(self.eval.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in points {
            x_lo = x_lo.min(x);
            x_hi = x_hi.max(x);
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
        if x_lo > x_hi {
            return ((0.0, 1.0), (0.0, 1.0));
        }
        if x_hi - x_lo < 1e-12 {
            x_hi = x_lo + 1.0;
        }
        if y_hi - y_lo < 1e-12 {
            y_lo -= 0.5;
            y_hi += 0.5;
        }
        let pad = (y_hi - y_lo) * 0.05;
        (
            (x_lo, x_hi),
            ((y_lo - pad).max(0.0_f64.min(y_lo)), y_hi + pad),
        )
    }

    /// The plot as an SVG document.
    pub fn to_svg(&self) -> String {
        let ((x_lo, x_hi), (y_lo, y_hi)) = self.ranges();
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w;
        let sy = |y: f64| TOP + (1.0 - (y - y_lo) / (y_hi - y_lo)) * plot_h;
        let mut s = String::new();
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        // Grid and ticks.
        let x_ticks = nice_ticks(x_lo, x_hi, 8);
        let x_step = x_ticks
            .windows(2)
            .find_map(|w| match w {
                [a, b] => Some(b - a),
                _ => None,
            })
            .unwrap_or(1.0);
        for &t in &x_ticks {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 16.0,
                format_tick(t, x_step)
            );
        }
        let y_ticks = nice_ticks(y_lo, y_hi, 6);
        let y_step = y_ticks
            .windows(2)
            .find_map(|w| match w {
                [a, b] => Some(b - a),
                _ => None,
            })
            .unwrap_or(1.0);
        for &t in &y_ticks {
            let y = sy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                y + 4.0,
                format_tick(t, y_step)
            );
        }
        // Axes and their labels.
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">optimizer step</text>"#,
            LEFT + plot_w / 2.0,
            HEIGHT - 12.0
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">loss (cross-entropy, nats/token)</text>"#,
            TOP + plot_h / 2.0
        );
        // Training curve.
        let path: Vec<String> = self
            .train
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{TRAIN_COLOR}" stroke-width="1.5" points="{}"/>"#,
                path.join(" ")
            );
        }
        // Evaluation points.
        for &(x, y) in self
            .eval
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
        {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{EVAL_COLOR}"/>"#,
                sx(x),
                sy(y)
            );
        }
        // Legend.
        let lx = LEFT + plot_w - 150.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{TRAIN_COLOR}" stroke-width="2"/><text x="{}" y="{}">train loss</text>"#,
            TOP + 16.0,
            lx + 20.0,
            TOP + 16.0,
            lx + 26.0,
            TOP + 20.0
        );
        if !self.eval.is_empty() {
            let _ = writeln!(
                s,
                r#"<circle cx="{}" cy="{}" r="4" fill="{EVAL_COLOR}"/><text x="{}" y="{}">held-out eval loss</text>"#,
                lx + 10.0,
                TOP + 34.0,
                lx + 26.0,
                TOP + 38.0
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes [`Self::to_svg`] to `path`.
    pub fn write_svg(&self, path: &Path) -> Result<(), PlotError> {
        std::fs::write(path, self.to_svg()).map_err(|source| PlotError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(
            nice_ticks(0.0, 10.0, 5),
            vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        );
        let t = nice_ticks(2.31, 6.9, 6);
        assert_eq!(t.first().copied(), Some(3.0));
        assert!(t.iter().all(|v| (2.31..=6.9).contains(v)));
    }

    #[test]
    fn svg_has_axes_labels_curve_and_eval_points() {
        let mut c = LossCurve::new("LoRA fine-tune <demo>");
        c.train = (1..=20).map(|i| (i as f64, 6.0 / i as f64)).collect();
        c.train.push((21.0, f64::NAN));
        c.eval = vec![(0.0, 6.5), (20.0, 0.5)];
        let svg = c.to_svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("optimizer step"));
        assert!(svg.contains("loss (cross-entropy"));
        assert!(svg.contains("LoRA fine-tune &lt;demo&gt;"));
        assert!(svg.contains("<polyline"));
        assert_eq!(svg.matches("<circle").count(), 3); // two points and the legend
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn empty_and_flat_curves_still_draw() {
        assert!(LossCurve::new("empty").to_svg().contains("</svg>"));
        let mut c = LossCurve::new("flat");
        c.train = vec![(1.0, 2.0)];
        assert!(!c.to_svg().contains("NaN"));
    }
}
