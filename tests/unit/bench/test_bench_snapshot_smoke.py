"""``bench.bench_snapshot`` runs at a tiny size and lists everything once.

Timings are never asserted: only the counts the benchmark checks itself
(every report ingested, every node and job listed by Status, the served
exposition equal to ``generate_latest``'s) and that each figure is a number.
"""

from __future__ import annotations

from bench.bench_snapshot import measure


def test_every_figure_is_measured_at_a_tiny_size() -> None:
    figures = measure(20, 2, 3, 1)
    assert figures["nodes"] == 20
    assert figures["gpus"] == 40
    assert figures["silent_nodes"] == 1
    assert figures["jobs"] == 3  # 8 nodes per job
    assert figures["status_pages"] == 1
    for name in (
        "ingest_us",
        "snapshot_ms",
        "snapshot_fresh_ms",
        "tick_ms",
        "tick_fresh_ms",
        "scrape_ms",
        "scrape_served_ms",
        "status_first_ms",
        "status_first_fresh_ms",
        "status_walk_fresh_ms",
    ):
        assert isinstance(figures[name], float), name
        assert figures[name] >= 0, name
    assert figures["scrape_bytes"] > 1000
