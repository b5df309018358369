"""Server-side SVG charts: scaled points, gaps, empty notes, and no markup injection."""

from datetime import UTC, datetime, timedelta

from dashboard.charts import Series, line_chart


def test_points_are_scaled_into_the_plot_and_gaps_split_the_line():
    start = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    points = [(start + timedelta(minutes=i), v) for i, v in enumerate([0.0, 50.0, None, 100.0, 25.0])]
    svg = str(line_chart([Series("GPU 0", points)], title="Utilisation", unit="%", y_max=100))
    assert svg.startswith('<svg class="chart"') and 'aria-label="Utilisation (%)"' in svg
    lines = svg.split("<polyline")[1:]
    assert len(lines) == 2  # the None breaks the series in two
    first = lines[0].split('points="')[1].split('"')[0].split()
    (x0, y0), (x1, y1) = (map(float, p.split(",")) for p in first)
    assert x0 == 44 and x1 > x0 and y0 > y1  # left edge; 50% is drawn above 0%


def test_with_no_points_it_says_so_instead_of_drawing_axes():
    html = str(line_chart([Series("GPU 0", [(1.0, None)])], title="Power", unit="W"))
    assert "<svg" not in html and "Power (W): no data for this period yet." in html


def test_labels_and_colours_cannot_inject_markup():
    evil = '<script>alert(1)</script>"'
    svg = str(line_chart([Series(evil, [(0, 1), (1, 2)], color=evil), Series("b", [(0, 2)])], title=evil))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
