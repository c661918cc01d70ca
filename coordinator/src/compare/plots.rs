//! The report's SVG figures, drawn with plotters: a grid of panels sharing one y range, each
//! with a line per arm (the mean over its seeds) in a min–max band, colours stable across
//! panels so an arm reads the same everywhere.

use plotters::prelude::*;

/// Tableau's ten colours, cycled.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Lines with fewer points than this get markers too (an evaluation at the end only is a dot).
const MARKED_BELOW: usize = 16;

const PANEL_SIZE: (u32, u32) = (420, 300);
const TITLE_HEIGHT: u32 = 36;

/// One arm's curve: (x, mean, min, max) points.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: String,
    pub colour: usize,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// One chart of the grid.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub lines: Vec<Line>,
}

/// A figure: panels laid out `columns` to a row, one y axis description for all.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub columns: usize,
    pub panels: Vec<Panel>,
}

impl Figure {
    /// The figure as an SVG document.
    pub fn to_svg(&self) -> anyhow::Result<String> {
        let columns = self.columns.max(1);
        let rows = self.panels.len().div_ceil(columns).max(1);
        let size = (
            PANEL_SIZE.0 * columns as u32,
            PANEL_SIZE.1 * rows as u32 + TITLE_HEIGHT,
        );
        let mut svg = String::new();
        {
            let failed = |err| anyhow::anyhow!("drawing {}: {err}", self.title);
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            root.fill(&WHITE).map_err(failed)?;
            let root = root
                .titled(&self.title, ("sans-serif", 20))
                .map_err(failed)?;
            let (x_range, y_range) = self.ranges();
            for (area, panel) in root.split_evenly((rows, columns)).iter().zip(&self.panels) {
                self.draw_panel(area, panel, x_range.clone(), y_range.clone())
                    .map_err(failed)?;
            }
            root.present().map_err(failed)?;
        }
        Ok(svg)
    }

    /// The x and y ranges every panel shares: all points and bands, y padded by 5 %.
    fn ranges(&self) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
        let points = self
            .panels
            .iter()
            .flat_map(|p| &p.lines)
            .flat_map(|l| &l.points)
            .filter(|p| p.0.is_finite() && p.2.is_finite() && p.3.is_finite());
        let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, _, low, high) in points {
            x_max = x_max.max(x);
            y_min = y_min.min(low);
            y_max = y_max.max(high);
        }
        if !y_min.is_finite() {
            (y_min, y_max) = (0.0, 1.0);
        }
        let pad = ((y_max - y_min) * 0.05).max(1e-6);
        (0.0..x_max, (y_min - pad)..(y_max + pad))
    }

    fn draw_panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, plotters::coord::Shift>,
        panel: &Panel,
        x_range: std::ops::Range<f64>,
        y_range: std::ops::Range<f64>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 15))
            .margin(8)
            .x_label_area_size(32)
            .y_label_area_size(52)
            .build_cartesian_2d(x_range, y_range)?;
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_labels(6)
            .x_label_formatter(&|step| format!("{step:.0}"))
            .y_labels(6)
            .light_line_style(WHITE.mix(0.0))
            .label_style(("sans-serif", 11))
            .draw()?;
        for line in &panel.lines {
            let colour = PALETTE[line.colour % PALETTE.len()];
            let spread = line.points.iter().any(|p| p.2 < p.3);
            if spread {
                let band: Vec<(f64, f64)> = line
                    .points
                    .iter()
                    .map(|p| (p.0, p.3))
                    .chain(line.points.iter().rev().map(|p| (p.0, p.2)))
                    .collect();
                chart.draw_series(std::iter::once(Polygon::new(band, colour.mix(0.15))))?;
            }
            let means = line.points.iter().map(|p| (p.0, p.1));
            chart
                .draw_series(LineSeries::new(means.clone(), colour.stroke_width(2)))?
                .label(&line.label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            if line.points.len() < MARKED_BELOW {
                chart.draw_series(means.map(|p| Circle::new(p, 3, colour.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 11))
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_draws_every_panel_and_line() {
        let line = |label: &str, colour, spread: f64| Line {
            label: label.into(),
            colour,
            points: (0..20)
                .map(|i| {
                    let (x, y) = (i as f64, 1.0 / (1.0 + i as f64));
                    (x, y, y - spread, y + spread)
                })
                .collect(),
        };
        let figure = Figure {
            title: "training loss".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            columns: 2,
            panels: vec![
                Panel {
                    title: "warmup=none".into(),
                    lines: vec![line("scale=1.0", 0, 0.1), line("scale=0.1", 1, 0.0)],
                },
                Panel {
                    title: "warmup=linear".into(),
                    lines: vec![line("scale=1.0", 0, 0.0)],
                },
            ],
        };
        let svg = figure.to_svg().unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in ["training loss", "warmup=none", "warmup=linear", "scale=0.1"] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Each line and its legend mark in the arm's colour, the same in both panels; one band
        // (the only line with a spread), in the colour of its line.
        let strokes = |colour: &str| {
            svg.matches(&format!("stroke=\"{colour}\" stroke-width=\"2\""))
                .count()
        };
        assert_eq!((strokes("#1F77B4"), strokes("#FF7F0E")), (2 + 2, 1 + 1));
        assert_eq!(svg.matches("<polygon").count(), 1);
        assert!(svg.contains("fill=\"#1F77B4\""));
    }
}
