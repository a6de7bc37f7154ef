"""`make bench`: how fast the service is, measured in one run on the local stack.

    python -m tests.benchmarks                 # the full run (500k events, 50k customers)
    python -m tests.benchmarks --smoke         # tiny sizes: proves the harness works
    python -m tests.benchmarks --profile       # also py-spy the worker: top costs

Prints a table, writes JSON (``--out``) and a PNG chart of throughput and latency over
the run. Every number comes from the same run, so ratios hold on a noisy machine. No
number here is asserted by the tests: CI runs ``--smoke`` to prove it still works.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.benchmarks.harness import Bench, Workload, make_workload, top_costs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=50_000,
                   help="simulated customers (about 10 touchpoints each; default 50,000)")
    p.add_argument("--partitions", type=int, default=8, help="topic partitions (default 8)")
    p.add_argument("--latency-seconds", type=float, default=30.0,
                   help="how long to offer load for the latency measurement (default 30)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, for CI: 300 customers, 5 s of latency load, 2 slope runs")
    p.add_argument("--profile", action="store_true",
                   help="record the single worker with py-spy and print its top costs")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["naive", "latency", "collector", "sdk", "rocksdb", "scale",
                            "slope"],
                   help="measurements to leave out (naive: also Faust's floor; sdk: also "
                        "kafka-python's; slope: the memory slope's runs, at half the "
                        "customers and again at the full count)")
    p.add_argument("--slope-runs", type=int, default=5,
                   help="runs at each of the memory slope's two sizes (default 5); the slope "
                        "is taken between their medians, as one run's RSS at rest moves by "
                        "tens of MB from run to run (pairs of runs read -939 to 2,519 B per "
                        "customer on one code)")
    p.add_argument("--out", type=Path, default=Path(".journey/bench/bench.json"),
                   help="JSON results (the chart goes beside it as .png)")
    args = p.parse_args(argv)
    if args.smoke:
        args.customers, args.latency_seconds, args.slope_runs = 300, 5.0, 2
    if args.slope_runs < 1:
        p.error("--slope-runs must be at least 1")
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, flush=True)

    results: dict = {"machine": {"python": platform.python_version(), "cpus": _cpus(),
                                 "platform": platform.platform()},
                     "customers": args.customers, "partitions": args.partitions}
    say(f"Simulating {args.customers:,} customers ...")
    workload = make_workload(args.customers)
    n = len(workload)
    results["events"] = n
    say(f"  {n:,} touchpoints")
    started = time.monotonic()
    # SIGTERM (a CI timeout, kill) unwinds like Ctrl-C, so the servers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_dir = out.parent / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    with Bench(args.partitions, echo=say, data_dir=run_dir) as bench:
        say("Pre-filling the touchpoints topic ...")
        main_settings = bench.fresh()
        results["prefill_events_per_second"] = bench.prefill(main_settings, workload)
        say(f"  {results['prefill_events_per_second']:,.0f} events/s")

        say("1. ceiling: bare aiokafka consumer + JSON decode ...")
        results["ceiling_events_per_second"] = bench.ceiling(main_settings, n)
        say(f"  {results['ceiling_events_per_second']:,.0f} events/s")

        if "naive" not in args.skip:
            for name, bare, title in (
                    ("naive", False, "2. naive Faust agent, one table update per event"),
                    ("faust_floor", True,
                     "2b. Faust's floor: batches JSON-decoded, no table, no work")):
                say(f"{title} ...")
                rate, share = bench.naive(main_settings, n, bare=bare)
                results[f"{name}_events_per_second"], results[f"{name}_cpu_share"] = rate, share
                say(f"  {rate:,.0f} events/s, busy {share:.0%} of a core")

        say("3. the real pipeline, one worker (memory store) ...")
        profile = out.parent / "profile.txt" if args.profile else None
        one = bench.pipeline(main_settings, n, profile=profile, label="1 worker",
                             chart_progress=True)
        results["pipeline"] = one
        say(f"  {one['events_per_second']:,.0f} events/s ({one['seconds']:.1f} s; touchpoints "
            f"visible after {one['touchpoints_visible_seconds']:.1f} s; the worker busy "
            f"{one['worker_cpu_share']:.0%} of a core, peak RSS "
            f"{one['worker_peak_rss_bytes'] / 2**20:,.0f} MiB)")
        # State memory: RSS at the end less RSS when the worker had just started.
        results["memory"] = {
            "memory_store_rss_bytes": one["worker_rss_bytes"],
            "memory_store_rss_bytes_per_100k_customers":
                (one["worker_rss_bytes"] - one["worker_rss_at_start_bytes"])
                * 100_000 / args.customers}
        say("6a. the worker's state, read back from its changelogs ...")
        state = bench.state(main_settings)
        results["memory"]["state"] = state
        results["memory"]["state_bytes_per_customer"] = (
            sum(t["bytes"] for t in state.values()) / args.customers)
        say("  " + "; ".join(f"{name} {t['keys']:,} keys, {t['bytes'] / 1e6:,.1f} MB"
                             for name, t in state.items() if t["keys"]))
        if profile is not None and profile.exists():
            results["profile_top_costs"] = top_costs(profile)

        if "rocksdb" not in args.skip:
            say("6. the same with the RocksDB store (memory) ...")
            s = bench.fresh(store="rocksdb://")
            bench.prefill(s, workload)
            rocks = bench.pipeline(s, n, label="1 worker, RocksDB")
            results["pipeline_rocksdb"] = rocks
            results["memory"]["rocksdb_disk_bytes_per_customer"] = (
                rocks["worker_disk_bytes"] / args.customers)
            results["memory"]["rocksdb_store_rss_bytes"] = rocks["worker_rss_bytes"]
            results["memory"]["rocksdb_store_rss_bytes_per_100k_customers"] = (
                (rocks["worker_rss_bytes"] - rocks["worker_rss_at_start_bytes"])
                * 100_000 / args.customers)
            say(f"  {rocks['events_per_second']:,.0f} events/s")

        if "slope" not in args.skip:
            results["memory"].update(_slope(bench, say, args.customers, workload, one,
                                            args.slope_runs))
            m = results["memory"]
            say(f"  {m['slope_bytes_per_customer']:,.0f} bytes per customer between "
                f"{m['slope_customers'][0]:,} and {args.customers:,} (medians of "
                f"{args.slope_runs} runs each; single pairs "
                f"{min(m['slope_pair_bytes_per_customer']):,.0f} to "
                f"{max(m['slope_pair_bytes_per_customer']):,.0f})")

        if "scale" not in args.skip:
            say("7. scale-out: two worker processes ...")
            s = bench.fresh()
            bench.prefill(s, workload)
            two = bench.pipeline(s, n, workers=2, label="2 workers")
            results["pipeline_two_workers"] = two
            results["scale_out_ratio"] = two["events_per_second"] / one["events_per_second"]
            say(f"  {two['events_per_second']:,.0f} events/s, "
                f"{results['scale_out_ratio']:.2f}x one worker")

        if "latency" not in args.skip:
            rate = max(10.0, one["events_per_second"] / 2)
            say(f"4. latency at {rate:,.0f} events/s (half the maximum) for "
                f"{args.latency_seconds:.0f} s ...")
            results["latency"] = bench.latency(bench.fresh(), workload, rate,
                                               args.latency_seconds)
            say(f"  p50 {results['latency']['p50_seconds']:.2f} s, "
                f"p99 {results['latency']['p99_seconds']:.2f} s")

        if "collector" not in args.skip:
            say("5. collector: batches of 100, 16 concurrent clients ...")
            results["collector"] = bench.collector(bench.fresh(), workload, min(n, 100_000))
            say(f"  {results['collector']['events_per_second']:,.0f} events/s, p99 request "
                f"{results['collector']['p99_request_seconds'] * 1000:.1f} ms")
        if "sdk" not in args.skip:
            say("5. SDK: JourneyClient.send to the broker ...")
            results["sdk_events_per_second"] = bench.sdk(bench.fresh(), workload,
                                                         min(n, 200_000))
            say(f"  {results['sdk_events_per_second']:,.0f} events/s")
            say("5b. kafka-python's floor: the same records, a bare send loop ...")
            results["kafka_python_floor_events_per_second"] = bench.kafka_python_floor(
                bench.fresh(), workload, min(n, 200_000))
            say(f"  {results['kafka_python_floor_events_per_second']:,.0f} events/s")
        series = bench.series
    results["wall_seconds"] = time.monotonic() - started
    _ratios(results)
    out.write_text(json.dumps(_strict(results), indent=2, default=str, allow_nan=False))
    chart = out.with_suffix(".png")
    _chart(series, chart)
    print()
    print(_table(results))
    print(f"\nJSON: {out}   chart: {chart}")
    return 0


def _slope(bench: Bench, say: Callable[[str], None], customers: int, workload: Workload,
           first: dict, runs: int) -> dict:
    """RSS at rest per customer between ``customers`` and half of them: the medians of
    ``runs`` runs at each size (``first``: the main run, one of the large ones), taken
    in turns, small then large, so a drift of the machine falls on both sizes.

    Why medians: one pair of runs of the same code read from -76 to 3,265 bytes per
    customer (2026-12-04), as where a run's last batches leave CPython's pools scattered
    moves its RSS by tens of MB."""
    half = customers // 2
    small = make_workload(half)
    highs, lows = [first["worker_rss_bytes"]], []
    for run in range(1, runs + 1):
        for size, load, rss in ((half, small, lows), (customers, workload, highs)):
            if size == customers and run == runs:
                break  # the main run was the first large one
            say(f"6b. memory slope, run {run} of {runs}: {size:,} customers ...")
            s = bench.fresh()
            bench.prefill(s, load)
            got = bench.pipeline(s, len(load), label=f"1 worker, {size:,} customers",
                                 chart=False)
            rss.append(got["worker_rss_bytes"])
            say(f"  RSS at rest {got['worker_rss_bytes'] / 2**20:,.0f} MiB")
    gap = customers - half
    return {"slope_bytes_per_customer":
                (statistics.median(highs) - statistics.median(lows)) / gap,
            "slope_customers": [half, customers],
            "slope_rss_bytes": {str(half): lows, str(customers): highs},
            "slope_pair_bytes_per_customer": [(h - lo) / gap for h, lo in zip(highs, lows,
                                                                             strict=True)]}


def _ratios(r: dict) -> None:
    pipe = r["pipeline"]["events_per_second"]
    r["ratios"] = {"pipeline_over_ceiling": pipe / r["ceiling_events_per_second"]}
    if "naive_events_per_second" in r:
        r["ratios"]["pipeline_over_naive"] = pipe / r["naive_events_per_second"]
    if "faust_floor_events_per_second" in r:
        r["ratios"]["pipeline_over_faust_floor"] = pipe / r["faust_floor_events_per_second"]


def _strict(value: object) -> object:
    """The results with each unknown number (NaN, infinite) as null.

    Python's ``json`` writes NaN as a bare word no strict parser reads (jq, a browser's
    JSON.parse); a tiny run can leave a busy share or a quantile unknown.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict(v) for v in value]
    return value


def _table(r: dict) -> str:
    rows = [("events", f"{r['events']:,}", f"{r['customers']:,} customers, "
             f"{r['partitions']} partitions")]
    rows.append(("1. ceiling (aiokafka + json)", f"{r['ceiling_events_per_second']:,.0f} ev/s", ""))
    if "naive_events_per_second" in r:
        rows.append(("2. naive Faust agent", f"{r['naive_events_per_second']:,.0f} ev/s", ""))
    if "faust_floor_events_per_second" in r:
        share, rate = r["faust_floor_cpu_share"], r["faust_floor_events_per_second"]
        rows.append(("2b. Faust floor (no work)", f"{rate:,.0f} ev/s",
                     f"busy {share:.0%} of a core: {share / rate * 1e6:.0f} µs of CPU an event"))
    p = r["pipeline"]
    ratio = r["ratios"]
    note = f"{ratio['pipeline_over_ceiling']:.2f}x ceiling"
    if "pipeline_over_naive" in ratio:
        note = f"{ratio['pipeline_over_naive']:.2f}x naive, " + note
    rows.append(("3. pipeline, 1 worker", f"{p['events_per_second']:,.0f} ev/s", note))
    if "worker_cpu_share" in p:
        rows.append(("", f"{p['worker_cpu_share']:.0%} busy",
                     "the worker's CPU time over the run, of one core: "
                     f"{p['worker_cpu_seconds'] / r['events'] * 1e6:.0f} µs a touchpoint"))
    if p.get("stage_messages"):
        per = {k: v / r["events"] for k, v in p["stage_messages"].items()}
        rows_per = p["sink_rows"].get("cx_metrics", 0.0) / r["events"]
        rows.append(("", f"{per.get('aggregate_cx', 0.0):.2f} parts",
                     f"CX window parts per touchpoint ({rows_per:.2f} cx_metrics rows, "
                     f"{per.get('update_journey', 0.0):.2f} journey messages)"))
    if "latency" in r:
        lat = r["latency"]
        rows.append(("4. latency at half load", f"p99 {lat['p99_seconds']:.2f} s",
                     f"p50 {lat['p50_seconds']:.2f} s at "
                     f"{lat['offered_events_per_second']:,.0f} ev/s"))
    if "collector" in r:
        c = r["collector"]
        rows.append(("5. collector", f"{c['events_per_second']:,.0f} ev/s",
                     f"p99 request {c['p99_request_seconds'] * 1000:.1f} ms"))
    if "sdk_events_per_second" in r:
        rows.append(("5. SDK", f"{r['sdk_events_per_second']:,.0f} ev/s", ""))
    if "kafka_python_floor_events_per_second" in r:
        rows.append(("5b. kafka-python floor",
                     f"{r['kafka_python_floor_events_per_second']:,.0f} ev/s", "bare send loop"))
    m = r["memory"]
    rows.append(("6. worker RSS / 100k customers",
                 f"{m['memory_store_rss_bytes_per_100k_customers'] / 2**20:,.0f} MiB",
                 "memory store"))
    if "worker_peak_rss_bytes" in p:
        rows.append(("", f"{p['worker_peak_rss_bytes'] / 2**20:,.0f} MiB",
                     "peak RSS of the worker (memory store)"))
    if "rocksdb_store_rss_bytes_per_100k_customers" in m:
        rows.append(("", f"{m['rocksdb_store_rss_bytes_per_100k_customers'] / 2**20:,.0f} MiB",
                     "RocksDB store"))
    if "state_bytes_per_customer" in m:
        journeys = m["state"]["journeys"]
        rows.append(("6a. state", f"{m['state_bytes_per_customer']:,.0f} B/customer",
                     f"keys and values of every table (journeys: {journeys['keys']:,} keys, "
                     f"{journeys['bytes'] / r['customers']:,.0f} B/customer)"))
    if "slope_bytes_per_customer" in m:
        low, high = m["slope_customers"]
        pairs = m.get("slope_pair_bytes_per_customer") or [m["slope_bytes_per_customer"]]
        rows.append(("6b. memory slope", f"{m['slope_bytes_per_customer']:,.0f} B/customer",
                     f"median RSS at {high:,} less at {low:,} customers, memory store "
                     f"({len(pairs)} runs each; pairs {min(pairs):,.0f} to {max(pairs):,.0f})"))
    if "rocksdb_disk_bytes_per_customer" in m:
        rows.append(("6c. RocksDB on disk", f"{m['rocksdb_disk_bytes_per_customer']:,.0f} "
                     "B/customer", "state files after the run"))
    if "scale_out_ratio" in r:
        rows.append(("7. two workers", f"{r['scale_out_ratio']:.2f}x one",
                     f"{r['pipeline_two_workers']['events_per_second']:,.0f} ev/s"))
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{a:<{width}}  {b:>16}  {c}" for a, b, c in rows]
    if r.get("profile_top_costs"):
        lines.append("\ntop costs in the worker (own time, py-spy):")
        lines += [f"  {share * 100:5.1f} %  {frame}" for frame, share in r["profile_top_costs"]]
    return "\n".join(lines)


def _chart(series: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, stages, middle, bottom) = plt.subplots(4, 1, figsize=(9, 13))
    for s in series:
        xs, ys = [x for x, _ in s.points], [y for _, y in s.points]
        if s.name.startswith("latency"):
            bottom.plot(xs, ys, label=s.name)
        elif s.name.endswith("messages taken in"):
            stages.plot(xs, ys, label=s.name)
        elif s.name.endswith("RSS (MiB)"):
            middle.plot(xs, ys, label=s.name)
        else:  # a 5 s moving mean: the raw 0.5 s samples come in bursts
            smooth = [sum(ys[max(0, i - 9):i + 1]) / len(ys[max(0, i - 9):i + 1])
                      for i in range(len(ys))]
            top.plot(xs, smooth, label=s.name)
    top.set_title("throughput: touchpoints reaching ClickHouse (5 s mean)")
    top.set_xlabel("seconds since the first touchpoint")
    top.set_ylabel("events/s")
    stages.set_title("progress: messages each stage has taken in (bundles opened)")
    stages.set_xlabel("seconds since the first touchpoint")
    stages.set_ylabel("messages")
    middle.set_title("memory: the worker's RSS (the last point: after every window settled)")
    middle.set_xlabel("seconds since the first touchpoint")
    middle.set_ylabel("MiB")
    bottom.set_title("latency at half of the maximum load")
    bottom.set_xlabel("seconds of sending")
    bottom.set_ylabel("p99 sent → visible (s)")
    for ax in (top, stages, middle, bottom):
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
