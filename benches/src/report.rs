//! Results: one record per (scenario, contender, metric) with median, min and
//! max over rounds; written as JSON (`results/latest.json`) and Markdown.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub scenario: String,
    pub contender: String,
    pub metric: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub rounds: usize,
}

#[derive(Default)]
pub struct Results {
    samples: BTreeMap<(String, String, String), (String, Vec<f64>)>,
    order: Vec<(String, String, String)>,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

impl Results {
    pub fn add(&mut self, scenario: &str, contender: &str, metric: &str, unit: &str, value: f64) {
        let key = (
            scenario.to_string(),
            contender.to_string(),
            metric.to_string(),
        );
        if !self.samples.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.samples
            .entry(key)
            .or_insert_with(|| (unit.to_string(), vec![]))
            .1
            .push(value);
    }

    pub fn records(&self) -> Vec<Record> {
        self.order
            .iter()
            .map(|k| {
                let (unit, v) = &self.samples[k];
                Record {
                    scenario: k.0.clone(),
                    contender: k.1.clone(),
                    metric: k.2.clone(),
                    unit: unit.clone(),
                    median: median(v),
                    min: v.iter().copied().fold(f64::INFINITY, f64::min),
                    max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    rounds: v.len(),
                }
            })
            .collect()
    }

    pub fn get(&self, scenario: &str, contender: &str, metric: &str) -> Option<f64> {
        self.samples
            .get(&(
                scenario.to_string(),
                contender.to_string(),
                metric.to_string(),
            ))
            .map(|(_, v)| median(v))
    }

    /// Markdown: one table per scenario, ratios against direct, envoy and haproxy.
    pub fn markdown(&self, header: &str) -> String {
        let records = self.records();
        let mut out = String::from(header);
        let mut scenarios: Vec<&str> = Vec::new();
        for r in &records {
            if !scenarios.contains(&r.scenario.as_str()) {
                scenarios.push(&r.scenario);
            }
        }
        for s in scenarios {
            let _ = writeln!(out, "\n### {s}\n");
            let _ = writeln!(
                out,
                "| contender | metric | median | min – max | × direct | × envoy | × haproxy |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
            for r in records.iter().filter(|r| r.scenario == s) {
                let ratio = |peer: &str| {
                    if peer == r.contender || r.metric.contains("added") {
                        return String::new();
                    }
                    self.get(s, peer, &r.metric)
                        .filter(|p| *p > 0.0)
                        .map(|p| format!("{:.2}", r.median / p))
                        .unwrap_or_default()
                };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} {} | {} – {} | {} | {} | {} |",
                    r.contender,
                    r.metric,
                    fmt(r.median),
                    r.unit,
                    fmt(r.min),
                    fmt(r.max),
                    ratio("direct"),
                    ratio("envoy"),
                    ratio("haproxy")
                );
            }
        }
        out
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1e9 {
        format!("{:.2}e9", v / 1e9)
    } else if v.abs() >= 1e6 {
        format!("{:.2}e6", v / 1e6)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max_and_ratios() {
        let mut r = Results::default();
        for v in [10.0, 30.0, 20.0] {
            r.add("max_rps_h1", "weft", "rps", "req/s", v);
        }
        r.add("max_rps_h1", "direct", "rps", "req/s", 40.0);
        let recs = r.records();
        assert_eq!(
            (recs[0].median, recs[0].min, recs[0].max),
            (20.0, 10.0, 30.0)
        );
        assert!(r
            .markdown("")
            .contains("| weft | rps | 20.0 req/s | 10.0 – 30.0 | 0.50 |"));
    }
}
