"""Turns report.json into report.md and the plots beside it.

Also usable alone, to re-render a committed run: python3 loadtest/report.py loadtest/results/<date>
"""

import json
import pathlib
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def ms(us: float) -> float:
    return round(us / 1000, 2)


def tick(name: str) -> str:
    """A run's name on an axis: its qualifier on lines of its own, short enough not to overlap."""
    head, _, qualifier = name.partition(" (")
    return head + ("\n" + textwrap.fill("(" + qualifier, 18) if qualifier else "")


def plot_throughput(report: dict, out: pathlib.Path) -> None:
    names = list(report["scenarios"])
    ceilings = report["ceilings"]
    ours = [report["scenarios"][n].get("orders_per_s", report["scenarios"][n]["rps"]) for n in names]
    compared = [report["scenarios"][n]["compared_with"] for n in names]
    bare = [ceilings[c.removeprefix("ceiling-")]["rps"] if c else 0 for c in compared]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], bare, width=0.4, label="bare ceiling", color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], ours, width=0.4, label="shop", color="#3b7dd8")
    for i, name in enumerate(names):
        row = report["scenarios"][name]
        if row["ratio"] is None:
            continue
        label = f"{row['ratio']:.0%}"
        if row["target_ratio"]:
            label += f"\n(target {row['target_ratio']:.0%})"
        ax.text(i + 0.2, ours[i], label, ha="center", va="bottom", fontsize=8)
    ticks = {"checkout": "checkout\n(orders/s vs tx/s)", "checkout-8": "checkout, 8 conn.\n(orders/s vs tx/s)",
             "product-by-id": "product-by-id\n(Zipf)",
             "product-by-id-uniform": "product-by-id\n(uniform)"}
    ax.set_xticks(list(x), [ticks.get(n, tick(n)) for n in names], fontsize=8)
    ax.set_ylabel("requests per second")
    ax.set_title(f"Throughput against the machine's ceiling ({report['settings']['connections']} connections)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)


def plot_latency(report: dict, out: pathlib.Path) -> None:
    rows = {**{f"ceiling-{k}": v for k, v in report["ceilings"].items()}, **report["scenarios"]}
    names = list(rows)
    percentiles = [("p50_us", "p50"), ("p90_us", "p90"), ("p99_us", "p99")]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.25
    for j, (key, label) in enumerate(percentiles):
        ax.bar([i + (j - 1) * width for i in range(len(names))], [ms(rows[n][key]) for n in names], width=width,
               label=label)
    ax.set_xticks(range(len(names)), [tick(n) for n in names], fontsize=8)
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency percentiles per run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)


def non_2xx(row: dict) -> str:
    """The count, with the statuses where the scenario looked at its responses."""
    by_status = row.get("non_2xx_by_status") or {}
    detail = ", ".join(f"{status}: {n}" for status, n in sorted(by_status.items()))
    return f"{row['non_2xx']} ({detail})" if detail else str(row["non_2xx"])


def cpu(row: dict) -> str:
    """The server's CPU per request, + PostgreSQL's and Redis's (measured on this machine only)."""
    spent = row.get("cpu_us_per_request")
    return f"{spent['server']:.0f} + {spent['postgres_redis']:.0f}" if spent else "–"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def markdown(report: dict) -> str:
    s = report["settings"]
    target = report.get("target", "shop")
    if target == "shop":
        what = "`shop` (all four services in one process, Redis cache, in-process events)"
        catalogue = f"a catalogue of {s['products']} products"
    else:
        what = f"The deployment at {target}"
        catalogue = "its catalogue"
    lines = [
        f"# Load test, {report['date']}",
        "",
        f"{report['machine']['cpus']} CPUs, kernel {report['machine']['kernel']}. {what} on {catalogue}, "
        f"{s['customers']} customers; wrk with {s['threads']} threads and {s['connections']} connections, "
        f"{s['duration_s']} s per run after {s['warmup_s']} s of warm-up (product pages' warm-up walks the "
        "whole catalogue first, so that they measure the caches' steady state; `checkout-8` runs the "
        "same purchases with 8 connections)"
        + (", on the same machine as the server." if target == "shop" else "."),
        "",
    ]
    if s.get("raised_limits"):
        lines += [
            "Rate limits raised for the runs, by configuration: "
            + ", ".join(f"`{name}`" for name in s["raised_limits"])
            + " (the customers all come from one address and each orders far more often than a person would).",
            "",
        ]
    if s.get("autovacuum_turned_on"):
        lines += [
            "PostgreSQL's autovacuum, off in this machine's configuration, was on for the runs, as in any "
            "deployment.",
            "",
        ]
    lines += [
        "![throughput](throughput.png)",
        "",
        "![latency](latency.png)",
        "",
        "| run | requests/s | p50 ms | p90 ms | p99 ms | max ms | non-2xx | socket errors | CPU µs per request "
        "| ratio to ceiling | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in report["ceilings"].items():
        errors = row["connect_errors"] + row["read_errors"] + row["write_errors"] + row["timeouts"]
        lines.append(
            f"| ceiling-{name} | {row['rps']:.0f} | {ms(row['p50_us'])} | {ms(row['p90_us'])} | {ms(row['p99_us'])} "
            f"| {ms(row['max_us'])} | {row['non_2xx']} | {errors} | {cpu(row)} | – | – |"
        )
    for name, row in report["scenarios"].items():
        errors = row["connect_errors"] + row["read_errors"] + row["write_errors"] + row["timeouts"]
        rps = f"{row['rps']:.0f}"
        if "orders_per_s" in row:
            rps += f" ({row['orders_per_s']:.0f} orders/s)"
        target = row["target_ratio"]
        compared = row["ratio"] is not None
        judged = f"≥ {target:.0%}: {verdict(row['ratio'] >= target)}" if target and compared else "–"
        ratio = f"{row['ratio']:.0%} of {row['compared_with']}" if compared else "no ceiling measured"
        lines.append(
            f"| {name} | {rps} | {ms(row['p50_us'])} | {ms(row['p90_us'])} | {ms(row['p99_us'])} | {ms(row['max_us'])} "
            f"| {non_2xx(row)} | {errors} | {cpu(row)} | {ratio} | {judged} |"
        )
    lines += [
        "",
        "CPU µs per request: what the serving process spent per request, plus what PostgreSQL and Redis "
        "spent (user + system time from `/proc`, over the measured run). Throughput on a shared machine "
        "moves with its neighbours; the CPU a request costs moves much less, so it is the number to "
        "compare between runs.",
    ]
    cached = {name: row["cache"] for name, row in report["scenarios"].items() if row.get("cache")}
    if cached:
        lines += [
            "",
            "## Cache use",
            "",
            "| run | L1 (in-process) hit ratio | L2 (Redis) hit ratio | Redis commands per request |",
            "|---|---:|---:|---:|",
        ]
        for name, use in cached.items():
            share = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
            redis = use.get("redis_calls_per_request")
            lines.append(f"| {name} | {share(use['l1_hit_ratio'])} | {share(use['l2_hit_ratio'])} "
                         f"| {'–' if redis is None else f'{redis:.2f}'} |")
        lines += ["", "L2's ratio counts only the reads L1 did not answer. Redis commands include every "
                  "client's (rate limits, revocation checks, invalidations)."]
    work = report["scenarios"].get("checkout", {}).get("database_work")
    if work:
        lines += [
            "",
            "## Database work per order",
            "",
            "| SQL statements per order | transactions per order | idle statements/s | idle transactions/s |",
            "|---:|---:|---:|---:|",
            f"| {work['statements_per_order']} | {work['commits_per_order']} | {work['idle_statements_per_s']} "
            f"| {work['idle_commits_per_s']} |",
            "",
            "PostgreSQL's own counts over the measured checkout run (`pg_stat_statements` calls, BEGIN and "
            "COMMIT included; `pg_stat_database` commits, read-only transactions included), divided by the "
            "orders made: every service and consumer, and the background work that ran meanwhile. The idle "
            "rates were measured over ten seconds without requests just before.",
        ]
    stale = report.get("staleness")
    if stale:
        lines += [
            "",
            "## Cross-replica staleness",
            "",
            f"Two `shop` replicas on one database and Redis, no other load: {stale['rounds']} stock changes "
            "on the first, each to a product the second had just cached; the time from the write's answer "
            f"to the second serving the new value: p50 {stale['p50_ms']} ms, p99 {stale['p99_ms']} ms, "
            f"max {stale['max_ms']} ms (bound: `CACHE_STALE_MAX`, 1 s).",
        ]
    lines += ["", "## Targets", ""]
    for name, row in report["scenarios"].items():
        if row["target_ratio"] and row["ratio"] is not None:
            ok = row["ratio"] >= row["target_ratio"]
            lines.append(
                f"- {name}: {row['ratio']:.0%} of {row['compared_with']} (target {row['target_ratio']:.0%}): "
                f"{verdict(ok)}" + ("" if ok else f", short by {row['target_ratio'] - row['ratio']:.0%} of the ceiling")
            )
        non2xx = row["non_2xx"] == 0
        lines.append(f"- {name}: {row['non_2xx']} non-2xx responses (target 0): {verdict(non2xx)}")
    ceiling_cpu = (report["ceilings"].get("json") or {}).get("cpu_us_per_request", {}).get("server")
    for name in ("product-by-id", "product-by-id-uniform", "browse", "browse-gzip"):
        row = report["scenarios"].get(name)
        spent = (row or {}).get("cpu_us_per_request")
        if spent and ceiling_cpu:
            times = spent["server"] / ceiling_cpu
            judged = {
                "browse": "(no target: a page, not a read)",
                "browse-gzip": "(no target: what compression costs, beside browse)",
            }.get(name, f"(target ≤ 2×): {verdict(times <= 2)}")
            lines.append(f"- {name}: {spent['server']:.1f} µs of CPU per request, {times:.1f}× the ceiling's "
                         f"{ceiling_cpu:.1f} µs {judged}")
    if "checkout" in report["scenarios"]:
        p99 = ms(report["scenarios"]["checkout"]["p99_us"])
        lines.append(f"- checkout p99 {p99} ms at {s['connections']} connections (target < 100 ms): {verdict(p99 < 100)}")
    if "checkout-8" in report["scenarios"]:
        light = report["scenarios"]["checkout-8"]
        p99 = ms(light["p99_us"])
        at = light.get("connections", 8)
        lines.append(f"- checkout-8 p99 {p99} ms at {at} connections (target < 30 ms): {verdict(p99 < 30)}")
    if "checkout" in report["scenarios"]:
        work = report["scenarios"]["checkout"].get("database_work")
        if work:
            statements, commits = work["statements_per_order"], work["commits_per_order"]
            lines.append(f"- checkout: {statements} SQL statements per order (budget ≤ 25): {verdict(statements <= 25)}")
            lines.append(f"- checkout: {commits} transactions per order (budget ≤ 10): {verdict(commits <= 10)}")
    memory = report["memory_mib"]
    lines += ["", "## Memory (resident, MiB)", ""]
    if memory:
        lines += ["| process | idle | after the runs | target (each service) |", "|---|---:|---:|---|"]
        for process, m in memory.items():
            judged = "–"
            if process.endswith("-service") and m.get("loaded"):
                after = m.get("after_mib", 0)
                judged = f"< 30 idle, < 100 loaded: {verdict(m['idle_mib'] < 30 and after < 100)}"
            elif process.endswith("-service"):
                judged = f"< 30 idle: {verdict(m['idle_mib'] < 30)} (not loaded in this run)"
            elif process == "shop" and "after_mib" in m:
                judged = f"< 150 after the runs: {verdict(m['after_mib'] < 150)}"
            lines.append(f"| {process} | {m['idle_mib']} | {m.get('after_mib', '–')} | {judged} |")
        after_each = [(name, row["shop_rss_mib"]) for name, row in report["scenarios"].items() if "shop_rss_mib" in row]
        if after_each:
            steps = ", ".join(f"{name} {mib}" for name, mib in after_each)
            staleness = memory.get("shop", {}).get("after_staleness_mib")
            tail = f", then the staleness measurement (a second replica's writes) {staleness}" if staleness else ""
            lines += ["", f"`shop` after each run: {steps}{tail}."]
    else:
        lines.append("Not measured: the processes under test ran elsewhere (see the deployment's own metrics).")
    audit = report["audit"]
    lines += ["", "## Invariant audit after the checkout scenario", ""]
    if audit is None:
        lines.append("Not run (no checkout scenario in this run, or no --database-url to audit).")
    else:
        lines.append(f"Orders by status: {audit['orders_by_status']}.")
        lines.append("")
        if audit["still_in_flight"]:
            lines.append(f"Still in flight after 60 s: {audit['still_in_flight']}.")
        if audit["violations"]:
            lines.append(f"**{len(audit['violations'])} violations:**")
            lines += [f"- {v}" for v in audit["violations"][:50]]
        else:
            lines.append("**Zero violations** of the invariants of API.md (stock conservation, reservations agree "
                         "with orders, one succeeded payment per paid order, cancelled orders net zero at the "
                         "provider, no double charge, every event applied).")
    if report.get("notes"):
        lines += ["", "## Notes", "", report["notes"]]
    return "\n".join(lines) + "\n"


def write(report: dict, out: pathlib.Path) -> None:
    plot_throughput(report, out)
    plot_latency(report, out)
    (out / "report.md").write_text(markdown(report))


if __name__ == "__main__":
    directory = pathlib.Path(sys.argv[1])
    write(json.loads((directory / "report.json").read_text()), directory)
