//! Scaling curves as SVG files next to the JSON: people would rather look at
//! a curve than read a table.

use plotters::prelude::*;
use std::path::Path;

/// One line of a plot: a name and its (x, median y, min y, max y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Draws `series` against a logarithmic x axis (the loads grow by factors)
/// and a linear y axis from zero, each point's min-max as a vertical bar.
pub fn curve(path: &Path, title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<(), String> {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let (x_lo, x_hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let y_hi =
        series.iter().flat_map(|s| s.points.iter().map(|p| p.3.max(p.1))).filter(|y| y.is_finite()).fold(0.0, f64::max);
    if !(x_lo.is_finite() && x_hi > x_lo && y_hi > 0.0) {
        return Err(format!("{title}: nothing to draw"));
    }
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d((x_lo * 0.8..x_hi * 1.25).log_scale(), 0.0..y_hi * 1.1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { crate::report::num(*x) })
        .y_label_formatter(&|y| crate::report::num(*y))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let line: Vec<(f64, f64)> = s.points.iter().filter(|p| p.1.is_finite()).map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                s.points
                    .iter()
                    .filter(|p| p.2.is_finite() && p.3.is_finite())
                    .map(|&(x, _, lo, hi)| PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(1))),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
