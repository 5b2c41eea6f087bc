//! The TCO report as a Markdown table (stdout), CSV (one row per option) and JSON (everything).

use std::fmt::Write as _;

use super::{option_name, TcoReport};
use crate::charts::human;

/// A dollar amount to the cent.
fn usd(v: f64) -> String {
    format!("{v:.2}")
}

/// The Markdown table, with the winners named under it.
pub fn markdown(r: &TcoReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", conditions(r));
    out.push('\n');
    let (header, rows) = table(r);
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i < 4 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out.push('\n');
    let longest = r.longest();
    if let Some(i) = r.cheapest {
        let o = &r.options[i];
        let h = o.horizon(longest);
        let _ = writeln!(
            out,
            "cheapest over {longest} years: {} (${})",
            option_name(o),
            h.map_or("-".into(), |h| usd(h.total_usd))
        );
    }
    if let Some(i) = r.lowest_carbon {
        let o = &r.options[i];
        let h = o.horizon(longest);
        let _ = writeln!(
            out,
            "lowest carbon over {longest} years: {} ({} kgCO2e)",
            option_name(o),
            h.map_or("-".into(), |h| human(h.co2e_kg))
        );
    }
    for u in &r.unmet {
        let seen: Vec<String> = u
            .levels
            .iter()
            .map(|(l, ms)| {
                format!(
                    "{l}: {}",
                    ms.map_or("not measured".into(), |m| format!("{m:.0} ms"))
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "cannot meet {} on {}: {} (levels measured: {})",
            r.slo,
            u.hardware,
            u.model,
            seen.join(", ")
        );
    }
    out
}

/// The options as a table: its header and one row per option (the Markdown and HTML reports).
pub fn table(r: &TcoReport) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec![
        "model".to_string(),
        "precision".into(),
        "hardware".into(),
        "zone".into(),
        "at objective".into(),
        "machines (y1→last)".into(),
        "kWh/year".into(),
        "kgCO2e/year (op+emb)".into(),
        "$ per 1M".into(),
    ];
    header.extend(r.horizons.iter().map(|n| format!("TCO {n}y $")));
    header.extend(r.horizons.iter().map(|n| format!("CO2e {n}y kg")));
    let rows = r
        .options
        .iter()
        .map(|o| {
            let first = &o.years[0];
            let last = o.years.last().unwrap_or(first);
            let mut row = vec![
                o.capacity.model.clone(),
                o.capacity.precision.clone(),
                o.capacity.hardware.clone(),
                o.zone.clone(),
                format!(
                    "{} {}/s ({}, {:.0} ms)",
                    human(o.capacity.per_second),
                    short_unit(o.capacity.unit),
                    o.capacity.level,
                    o.capacity.latency_ms
                ),
                format!("{}→{}", first.machines, last.machines),
                human(first.kwh),
                format!(
                    "{} ({}+{})",
                    human(first.co2e_kg()),
                    human(first.co2e_operational_kg),
                    human(first.co2e_embodied_kg)
                ),
                format!("{:.4}", o.usd_per_million),
            ];
            for n in &r.horizons {
                let h = o.horizon(*n);
                row.push(h.map_or("-".into(), |h| usd(h.total_usd)));
            }
            for n in &r.horizons {
                let h = o.horizon(*n);
                row.push(h.map_or("-".into(), |h| human(h.co2e_kg)));
            }
            row
        })
        .collect();
    (header, rows)
}

fn short_unit(unit: &str) -> &str {
    if unit == "requests" {
        "req"
    } else {
        "tok"
    }
}

/// The conditions every option was priced under, in one line (the report's heading).
pub fn conditions(r: &TcoReport) -> String {
    format!(
        "objective {}; traffic {}; peak/mean {}; growth {:.0}%/year; PUE {}; ${}/kWh; operations ${}/month",
        r.slo,
        traffic(r),
        r.peak_to_mean,
        r.growth * 100.0,
        r.pue,
        r.usd_per_kwh,
        r.ops_usd_per_month
    )
}

/// The traffic in words.
pub fn traffic(r: &TcoReport) -> String {
    if r.traffic.iter().any(|t| t.source != "given") {
        return r
            .traffic
            .iter()
            .map(|t| {
                format!(
                    "{} {} {}/day ({})",
                    t.model,
                    human(t.per_day),
                    t.unit,
                    t.source
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
    }
    let mut parts = Vec::new();
    if let Some(n) = r.requests_per_day {
        parts.push(format!("{} requests/day", human(n)));
    }
    if let Some(n) = r.tokens_per_day {
        parts.push(format!("{} output tokens/day", human(n)));
    }
    parts.join(" + ")
}

/// The CSV: one row per option, the first year's figures and each horizon's split.
pub fn csv(r: &TcoReport) -> String {
    let mut header: Vec<String> = [
        "model",
        "precision",
        "hardware",
        "zone",
        "g_co2e_per_kwh",
        "unit",
        "level",
        "units_per_s_per_machine",
        "latency_ms",
        "joules_per_unit",
        "machines_year1",
        "machines_last_year",
        "kwh_year1",
        "co2e_operational_kg_year1",
        "co2e_embodied_kg_year1",
        "usd_per_million_units",
        "co2e_g_per_million_units",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for n in &r.horizons {
        for part in [
            "hardware_usd",
            "energy_usd",
            "ops_usd",
            "total_usd",
            "co2e_kg",
            "kwh",
        ] {
            header.push(format!("tco_{n}y_{part}"));
        }
    }
    let mut out = header.join(",");
    out.push('\n');
    for o in &r.options {
        let first = &o.years[0];
        let last = o.years.last().unwrap_or(first);
        let mut row: Vec<String> = vec![
            field(&o.capacity.model),
            field(&o.capacity.precision),
            field(&o.capacity.hardware),
            field(&o.zone),
            o.g_per_kwh.to_string(),
            o.capacity.unit.to_string(),
            field(&o.capacity.level),
            o.capacity.per_second.to_string(),
            o.capacity.latency_ms.to_string(),
            o.capacity.joules_per_unit.to_string(),
            first.machines.to_string(),
            last.machines.to_string(),
            first.kwh.to_string(),
            first.co2e_operational_kg.to_string(),
            first.co2e_embodied_kg.to_string(),
            o.usd_per_million.to_string(),
            o.co2e_g_per_million.to_string(),
        ];
        for n in &r.horizons {
            match o.horizon(*n) {
                Some(h) => row.extend(
                    [
                        h.hardware_usd,
                        h.energy_usd,
                        h.ops_usd,
                        h.total_usd,
                        h.co2e_kg,
                        h.kwh,
                    ]
                    .map(|v| v.to_string()),
                ),
                None => row.extend(std::iter::repeat_n(String::new(), 6)),
            }
        }
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
