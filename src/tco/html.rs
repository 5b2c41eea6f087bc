//! The TCO report as a self-contained HTML page: the winners in one sentence each, then the
//! pictures (the total cost over the years per option, stacked into hardware, energy and
//! operations; CO2e by zone; cost per million units by precision) and the table.

use super::output::conditions;
use super::{option_name, TcoReport};
use crate::charts::page::Page;
use crate::charts::{human, BarChart, Series};

/// The page.
pub fn page(r: &TcoReport) -> String {
    let longest = r.longest();
    let mut p = Page::new(
        "wattserve TCO",
        &format!(
            "Priced under: {}. Throughput, latency and energy measured by wattserve bench.",
            conditions(r)
        ),
    );
    // An option and its sums over the longest horizon.
    let at_longest = |i: Option<usize>| {
        let o = &r.options[i?];
        Some((o, o.horizon(longest)?))
    };
    if let Some((o, h)) = at_longest(r.cheapest) {
        p.paragraph(
            &format!(
                "Cheapest over {longest} years: {} — ${:.2} (hardware ${:.2}, energy ${:.2}, operations ${:.2}); {} machine(s) in year 1.",
                option_name(o),
                h.total_usd,
                h.hardware_usd,
                h.energy_usd,
                h.ops_usd,
                o.years[0].machines
            ),
            Some("win"),
        );
    }
    if let Some((o, h)) = at_longest(r.lowest_carbon) {
        p.paragraph(
            &format!(
                "Lowest carbon over {longest} years: {} — {} kgCO2e ({} kWh).",
                option_name(o),
                human(h.co2e_kg),
                human(h.kwh)
            ),
            Some("win"),
        );
    }
    for u in &r.unmet {
        p.paragraph(
            &format!(
                "{} on {} cannot meet {} at any measured level.",
                u.model, u.hardware, r.slo
            ),
            None,
        );
    }
    let mut charts = Vec::new();
    // Cost does not depend on the grid zone: the first zone's options stand for all.
    let first_zone = r
        .options
        .first()
        .map(|o| o.zone.clone())
        .unwrap_or_default();
    let in_zone: Vec<_> = r.options.iter().filter(|o| o.zone == first_zone).collect();
    // TCO over the years, stacked: one group per model × precision × hardware × horizon.
    let mut categories = Vec::new();
    let mut parts = [
        ("hardware", Vec::new()),
        ("energy", Vec::new()),
        ("operations", Vec::new()),
    ];
    for o in &in_zone {
        for h in &o.horizons {
            categories.push(format!("{} · {}y", setup(o), h.years));
            parts[0].1.push(h.hardware_usd);
            parts[1].1.push(h.energy_usd);
            parts[2].1.push(h.ops_usd);
        }
    }
    charts.push(
        BarChart {
            id: "tco-years".into(),
            title: "Total cost of ownership by horizon (any zone)".into(),
            unit: "USD".into(),
            categories,
            series: parts
                .into_iter()
                .map(|(name, values)| Series {
                    name: name.into(),
                    values,
                })
                .collect(),
            stacked: true,
        }
        .svg(),
    );
    // CO2e by zone: one group per zone, one bar per model × precision × hardware.
    let mut zones: Vec<String> = Vec::new();
    let mut setups: Vec<String> = Vec::new();
    for o in &r.options {
        if !zones.contains(&o.zone) {
            zones.push(o.zone.clone());
        }
        let s = setup(o);
        if !setups.contains(&s) {
            setups.push(s);
        }
    }
    let per_zone = |f: &dyn Fn(&super::model::Priced) -> f64| -> Vec<Series> {
        setups
            .iter()
            .map(|s| Series {
                name: s.clone(),
                values: zones
                    .iter()
                    .map(|z| {
                        r.options
                            .iter()
                            .find(|o| &o.zone == z && &setup(o) == s)
                            .map_or(f64::NAN, f)
                    })
                    .collect(),
            })
            .collect()
    };
    charts.push(
        BarChart {
            id: "co2e-by-zone".into(),
            title: format!("CO2e over {longest} years by zone (operational + embodied)"),
            unit: "kgCO2e".into(),
            categories: zones.clone(),
            series: per_zone(&|o| o.horizon(longest).map_or(0.0, |h| h.co2e_kg)),
            stacked: false,
        }
        .svg(),
    );
    // Cost per million units by model, precision and hardware.
    charts.push(
        BarChart {
            id: "cost-per-million".into(),
            title: "Cost per million units of work, year 1".into(),
            unit: "USD per 1M".into(),
            categories: in_zone
                .iter()
                .map(|o| {
                    format!(
                        "{} ({}) {}",
                        o.capacity.model, o.capacity.precision, o.capacity.hardware
                    )
                })
                .collect(),
            series: vec![Series {
                name: "USD per 1M requests or output tokens".into(),
                values: in_zone.iter().map(|o| o.usd_per_million).collect(),
            }],
            stacked: false,
        }
        .svg(),
    );
    p.heading("Pictures").charts(&charts);
    let (header, rows) = super::output::table(r);
    let headers: Vec<&str> = header.iter().map(String::as_str).collect();
    p.heading("Options").table(&headers, &rows);
    p.finish("wattserve tco — formulas and inputs: docs/tco.md")
}

fn setup(o: &super::model::Priced) -> String {
    format!(
        "{} ({}) on {}",
        o.capacity.model, o.capacity.precision, o.capacity.hardware
    )
}
