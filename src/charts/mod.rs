//! Charts as inline SVG, and the self-contained HTML page that holds them: what `wattserve tco
//! --html` and `wattserve bench --html` write. No script and no external asset: a report opens
//! offline, years later, in any browser.
//!
//! Every chart is an `<svg class="ws-chart">` whose data points (bars, line points) carry a
//! `data-value` attribute and a `<title>` (the tooltip), so that a test can count them and a
//! reader can hover them.

pub mod page;

use std::fmt::Write as _;

/// Colours of the series, in order (colour-blind safe: Okabe–Ito).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 64.0;

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number as a reader wants it: 3 significant digits, thousands as k/M/G.
pub fn human(v: f64) -> String {
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e4 {
        return format!("{v:.0}");
    }
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let ax = x.abs();
    let digits = if ax == 0.0 || ax >= 100.0 {
        0
    } else if ax >= 10.0 {
        1
    } else if ax >= 1.0 {
        2
    } else {
        // Three significant digits below 1.
        (2 - ax.log10().floor() as i32).clamp(2, 9) as usize
    };
    format!("{x:.digits$}{suffix}")
}

/// A "nice" step for about `n` ticks over `[0, max]`.
fn nice_step(max: f64, n: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// One named series of values.
#[derive(Debug, Clone)]
pub struct Series {
    /// Its legend.
    pub name: String,
    /// One value per category (bars) or per point (lines).
    pub values: Vec<f64>,
}

/// Bars: one group per category, one bar per series (or the series stacked).
#[derive(Debug, Clone)]
pub struct BarChart {
    /// The chart's id (an HTML id).
    pub id: String,
    /// Its title.
    pub title: String,
    /// The unit of the values (the y axis).
    pub unit: String,
    /// One label per group.
    pub categories: Vec<String>,
    /// The series.
    pub series: Vec<Series>,
    /// Stack the series instead of putting them side by side.
    pub stacked: bool,
}

/// Lines: `x` against each series' values.
#[derive(Debug, Clone)]
pub struct LineChart {
    /// The chart's id (an HTML id).
    pub id: String,
    /// Its title.
    pub title: String,
    /// The x axis.
    pub x_label: String,
    /// The unit of the values (the y axis).
    pub unit: String,
    /// The x values (shared by every series; a series may have `NaN` where it was not measured).
    pub x: Vec<f64>,
    /// The series.
    pub series: Vec<Series>,
}

fn open(out: &mut String, id: &str, title: &str) {
    let _ = write!(
        out,
        r#"<svg class="ws-chart" id="{id}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title><text x="{x}" y="22" class="ws-title">{t}</text>"#,
        id = escape(id),
        t = escape(title),
        x = LEFT,
    );
}

/// The y axis with gridlines up to `max`; returns the scale's top.
fn y_axis(out: &mut String, max: f64, unit: &str) -> f64 {
    let step = nice_step(max, 5.0);
    let top = (max / step).ceil().max(1.0) * step;
    let mut v = 0.0;
    while v <= top + step * 1e-9 {
        let y = TOP + (H - TOP - BOTTOM) * (1.0 - v / top);
        let _ = write!(
            out,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}" class="ws-grid"/><text x="{tx}" y="{ty:.1}" class="ws-tick" text-anchor="end">{label}</text>"#,
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = y + 4.0,
            label = human(v),
        );
        v += step;
    }
    let _ = write!(
        out,
        r#"<text transform="translate(14 {y}) rotate(-90)" class="ws-axis" text-anchor="middle">{u}</text>"#,
        y = TOP + (H - TOP - BOTTOM) / 2.0,
        u = escape(unit),
    );
    top
}

fn legend(out: &mut String, series: &[Series]) {
    let mut x = LEFT;
    let y = H - 14.0;
    for (i, s) in series.iter().enumerate() {
        let _ = write!(
            out,
            r#"<rect x="{x:.1}" y="{ry:.1}" width="10" height="10" fill="{c}"/><text x="{tx:.1}" y="{y:.1}" class="ws-legend">{n}</text>"#,
            ry = y - 9.0,
            c = PALETTE[i % PALETTE.len()],
            tx = x + 14.0,
            n = escape(&s.name),
        );
        x += 24.0 + 7.0 * s.name.chars().count() as f64;
    }
}

impl BarChart {
    /// The chart as SVG.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        open(&mut out, &self.id, &self.title);
        let n = self.categories.len().max(1);
        let value = |s: &Series, i: usize| s.values.get(i).copied().unwrap_or(0.0).max(0.0);
        let max = (0..n)
            .map(|i| {
                if self.stacked {
                    self.series.iter().map(|s| value(s, i)).sum::<f64>()
                } else {
                    self.series.iter().map(|s| value(s, i)).fold(0.0, f64::max)
                }
            })
            .fold(0.0, f64::max);
        let top = y_axis(&mut out, max, &self.unit);
        let plot_h = H - TOP - BOTTOM;
        let group_w = (W - LEFT - RIGHT) / n as f64;
        let bars = if self.stacked {
            1
        } else {
            self.series.len().max(1)
        };
        let bar_w = (group_w * 0.7 / bars as f64).min(48.0);
        for (i, cat) in self.categories.iter().enumerate() {
            let gx = LEFT + group_w * i as f64 + (group_w - bar_w * bars as f64) / 2.0;
            let mut base = 0.0;
            for (k, s) in self.series.iter().enumerate() {
                let v = value(s, i);
                let h = plot_h * v / top;
                let x = if self.stacked {
                    gx
                } else {
                    gx + bar_w * k as f64
                };
                let y = TOP + plot_h * (1.0 - (base + v) / top);
                let _ = write!(
                    out,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{h:.1}" fill="{c}" data-value="{v}" data-series="{sn}" data-category="{cn}"><title>{cn} — {sn}: {hv} {u}</title></rect>"#,
                    c = PALETTE[k % PALETTE.len()],
                    sn = escape(&s.name),
                    cn = escape(cat),
                    hv = human(v),
                    u = escape(&self.unit),
                );
                if self.stacked {
                    base += v;
                }
            }
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{y:.1}" class="ws-tick" text-anchor="middle">{c}</text>"#,
                x = LEFT + group_w * (i as f64 + 0.5),
                y = H - BOTTOM + 16.0,
                c = escape(&shorten(cat, (group_w / 6.5) as usize)),
            );
        }
        legend(&mut out, &self.series);
        out.push_str("</svg>");
        out
    }
}

impl LineChart {
    /// The chart as SVG (x on a log₂ scale when it spans more than a factor of 8, as
    /// concurrency levels 1, 2, 4, ... 32 do).
    pub fn svg(&self) -> String {
        let mut out = String::new();
        open(&mut out, &self.id, &self.title);
        let finite = |v: &f64| v.is_finite();
        let max = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().copied().filter(finite))
            .fold(0.0, f64::max);
        let top = y_axis(&mut out, max, &self.unit);
        let (x_min, x_max) = self
            .x
            .iter()
            .copied()
            .filter(finite)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(x), b.max(x))
            });
        let log = x_min > 0.0 && x_max / x_min > 8.0;
        let t = |x: f64| if log { x.log2() } else { x };
        let (lo, hi) = (t(x_min), t(x_max));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let plot_w = W - LEFT - RIGHT - 24.0;
        let px = |x: f64| LEFT + 12.0 + plot_w * (t(x) - lo) / span;
        let plot_h = H - TOP - BOTTOM;
        let py = |v: f64| TOP + plot_h * (1.0 - v / top);
        for &x in self.x.iter().filter(|x| x.is_finite()) {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{:.1}" class="ws-tick" text-anchor="middle">{}</text>"#,
                px(x),
                H - BOTTOM + 16.0,
                human(x)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{:.1}" class="ws-axis" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            H - BOTTOM + 34.0,
            escape(&self.x_label)
        );
        for (k, s) in self.series.iter().enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let points: Vec<(f64, f64)> = self
                .x
                .iter()
                .zip(&s.values)
                .filter(|(x, v)| x.is_finite() && v.is_finite())
                .map(|(&x, &v)| (x, v))
                .collect();
            let path: Vec<String> = points
                .iter()
                .map(|&(x, v)| format!("{:.1},{:.1}", px(x), py(v)))
                .collect();
            let _ = write!(
                out,
                r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="2"/>"#,
                path.join(" ")
            );
            for (x, v) in points {
                let _ = write!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{c}" data-value="{v}" data-series="{sn}" data-x="{x}"><title>{sn} at {xl} {hx}: {hv} {u}</title></circle>"#,
                    px(x),
                    py(v),
                    sn = escape(&s.name),
                    xl = escape(&self.x_label),
                    hx = human(x),
                    hv = human(v),
                    u = escape(&self.unit),
                );
            }
        }
        legend(&mut out, &self.series);
        out.push_str("</svg>");
        out
    }
}

fn shorten(s: &str, max: usize) -> String {
    let max = max.max(6);
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bar_and_point_carries_its_value() {
        let bars = BarChart {
            id: "b".into(),
            title: "TCO <3 years>".into(),
            unit: "USD".into(),
            categories: vec!["a".into(), "b".into()],
            series: vec![
                Series {
                    name: "hardware".into(),
                    values: vec![1.0, 2.0],
                },
                Series {
                    name: "energy".into(),
                    values: vec![0.5, 0.25],
                },
            ],
            stacked: true,
        }
        .svg();
        assert_eq!(bars.matches("data-value=").count(), 4);
        assert!(bars.contains("data-value=\"0.25\""));
        assert!(bars.contains("TCO &lt;3 years&gt;"), "titles are escaped");
        let line = LineChart {
            id: "l".into(),
            title: "throughput".into(),
            x_label: "clients".into(),
            unit: "req/s".into(),
            x: vec![1.0, 8.0, 32.0],
            series: vec![Series {
                name: "m".into(),
                values: vec![100.0, f64::NAN, 250.0],
            }],
        }
        .svg();
        assert_eq!(line.matches("data-value=").count(), 2, "NaN: not measured");
        assert!(line.starts_with("<svg class=\"ws-chart\""));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(human(0.0), "0");
        assert_eq!(human(1234.0), "1234");
        assert_eq!(human(12345.0), "12.3k");
        assert_eq!(human(2.5e6), "2.50M");
        assert_eq!(human(4.0), "4", "whole numbers stay whole");
        assert_eq!(human(0.01234), "0.0123");
        assert_eq!(nice_step(97.0, 5.0), 20.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
    }
}
