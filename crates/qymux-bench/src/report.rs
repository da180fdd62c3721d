//! Tables, targets, JSON and the SVG chart.

use std::fmt::Write as _;

use qymux_bench::ConnectReport;
use serde::Serialize;

use crate::measure::Samples;

/// One figure: the median of its samples, with their spread.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    pub(crate) median: f64,
    /// For latencies: the 99th percentile of all samples.
    pub(crate) p99: Option<f64>,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
    /// The median of each round (`--rounds`), in order: the spread between rounds.
    pub(crate) rounds: Vec<f64>,
    /// Every sample, so that rounds can be pooled.
    samples: Samples,
    latency: bool,
}

impl Figure {
    pub(crate) fn of(samples: &Samples, latency: bool) -> Self {
        Self {
            median: samples.median(),
            p99: latency.then(|| samples.quantile(0.99)),
            min: samples.min(),
            max: samples.max(),
            n: samples.0.len(),
            rounds: vec![samples.median()],
            samples: samples.clone(),
            latency,
        }
    }

    pub(crate) fn single(value: f64) -> Self {
        Self::of(&Samples(vec![value]), false)
    }

    /// This figure and a later round's as one: the samples pooled, the rounds kept.
    fn pooled(&self, later: &Self) -> Self {
        let mut samples = self.samples.0.clone();
        samples.extend_from_slice(&later.samples.0);
        let mut out = Self::of(&Samples(samples), self.latency);
        out.rounds = self.rounds.iter().chain(&later.rounds).copied().collect();
        out
    }
}

/// What became of one stack on one measure.
#[derive(Debug, Clone)]
pub(crate) enum Cell {
    Value(Figure),
    /// Not measured, and why (not an error: Go missing, a stack without streams).
    Skipped(String),
    Failed(String),
}

impl Cell {
    pub(crate) fn value(&self) -> Option<f64> {
        match self {
            Self::Value(f) => Some(f.median),
            _ => None,
        }
    }

    /// The median of each round, when there are figures.
    pub(crate) fn rounds(&self) -> Option<&[f64]> {
        match self {
            Self::Value(f) => Some(&f.rounds),
            _ => None,
        }
    }

    /// This cell and a later round's as one. A failure in any round stays a failure.
    fn pooled(&self, later: &Self) -> Self {
        match (self, later) {
            (Self::Value(a), Self::Value(b)) => Self::Value(a.pooled(b)),
            (failed @ Self::Failed(_), _) | (_, failed @ Self::Failed(_)) => failed.clone(),
            (Self::Skipped(_), other) | (other, Self::Skipped(_)) => other.clone(),
        }
    }
}

/// `a / b` for each round both have, in order.
fn round_ratios(a: &Cell, b: &Cell) -> Vec<f64> {
    match (a.rounds(), b.rounds()) {
        (Some(a), Some(b)) => a.iter().zip(b).map(|(a, b)| a / b).collect(),
        _ => Vec::new(),
    }
}

/// `" (lo–hi)"` over several rounds, or nothing for one.
fn spread(values: &[f64]) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(" ({lo:.2}–{hi:.2})")
}

/// One measure across stacks.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) higher_is_better: bool,
    /// In the order of the table's columns.
    pub(crate) cells: Vec<Cell>,
}

/// A table of measures sharing columns, with ratios between columns.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub(crate) title: &'static str,
    pub(crate) columns: Vec<&'static str>,
    /// (label, numerator column, denominator column).
    pub(crate) ratios: Vec<(&'static str, usize, usize)>,
    pub(crate) rows: Vec<Row>,
}

impl Table {
    pub(crate) fn find(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    /// Adds a later round of the same table: every cell's samples pooled.
    pub(crate) fn pool(&mut self, later: &Table) {
        for row in &mut self.rows {
            let Some(later) = later.find(row.key) else {
                continue;
            };
            for (cell, next) in row.cells.iter_mut().zip(&later.cells) {
                *cell = cell.pooled(next);
            }
        }
    }
}

/// A target of the issue, judged on this run's figures.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) figure: String,
    pub(crate) limit: String,
    /// `None`: not measured in this run.
    pub(crate) met: Option<bool>,
}

impl Target {
    pub(crate) fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "not measured",
        }
    }
}

fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Value(f) => fmt_value(f.median),
        Cell::Skipped(_) => "-".into(),
        Cell::Failed(_) => "FAILED".into(),
    }
}

/// `num / den` of a row's two columns, and the range of the rounds' own ratios as text
/// (see [`spread`]); `None` when either column has no figure.
pub(crate) fn ratio(row: &Row, num: usize, den: usize) -> Option<(f64, String)> {
    let (a, b) = (row.cells.get(num)?, row.cells.get(den)?);
    let (x, y) = (a.value()?, b.value()?);
    (y != 0.0).then(|| (x / y, spread(&round_ratios(a, b))))
}

/// The cells of a table as text: a header line, then a line per row.
fn grid(table: &Table) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut header = vec![format!("{} (median)", table.title)];
    header.extend(table.columns.iter().map(|c| (*c).to_owned()));
    header.extend(table.ratios.iter().map(|(l, _, _)| (*l).to_owned()));
    out.push(header);
    for row in &table.rows {
        let mut line = vec![format!("{} ({})", row.title, row.unit)];
        line.extend(row.cells.iter().map(cell_text));
        for (_, num, den) in &table.ratios {
            line.push(
                ratio(row, *num, *den).map_or("-".into(), |(r, spread)| format!("{r:.2}{spread}")),
            );
        }
        out.push(line);
    }
    out
}

/// The tables as aligned text.
pub(crate) fn text(tables: &[Table]) -> String {
    let mut out = String::new();
    for table in tables {
        let grid = grid(table);
        let cols = grid[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| grid.iter().map(|l| l[c].chars().count()).max().unwrap_or(0))
            .collect();
        for line in &grid {
            for (c, text) in line.iter().enumerate() {
                if c == 0 {
                    let _ = write!(out, "{text:<w$}", w = widths[c]);
                } else {
                    let _ = write!(out, "  {text:>w$}", w = widths[c]);
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// The tables as Markdown.
pub(crate) fn markdown(tables: &[Table]) -> String {
    let mut out = String::new();
    for table in tables {
        let grid = grid(table);
        for (i, line) in grid.iter().enumerate() {
            out.push('|');
            for text in line {
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
            if i == 0 {
                out.push('|');
                for c in 0..line.len() {
                    out.push_str(if c == 0 { "---|" } else { "---:|" });
                }
                out.push('\n');
            }
        }
        out.push('\n');
    }
    out
}

pub(crate) fn targets_text(targets: &[Target]) -> String {
    let mut out = String::new();
    let w = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in targets {
        let _ = writeln!(
            out,
            "{:<w$}  {:>22}  {:<22}  {}",
            t.name,
            t.figure,
            t.limit,
            t.verdict()
        );
    }
    out
}

pub(crate) fn targets_markdown(targets: &[Target]) -> String {
    let mut out = String::from("| target | figure | limit | |\n|---|---:|---|---|\n");
    for t in targets {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            t.name,
            t.figure,
            t.limit,
            t.verdict()
        );
    }
    out
}

/// The machine a run was on: `machine` in results.json.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) date: String,
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
    pub(crate) rustc: String,
    pub(crate) go: String,
    pub(crate) profile: &'static str,
    pub(crate) smoke: bool,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

/// results.json.
#[derive(Debug, Serialize)]
struct Results<'a> {
    machine: &'a Machine,
    smoke: bool,
    tables: Vec<TableJson<'a>>,
    targets: Vec<TargetJson<'a>>,
    connect_bench: Option<&'a ConnectReport>,
}

#[derive(Debug, Serialize)]
struct TableJson<'a> {
    title: &'a str,
    rows: Vec<RowJson<'a>>,
}

#[derive(Debug, Serialize)]
struct RowJson<'a> {
    key: &'a str,
    title: &'a str,
    unit: &'a str,
    higher_is_better: bool,
    /// By column, in the table's order.
    figures: Ordered<'a, FigureJson<'a>>,
    ratios: Ordered<'a, Option<f64>>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum FigureJson<'a> {
    Value {
        median: Option<f64>,
        p99: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        samples: usize,
        round_medians: Vec<Option<f64>>,
    },
    Skipped {
        skipped: &'a str,
    },
    Failed {
        error: &'a str,
    },
}

#[derive(Debug, Serialize)]
struct TargetJson<'a> {
    name: &'a str,
    figure: &'a str,
    limit: &'a str,
    met: Option<bool>,
}

/// A JSON object whose keys keep their order.
#[derive(Debug)]
struct Ordered<'a, V>(Vec<(&'a str, V)>);

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A number, or `null` when it is not finite (JSON has no NaN).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Everything as JSON: the machine, the tables, the targets, and connect_bench's report
/// (or `null`).
pub(crate) fn json(
    machine: &Machine,
    smoke: bool,
    tables: &[Table],
    targets: &[Target],
    connect_bench: Option<&ConnectReport>,
) -> String {
    let tables = tables
        .iter()
        .map(|table| TableJson {
            title: table.title,
            rows: table
                .rows
                .iter()
                .map(|row| RowJson {
                    key: row.key,
                    title: row.title,
                    unit: row.unit,
                    higher_is_better: row.higher_is_better,
                    figures: Ordered(
                        table
                            .columns
                            .iter()
                            .zip(&row.cells)
                            .map(|(column, cell)| (*column, figure_json(cell)))
                            .collect(),
                    ),
                    ratios: Ordered(
                        table
                            .ratios
                            .iter()
                            .map(|(label, num, den)| {
                                (*label, ratio(row, *num, *den).and_then(|(r, _)| finite(r)))
                            })
                            .collect(),
                    ),
                })
                .collect(),
        })
        .collect();
    let targets = targets
        .iter()
        .map(|t| TargetJson {
            name: &t.name,
            figure: &t.figure,
            limit: &t.limit,
            met: t.met,
        })
        .collect();
    let results = Results {
        machine,
        smoke,
        tables,
        targets,
        connect_bench,
    };
    // Serializing plain data to a string cannot fail.
    serde_json::to_string_pretty(&results).unwrap_or_default() + "\n"
}

fn figure_json(cell: &Cell) -> FigureJson<'_> {
    match cell {
        Cell::Value(f) => FigureJson::Value {
            median: finite(f.median),
            p99: f.p99.and_then(finite),
            min: finite(f.min),
            max: finite(f.max),
            samples: f.n,
            round_medians: f.rounds.iter().map(|v| finite(*v)).collect(),
        },
        Cell::Skipped(why) => FigureJson::Skipped { skipped: why },
        Cell::Failed(why) => FigureJson::Failed { error: why },
    }
}

/// Colours of the bars, by column name.
fn colour(column: &str) -> &'static str {
    match column {
        "raw rustls" | "tonic direct" => "#9e9e9e",
        "raw quinn" => "#bdbdbd",
        "Go yamux" => "#e6a23c",
        c if c.contains("QUIC") || c.starts_with("Auto") => "#3f8fd2",
        _ => "#2e7d32",
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A bar chart: one group per measure, one bar per stack, bars scaled to the largest
/// figure of the group, each labelled with its figure.
pub(crate) fn svg(tables: &[Table], caption: &str) -> String {
    const WIDTH: f64 = 860.0;
    const LABEL: f64 = 170.0;
    const BAR_MAX: f64 = 520.0;
    const BAR_H: f64 = 14.0;
    const GAP: f64 = 4.0;
    let mut body = String::new();
    let mut y = 40.0;
    for table in tables {
        for row in &table.rows {
            let max = row
                .cells
                .iter()
                .filter_map(Cell::value)
                .fold(0.0f64, f64::max);
            let better = if row.higher_is_better {
                "higher is better"
            } else {
                "lower is better"
            };
            let _ = writeln!(
                body,
                r#"<text x="10" y="{:.0}" font-weight="bold">{} ({}, {better})</text>"#,
                y + 12.0,
                xml(row.title),
                xml(row.unit)
            );
            y += 20.0;
            for (column, cell) in table.columns.iter().zip(&row.cells) {
                let _ = writeln!(
                    body,
                    r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
                    LABEL - 6.0,
                    y + BAR_H - 3.0,
                    xml(column)
                );
                match cell.value() {
                    Some(v) if max > 0.0 => {
                        let w = (v / max * BAR_MAX).max(1.0);
                        let _ = writeln!(
                            body,
                            r##"<rect x="{LABEL:.0}" y="{y:.0}" width="{w:.1}" height="{BAR_H:.0}" fill="{}"/><text x="{:.1}" y="{:.0}">{}</text>"##,
                            colour(column),
                            LABEL + w + 4.0,
                            y + BAR_H - 3.0,
                            fmt_value(v)
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            body,
                            r##"<text x="{LABEL:.0}" y="{:.0}" fill="#888">{}</text>"##,
                            y + BAR_H - 3.0,
                            xml(&cell_text(cell))
                        );
                    }
                }
                y += BAR_H + GAP;
            }
            y += 10.0;
        }
    }
    let height = y + 10.0;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WIDTH:.0} {height:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="14" font-weight="bold">{}</text>
{body}</svg>
"#,
        xml(caption)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        Table {
            title: "t",
            columns: vec!["raw rustls", "Qymux TCP"],
            ratios: vec![("TCP/rustls", 1, 0)],
            rows: vec![Row {
                key: "bulk",
                title: "bulk \"1\" <stream>",
                unit: "MiB/s",
                higher_is_better: true,
                cells: vec![
                    Cell::Value(Figure::single(1000.0)),
                    Cell::Value(Figure::single(900.0)),
                ],
            }],
        }
    }

    #[test]
    fn ratios_divide_the_named_columns() {
        assert!(text(&[table()]).contains("0.90"));
        assert!(markdown(&[table()]).contains("| 0.90 |"));
    }

    #[test]
    fn rounds_pool_samples_and_keep_their_spread() {
        let mut pooled = table();
        let mut later = table();
        later.rows[0].cells[1] = Cell::Value(Figure::single(700.0));
        pooled.pool(&later);
        let cell = &pooled.rows[0].cells[1];
        assert_eq!(cell.rounds(), Some(&[900.0, 700.0][..]));
        assert_eq!(cell.value(), Some(800.0));
        let ratios = round_ratios(cell, &pooled.rows[0].cells[0]);
        assert_eq!(spread(&ratios), " (0.70–0.90)");
        assert!(text(&[pooled]).contains("0.80 (0.70–0.90)"));
        // A failure in any round is kept.
        let mut failing = table();
        failing.rows[0].cells[0] = Cell::Failed("boom".into());
        later.pool(&failing);
        assert!(matches!(later.rows[0].cells[0], Cell::Failed(_)));
    }

    #[test]
    fn json_and_svg_escape_text() {
        let machine = Machine {
            date: String::new(),
            cpus: 2,
            cpu_model: String::new(),
            kernel: String::new(),
            rustc: String::new(),
            go: String::new(),
            profile: "release",
            smoke: true,
            load_before: String::new(),
            load_after: String::new(),
        };
        let json = json(&machine, true, &[table()], &[], None);
        assert!(json.contains(r#""bulk \"1\" <stream>""#), "{json}");
        assert!(json.contains("\"TCP/rustls\": 0.9"), "{json}");
        let svg = svg(&[table()], "caption & more");
        assert!(svg.contains("&lt;stream&gt;") && svg.contains("caption &amp; more"));
    }
}
