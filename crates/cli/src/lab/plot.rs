//! The lab's plots, drawn with plotters as SVG and PNG: bars for one figure per case,
//! with labelled axes and units. The PNG's text uses DejaVu Sans, bundled
//! (`assets/DejaVuSans.ttf`), so plots look the same on machines without fonts.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// One bar per case; a group of bars per case when there are several series (each
/// series gets a colour and a legend entry).
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// The cases along the x axis.
    pub cases: Vec<String>,
    /// (series name, one value per case).
    pub series: Vec<(String, Vec<f64>)>,
}

impl Plot {
    pub fn title(&self) -> &str {
        &self.title
    }
}

const COLOURS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];

const SIZE: (u32, u32) = (720, 420);

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Writes `plot` as `<path>` (SVG) and beside it with the `.png` extension.
pub fn draw(plot: &Plot, svg: &Path) -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| "the bundled font does not load".to_string()))
        .clone()?;
    let failed = |path: &Path, error: Box<dyn std::error::Error>| format!("cannot draw {}: {error}", path.display());
    render(plot, SVGBackend::new(svg, SIZE).into_drawing_area()).map_err(|error| failed(svg, error))?;
    let png = svg.with_extension("png");
    let mut pixels = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    render(plot, BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area()).map_err(|error| failed(&png, error))?;
    write_png(&png, &pixels).map_err(|error| failed(&png, error))
}

fn write_png(path: &Path, pixels: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, SIZE.0, SIZE.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(pixels)?;
    Ok(())
}

fn render<DB: DrawingBackend>(plot: &Plot, root: DrawingArea<DB, Shift>) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let highest = plot.series.iter().flat_map(|(_, values)| values.iter().copied()).fold(0.0_f64, f64::max);
    let top = if highest > 0.0 { highest * 1.15 } else { 1.0 };
    let cases = plot.cases.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(&plot.title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..cases as f64, 0.0..top)?;
    let names = plot.cases.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(plot.x_label.as_str())
        .y_desc(plot.y_label.as_str())
        .x_labels(cases * 2 + 1)
        .x_label_formatter(&|x: &f64| {
            // Case names sit under the middle of each group.
            let offset = x - x.floor();
            if (offset - 0.5).abs() < 0.01 {
                names.get(x.floor() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()?;
    let groups = plot.series.len().max(1) as f64;
    let width = 0.7 / groups;
    for (number, (name, values)) in plot.series.iter().enumerate() {
        let colour = COLOURS[number % COLOURS.len()];
        let left = |case: usize| case as f64 + 0.15 + width * number as f64;
        chart
            .draw_series(values.iter().enumerate().map(|(case, value)| Rectangle::new([(left(case), 0.0), (left(case) + width, *value)], colour.filled())))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
    }
    if plot.series.len() > 1 {
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.9)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
