"""The serving benchmark runs end to end on a tiny budget and reports every cell."""

import os

from deeplense_tf.benchmarks import serving as benchmark


def test_benchmark_reports_every_cell(exported, contract):
    base = os.path.join(exported[0], contract.MODEL_NAME)
    results = benchmark.run_benchmark(
        base, contract.MODEL_NAME, batch_sizes=(1, 4), concurrency=(1, 2),
        requests_batch1=4, requests_large=2, repeats=3,
    )
    cells = {(c["path"], c["clients"], c["batch"]) for c in results["cells"]}
    assert cells == {(p, c, b) for p in ("in_process", "rest") for c in (1, 2) for b in (1, 4)}
    for cell in results["cells"]:
        assert cell["p99_ms"] >= cell["p50_ms"] > 0 and cell["images_per_s"] > 0
    assert set(results["breakdown_batch1"]) >= {
        "client_encode_ms", "server_parse_ms", "http_round_trip_ms", "client_encode_batch4_ms", "server_parse_batch4_ms"
    }
    rest, in_process = ([c for c in results["cells"] if c["path"] == p and c["clients"] == 1 and c["batch"] == 1][0]
                        for p in ("rest", "in_process"))
    paired = [r - i for r, i in zip(rest["p50_ms_repeats"], in_process["p50_ms_repeats"])]
    assert len(paired) == 3 and results["rest_overhead_p50_ms_batch1"] == sorted(paired)[1]
    table = benchmark.markdown_table(results)
    assert table.count("\n| rest |") == 4 and "REST p50 - in-process p50" in table
