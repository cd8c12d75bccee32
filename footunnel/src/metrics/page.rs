//! Prometheus' text exposition format (version 0.0.4), written directly.
//! Each page is rebuilt from a snapshot at every scrape, so it needs no
//! registry of live metrics, and no 64-bit atomics: it works on 32-bit
//! MIPS as on x86_64.

use std::{collections::BTreeMap, fmt::Write};

/// The content type of a page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A series' labels, in any order (they are written sorted by name).
pub type Labels = Vec<(&'static str, String)>;

/// A page of metric families, every name under one prefix.
pub struct Page {
    prefix: &'static str,
    families: BTreeMap<String, Family>,
}

struct Family {
    help: String,
    kind: &'static str,
    series: Vec<(Labels, String)>,
}

impl Page {
    /// A page whose metric names all start with `prefix` and an underscore.
    pub fn new(prefix: &'static str) -> Self {
        Page { prefix, families: BTreeMap::new() }
    }

    /// A counter (`name` ends in `_total`), one series per row.
    pub fn counter(&mut self, name: &str, help: &str, rows: &[(Labels, u64)]) {
        self.family(name, help, "counter", rows.iter().map(|(l, v)| (l.clone(), v.to_string())));
    }

    /// A counter of a fractional quantity, such as seconds.
    pub fn fractional_counter(&mut self, name: &str, help: &str, rows: &[(Labels, f64)]) {
        self.family(name, help, "counter", rows.iter().map(|(l, v)| (l.clone(), number(*v))));
    }

    pub fn gauge(&mut self, name: &str, help: &str, rows: &[(Labels, f64)]) {
        self.family(name, help, "gauge", rows.iter().map(|(l, v)| (l.clone(), number(*v))));
    }

    fn family(&mut self, name: &str, help: &str, kind: &'static str, rows: impl Iterator<Item = (Labels, String)>) {
        let mut series: Vec<(Labels, String)> = rows
            .map(|(mut labels, value)| {
                labels.sort_by_key(|(name, _)| *name);
                (labels, value)
            })
            .collect();
        // A family without series is left out, as client libraries do.
        if series.is_empty() {
            return;
        }
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let name = format!("{}_{name}", self.prefix);
        let previous = self.families.insert(name.clone(), Family { help: help.to_owned(), kind, series });
        assert!(previous.is_none(), "metric {name} written twice");
    }

    /// The page, families sorted by name.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            let help = family.help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {}", family.kind);
            for (labels, value) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                    let _ = write!(out, "{{{}}}", pairs.join(","));
                }
                let _ = writeln!(out, " {value}");
            }
        }
        out
    }
}

fn escape(label_value: &str) -> String {
    label_value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value as the format spells it (`+Inf`, not Rust's `inf`).
fn number(v: f64) -> String {
    match v {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_labels_and_series_are_sorted_and_escaped() {
        let mut page = Page::new("footunnel");
        page.gauge(
            "b_info",
            "Line one\nwith a \\",
            &[
                (vec![("tunnel", "z".into()), ("link", "fou\"1\"".into())], 1.0),
                (vec![("tunnel", "a".into()), ("link", "x\\y\nz".into())], 0.5),
            ],
        );
        page.counter("a_total", "Things", &[(vec![], 3)]);
        page.gauge("empty", "Left out", &[]);
        page.fractional_counter("c_seconds_total", "Time", &[(vec![("program", "p".into())], f64::INFINITY)]);
        assert_eq!(
            page.text(),
            "# HELP footunnel_a_total Things\n# TYPE footunnel_a_total counter\nfootunnel_a_total 3\n\
             # HELP footunnel_b_info Line one\\nwith a \\\\\n# TYPE footunnel_b_info gauge\n\
             footunnel_b_info{link=\"fou\\\"1\\\"\",tunnel=\"z\"} 1\n\
             footunnel_b_info{link=\"x\\\\y\\nz\",tunnel=\"a\"} 0.5\n\
             # HELP footunnel_c_seconds_total Time\n# TYPE footunnel_c_seconds_total counter\n\
             footunnel_c_seconds_total{program=\"p\"} +Inf\n"
        );
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_family_is_written_once() {
        let mut page = Page::new("footunnel");
        page.counter("a_total", "Things", &[(vec![], 1)]);
        page.counter("a_total", "Things", &[(vec![], 2)]);
    }
}
