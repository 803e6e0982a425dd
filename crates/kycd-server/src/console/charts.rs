//! Charts for the dashboard as inline SVG, drawn on the server: no
//! JavaScript, no external assets, and every number also in a `<title>`
//! that the browser shows on hover (and a screen reader reads).

use std::fmt::Write;

/// Escape text for SVG/HTML content and attributes.
pub fn esc(s: &str) -> String {
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

/// A series' colour, by name, from a fixed palette (outcomes and results
/// keep their colour across charts).
pub fn colour(key: &str) -> &'static str {
    match key {
        "approve" | "accepted" | "done" => "#2e7d32",
        "review" | "duplicate" | "retry" | "action_failed" => "#f9a825",
        "decline" | "invalid_signature" | "dead" | "action_dead" => "#c62828",
        "block" => "#4a148c",
        "resubmit" | "bad_request" | "unusable" => "#1565c0",
        "step_up" | "too_large" => "#00838f",
        "unavailable" => "#6d4c41",
        _ => "#757575",
    }
}

const W: f64 = 720.0;
const H: f64 = 200.0;
const LEFT: f64 = 40.0;
const BOTTOM: f64 = 24.0;

/// Stacked vertical bars: one column per `(label, [(key, value)])`, the keys
/// stacked in `keys` order, with a legend. `title` names the chart.
pub fn stacked_bars(
    title: &str,
    columns: &[(String, Vec<(String, u64)>)],
    keys: &[String],
) -> String {
    let max = columns
        .iter()
        .map(|(_, v)| v.iter().map(|(_, n)| n).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let n = columns.len().max(1) as f64;
    let slot = (W - LEFT) / n;
    let bar = (slot * 0.8).max(1.0);
    let plot_h = H - BOTTOM;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {h}" role="img" aria-label="{t}"><title>{t}</title>"#,
        h = H + 28.0,
        t = esc(title)
    );
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{plot_h}" x2="{W}" y2="{plot_h}" stroke="#999"/><text x="{x}" y="12" font-size="11" text-anchor="end">{max}</text><text x="{x}" y="{plot_h}" font-size="11" text-anchor="end">0</text>"##,
        x = LEFT - 4.0
    );
    let label_every = (columns.len() / 8).max(1);
    for (i, (label, values)) in columns.iter().enumerate() {
        let x = LEFT + i as f64 * slot + (slot - bar) / 2.0;
        let mut y = plot_h;
        for key in keys {
            let v = values.iter().find(|(k, _)| k == key).map_or(0, |(_, n)| *n);
            if v == 0 {
                continue;
            }
            let h = v as f64 / max as f64 * (plot_h - 14.0);
            y -= h;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{h:.1}" fill="{c}"><title>{l}: {k} {v}</title></rect>"#,
                c = colour(key),
                l = esc(label),
                k = esc(key)
            );
        }
        if i % label_every == 0 {
            let _ = write!(
                svg,
                r#"<text x="{cx:.1}" y="{ty}" font-size="10" text-anchor="middle">{l}</text>"#,
                cx = x + bar / 2.0,
                ty = plot_h + 14.0,
                l = esc(label)
            );
        }
    }
    let mut lx = LEFT;
    for key in keys {
        let _ = write!(
            svg,
            r#"<rect x="{lx}" y="{ly}" width="10" height="10" fill="{c}"/><text x="{tx}" y="{ty}" font-size="11">{k}</text>"#,
            ly = H + 10.0,
            c = colour(key),
            tx = lx + 14.0,
            ty = H + 19.0,
            k = esc(key)
        );
        lx += 24.0 + 7.0 * key.len() as f64;
    }
    svg.push_str("</svg>");
    svg
}

/// Horizontal bars, one per `(label, value)`, coloured by `colour_key`
/// (or each by its own label when `None`).
pub fn bars(title: &str, items: &[(String, u64)], colour_key: Option<&str>) -> String {
    let max = items.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let row = 22.0;
    let label_w = 180.0;
    let h = row * items.len().max(1) as f64 + 6.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {W} {h}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = esc(title)
    );
    if items.is_empty() {
        svg.push_str(r##"<text x="4" y="16" font-size="12" fill="#666">nothing yet</text>"##);
    }
    for (i, (label, v)) in items.iter().enumerate() {
        let y = i as f64 * row + 3.0;
        let w = *v as f64 / max as f64 * (W - label_w - 60.0);
        let c = colour(colour_key.unwrap_or(label));
        let _ = write!(
            svg,
            r#"<text x="{tx}" y="{ty:.1}" font-size="12" text-anchor="end">{l}</text><rect x="{label_w}" y="{y:.1}" width="{w:.1}" height="16" fill="{c}"><title>{l}: {v}</title></rect><text x="{vx:.1}" y="{ty:.1}" font-size="12">{v}</text>"#,
            tx = label_w - 6.0,
            ty = y + 12.5,
            l = esc(label),
            vx = label_w + w + 4.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_escape_labels() {
        let svg = bars(
            "t<",
            &[("a<b".into(), 10), ("c".into(), 5)],
            Some("approve"),
        );
        assert!(svg.contains("a&lt;b: 10") && !svg.contains("a<b"));
        assert!(
            svg.contains(r#"width="480.0""#),
            "the largest bar fills the width"
        );
        assert!(
            svg.contains(r#"width="240.0""#),
            "half the value, half the width"
        );
    }

    #[test]
    fn stacked_bars_stack_each_key_and_skip_zeros() {
        let cols = vec![
            (
                "10:00".to_string(),
                vec![("approve".to_string(), 3), ("review".to_string(), 1)],
            ),
            ("11:00".to_string(), vec![("approve".to_string(), 0)]),
        ];
        let svg = stacked_bars("d", &cols, &["approve".into(), "review".into()]);
        assert_eq!(
            svg.matches("<rect").count(),
            2 + 2,
            "two bars and two legend keys"
        );
        assert!(svg.contains("10:00: approve 3") && svg.contains("10:00: review 1"));
        assert!(
            svg.contains(">4</text>"),
            "the axis is labelled with the tallest stack"
        );
    }
}
