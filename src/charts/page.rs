//! A self-contained HTML page: inline style, no script, no external asset. The `<html>` element
//! carries `data-ready="true"` (a static page is complete once loaded; the console page sets it
//! once its first data arrived), which is what the browser tests wait for.

use std::fmt::Write as _;

use super::escape;

/// The style shared by the reports and the console.
pub const STYLE: &str = r#"
:root { color-scheme: light; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
body { margin: 0 auto; max-width: 1100px; padding: 24px; color: #1b1f24; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 28px 0 8px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
p.sub { color: #57606a; margin: 0 0 16px; }
p.win { font-size: 1.05rem; background: #eef6ee; border-left: 4px solid #009E73; padding: 8px 12px; }
table { border-collapse: collapse; width: 100%; font-size: 0.9rem; margin: 8px 0 16px; }
th, td { border-bottom: 1px solid #d0d7de; padding: 4px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; }
svg.ws-chart { width: 100%; height: auto; background: #fff; border: 1px solid #d0d7de; border-radius: 6px; }
svg .ws-title { font-size: 15px; font-weight: 600; fill: #1b1f24; }
svg .ws-tick, svg .ws-legend { font-size: 11px; fill: #57606a; }
svg .ws-axis { font-size: 12px; fill: #1b1f24; }
svg .ws-grid { stroke: #eaeef2; stroke-width: 1; }
footer { color: #57606a; font-size: 0.8rem; margin-top: 32px; }
"#;

/// A page under construction.
pub struct Page {
    title: String,
    body: String,
}

impl Page {
    /// A page titled `title`, with `subtitle` under the heading.
    pub fn new(title: &str, subtitle: &str) -> Self {
        let mut body = String::new();
        let _ = write!(
            body,
            "<h1>{}</h1><p class=\"sub\">{}</p>",
            escape(title),
            escape(subtitle)
        );
        Self {
            title: title.to_string(),
            body,
        }
    }

    /// A section heading.
    pub fn heading(&mut self, text: &str) -> &mut Self {
        let _ = write!(self.body, "<h2>{}</h2>", escape(text));
        self
    }

    /// A paragraph of plain text (`class` optional).
    pub fn paragraph(&mut self, text: &str, class: Option<&str>) -> &mut Self {
        match class {
            Some(c) => {
                let _ = write!(self.body, "<p class=\"{}\">{}</p>", escape(c), escape(text));
            }
            None => {
                let _ = write!(self.body, "<p>{}</p>", escape(text));
            }
        }
        self
    }

    /// Charts side by side (SVG from [`super::BarChart::svg`] / [`super::LineChart::svg`]).
    pub fn charts(&mut self, svgs: &[String]) -> &mut Self {
        self.body.push_str("<div class=\"grid\">");
        for s in svgs {
            self.body.push_str(s);
        }
        self.body.push_str("</div>");
        self
    }

    /// A table of text cells.
    pub fn table(&mut self, headers: &[&str], rows: &[Vec<String>]) -> &mut Self {
        self.body.push_str("<table><thead><tr>");
        for h in headers {
            let _ = write!(self.body, "<th>{}</th>", escape(h));
        }
        self.body.push_str("</tr></thead><tbody>");
        for r in rows {
            self.body.push_str("<tr>");
            for c in r {
                let _ = write!(self.body, "<td>{}</td>", escape(c));
            }
            self.body.push_str("</tr>");
        }
        self.body.push_str("</tbody></table>");
        self
    }

    /// The whole document.
    pub fn finish(&self, footer: &str) -> String {
        format!(
            "<!doctype html>\n<html lang=\"en\" data-ready=\"true\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title><style>{STYLE}</style></head><body>{}<footer>{}</footer></body></html>\n",
            escape(&self.title),
            self.body,
            escape(footer)
        )
    }
}
