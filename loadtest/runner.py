#!/usr/bin/env python3
"""Runs the wrk scenarios against `shop` and the bare ceiling in one go, and writes the report.

Started by loadtest/run (which installs and builds what this needs). Every scenario and
ceiling runs with the same wrk settings, one after another, on this machine: the report
gives each scenario's throughput as a ratio to the ceiling measured in the same run.
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOADTEST = ROOT / "loadtest"
PASSWORD = "loadtest-password"
PSQL = ["psql", "-qAtX", "-v", "ON_ERROR_STOP=1"]
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432"
# The first admin of development configurations (shop, compose): the runner adds stock
# through the API as an admin would.
ADMIN = {"email": os.environ.get("LOADTEST_ADMIN_EMAIL", "admin@shop.local"),
         "password": os.environ.get("LOADTEST_ADMIN_PASSWORD", "admin-password-dev-only")}

# What each scenario is compared with, and the share of that ceiling it should reach.
SCENARIOS = {
    # Steady state: the warm-up walks the whole catalogue, as a store's caches hold it
    # after hours of traffic, instead of measuring the first reads.
    "product-by-id": {
        "script": "product-by-id.lua", "ceiling": "json", "target": 0.60,
        "warmup": {"env": {"LOADTEST_DRAW": "walk"}, "seconds": 15, "until_cached": True},
    },
    "product-by-id-uniform": {
        "script": "product-by-id.lua", "ceiling": "json", "target": 0.45, "env": {"LOADTEST_DRAW": "uniform"},
        "warmup": {"env": {"LOADTEST_DRAW": "walk"}, "seconds": 15, "until_cached": True},
    },
    "browse": {"script": "browse.lua", "ceiling": "json", "target": 0.40},
    # What compression costs: the same pages, asked for gzip-encoded as browsers do.
    "browse-gzip": {"script": "browse.lua", "ceiling": "json", "target": None, "env": {"LOADTEST_ACCEPT_ENCODING": "gzip"}},
    "checkout": {"script": "checkout.lua", "ceiling": "tx", "target": 0.10},
    # The same purchases at a light load: a customer's latency when the server is not busy.
    "checkout-8": {"script": "checkout.lua", "ceiling": "tx", "target": None, "connections": 8},
    "mixed": {"script": "mixed.lua", "ceiling": "json", "target": None},
}
CEILINGS = {"json": ("GET", "/json"), "tx": ("POST", "/tx")}
# Each product's stock and held units (loadtest/sql/stock.sql), without its comments.
STOCK = " ".join(
    line for line in (LOADTEST / "sql" / "stock.sql").read_text().splitlines() if not line.startswith("--")
)


# Rate limits the load's customers would exceed (all from one address, each checking out
# far more often than a person): raised for the runs, and named in the report.
RAISED_LIMITS = {
    name: "1000000"
    for name in ("LOGIN_RATE_LIMIT", "LOGIN_ADDRESS_RATE_LIMIT", "REGISTRATION_RATE_LIMIT",
                 "CHECKOUT_RATE_LIMIT", "PAYMENT_RATE_LIMIT")
}


def say(message: str) -> None:
    print(f"\033[1m==> {message}\033[0m", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(database: str, sql: str) -> list[list[str]]:
    """Rows of a query; `database` is a connection URL."""
    done = subprocess.run([*PSQL, "-d", database, "-F", "\t", "-c", sql], capture_output=True, text=True, check=True)
    return [line.split("\t") for line in done.stdout.splitlines() if line]


def autovacuum(on: bool) -> bool:
    """Turns the local server's autovacuum on for the runs (and back off after them), when
    its configuration has it off, as this machine's CI settings do: no deployment runs
    without it, and without it the checkout's tables and their statistics only grow
    staler as the run goes on (throughput fell by a third within a minute, measured).
    Whether it turned it on."""
    server = f"{LOCAL_SERVER}/postgres"
    if on:
        if psql(server, "SHOW autovacuum") == [["on"]]:
            return False
        psql(server, "ALTER SYSTEM SET autovacuum = on")
    else:
        psql(server, "ALTER SYSTEM RESET autovacuum")
    psql(server, "SELECT pg_reload_conf()")
    return on


def rss_kib(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def http(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


class Process:
    """A binary of ours, with its log in the results directory."""

    def __init__(self, name: str, binary: str, args: list[str], env: dict[str, str], log: pathlib.Path):
        self.name = name
        self.log = log
        self.env = env
        self.process = subprocess.Popen(
            [binary, *args], env={**os.environ, **env}, stdout=log.open("w"), stderr=subprocess.STDOUT
        )

    def wait_ready(self, url: str, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"{self.name} exited: see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.2)
        sys.exit(f"{self.name} never became ready at {url}: see {self.log}")

    def rss_mib(self) -> float:
        return round(rss_kib(self.process.pid) / 1024, 1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


CLK_TCK = os.sysconf("SC_CLK_TCK")
# What serves the server's requests on this machine: their CPU is counted per request too.
BACKING = ("postgres", "redis-server")


def cpu_seconds(server: int | list[int] | None) -> dict[int, float]:
    """CPU seconds (user + system) so far of the serving process(es) and of every PostgreSQL
    and Redis process, by pid. Throughput on a shared machine moves with the neighbours; the
    CPU a request costs moves much less, so the report gives both."""
    servers = set(server) if isinstance(server, list) else {server}
    found = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(entry.name) in servers or command in BACKING:
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return found


def wrk(
    label: str, script: str, url: str, args, env: dict[str, str], seconds: int, progress: str,
    server: int | list[int] | None = None,
) -> dict:
    """One wrk run; its result line parsed. Shows what runs and how long is left. With the
    server's pid, the CPU each request cost it (and PostgreSQL and Redis) is measured too."""
    command = [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency", "--timeout", "10s",
        "-s", str(LOADTEST / script), url,
    ]
    wrk_env = {
        **os.environ,
        "LOADTEST_DIR": str(LOADTEST),
        "LOADTEST_DATA": str(args.data),
        "LOADTEST_PASSWORD": PASSWORD,
        "LOADTEST_CONNECTIONS": str(args.connections),
        "LOADTEST_THREADS": str(args.threads),
        **env,
    }
    cpu_before = cpu_seconds(server) if server else {}
    started = time.time()
    process = subprocess.Popen(command, env=wrk_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while process.poll() is None:
        left = max(0, seconds - int(time.time() - started))
        print(f"\r    {progress} {label}: {left:3d}s left ", end="", flush=True)
        time.sleep(1)
    cpu_after = cpu_seconds(server) if server else {}
    print(f"\r    {progress} {label}: done{' ' * 12}", flush=True)
    output = process.stdout.read()
    line = next((l for l in output.splitlines() if l.startswith("LOADTEST_RESULT ")), None)
    if process.returncode != 0 or line is None:
        sys.exit(f"wrk failed for {label}:\n{output}")
    result = json.loads(line.removeprefix("LOADTEST_RESULT "))
    statuses: dict[str, int] = {}
    for per_thread in result.pop("statuses_by_thread"):
        for status, n in per_thread.items():
            statuses[status] = statuses.get(status, 0) + n
    result["non_2xx_by_status"] = statuses
    servers = set(server) if isinstance(server, list) else {server}
    if servers <= cpu_after.keys() and servers <= cpu_before.keys() and result["requests"]:
        spent = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
        server_s = sum(spent.pop(pid) for pid in servers)
        backing_s = sum(spent.values())
        result["cpu_us_per_request"] = {
            "server": round(server_s * 1e6 / result["requests"], 1),
            "postgres_redis": round(backing_s * 1e6 / result["requests"], 1),
        }
    result["wrk_output"] = [l for l in output.splitlines() if not l.startswith("LOADTEST_RESULT ")]
    return result


def prepare_data(base: str, args) -> None:
    """The files the scenarios read, through the API alone (so any deployment will do):
    product, category and checkout ids, search terms, and registered customers."""
    data = args.data
    data.mkdir(parents=True, exist_ok=True)
    products, cursor = [], None
    # Every product: product pages are drawn over the whole catalogue.
    while len(products) < args.products:
        status, page = http("GET", f"{base}/api/products?limit=100" + (f"&cursor={cursor}" if cursor else ""))
        if status != 200:
            sys.exit(f"listing products: {status} {page}")
        products += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if len(products) < 100:
        sys.exit(f"the catalogue has {len(products)} products: seed it first (product-service seed --products N)")
    (data / "product-ids.txt").write_text("".join(f"{p['id']}\n" for p in products))
    status, categories = http("GET", f"{base}/api/categories")
    (data / "category-ids.txt").write_text("".join(f"{c['id']}\n" for c in categories["items"]))
    words = sorted({w.lower() for p in products[:5000] for w in p["name"].split() if len(w) > 3 and w.isalpha()})
    (data / "search-terms.txt").write_text("".join(f"{w}\n" for w in words))
    # Products the checkouts buy get plenty of stock (by the admin, through the API), so
    # that "sold out" is not what is measured.
    status, tokens = http("POST", f"{base}/api/auth/login", ADMIN)
    if status != 200:
        sys.exit(f"admin login ({ADMIN['email']}; LOADTEST_ADMIN_EMAIL/PASSWORD): {status} {tokens}")
    admin = tokens["access_token"]
    picked = products[:: max(1, len(products) // 500)][:500]

    def restock(product: dict) -> str:
        status, body = http("POST", f"{base}/api/products/{product['id']}/stock", {"delta": 1_000_000}, admin)
        if status != 200:
            sys.exit(f"adding stock to {product['id']}: {status} {body}")
        return product["id"]

    def register(n: int) -> str:
        email = f"customer{n}@loadtest.example"
        status, body = http(
            "POST", f"{base}/api/auth/register", {"username": f"loadtest{n}", "email": email, "password": PASSWORD}
        )
        if status not in (201, 409):
            sys.exit(f"registering {email}: {status} {body}")
        return email

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        checkout = list(pool.map(restock, picked))
        emails = list(pool.map(register, range(args.customers)))
    (data / "checkout-ids.txt").write_text("".join(f"{i}\n" for i in checkout))
    (data / "customers.txt").write_text("".join(f"{email}\n" for email in emails))


def settle(database: str, timeout: float = 60) -> list[str]:
    """Waits until no checkout, payment attempt, refund or event is in flight; what still is."""
    deadline = time.time() + timeout
    while True:
        busy = psql(database, (LOADTEST / "sql" / "busy.sql").read_text())
        if not busy or time.time() > deadline:
            return [f"{row[1]} {row[0]}" for row in busy]
        time.sleep(0.5)


def audit(database: str) -> dict:
    """The invariants of API.md, from the databases (loadtest/sql/invariants.sql)."""
    still_busy = settle(database)
    violations = [row[0] for row in psql(database, (LOADTEST / "sql" / "invariants.sql").read_text())]
    stock = psql(
        database,
        f"SELECT s.id || ': stock ' || s.stock || ' + held ' || s.held || ' != ' || b.total "
        f"FROM ({STOCK}) s JOIN loadtest_stock_before b ON b.id = s.id WHERE s.stock + s.held <> b.total",
    )
    violations += [f"product {row[0]}" for row in stock]
    orders = dict(psql(database, "SELECT status, count(*) FROM ordering.orders GROUP BY status"))
    return {"violations": violations, "still_in_flight": still_busy, "orders_by_status": orders}


# PostgreSQL flushes a backend's transaction counts to `pg_stat_database` within about ten
# seconds of it going idle: counts are read that long after the work they count.
STATS_SETTLE_S = 11


def checkpoint(database: str | None) -> None:
    """A checkpoint of the local server before a measured run, so that none lands inside
    it (one is due every five minutes, and its writes, with the full-page images every page
    then costs the WAL again, took a third off the checkout run they fell in, measured):
    every run then measures the same phase of the database's write cycle."""
    if database and database.startswith(LOCAL_SERVER):
        psql(f"{LOCAL_SERVER}/postgres", "CHECKPOINT")


def statements_counted(database: str) -> bool:
    """Whether `pg_stat_statements` is loaded (loadtest/run loads it) and set up here."""
    try:
        psql(database, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        psql(database, "SELECT count(*) FROM pg_stat_statements")
        return True
    except subprocess.CalledProcessError:
        say("statements not counted: pg_stat_statements is not in shared_preload_libraries")
        return False


def database_counts(database: str) -> tuple[int, int]:
    """Statements run (`pg_stat_statements` calls, BEGIN and COMMIT included) and
    transactions committed in this database so far, less this query's own."""
    [[calls, commits]] = psql(
        database,
        "SELECT (SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
        "ON d.oid = s.dbid WHERE d.datname = current_database()), "
        "(SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
    )
    return int(calls), int(commits)


def idle_database_work(database: str) -> tuple[dict, tuple[int, int]]:
    """Statements and commits per second with no requests: the services' background work
    (relays, job claims), measured over ten seconds once the counts have settled; and the
    counts at its end, from which the next run is counted."""
    time.sleep(STATS_SETTLE_S)
    start = database_counts(database)
    time.sleep(10)
    end = database_counts(database)
    return {"statements_per_s": (end[0] - start[0] - 1) / 10, "commits_per_s": (end[1] - start[1] - 1) / 10}, end


def database_work_per_order(database: str, idle: dict, before: tuple[int, int], result: dict) -> dict:
    """Statements and commits per order over the measured run, background work included;
    the idle work of the wait for the counts to settle is taken off."""
    time.sleep(STATS_SETTLE_S)
    calls, commits = database_counts(database)
    before_calls, before_commits = before
    orders = max(result.get("orders", 0), 1)
    settle_calls, settle_commits = idle["statements_per_s"] * STATS_SETTLE_S, idle["commits_per_s"] * STATS_SETTLE_S
    return {
        "statements_per_order": round((calls - before_calls - 1 - settle_calls) / orders, 1),
        "commits_per_order": round((commits - before_commits - 1 - settle_commits) / orders, 1),
        "idle_statements_per_s": round(idle["statements_per_s"], 1),
        "idle_commits_per_s": round(idle["commits_per_s"], 1),
    }


def snapshot_stock(database: str) -> None:
    """What each product holds before the runs (stock + held), for the audit's conservation check."""
    psql(
        database,
        "DROP TABLE IF EXISTS loadtest_stock_before; "
        f"CREATE TABLE loadtest_stock_before AS SELECT id, stock + held AS total FROM ({STOCK}) s",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=100_000, help="catalogue size (default 100000)")
    parser.add_argument("--duration", type=int, default=30, help="seconds per measured run (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="seconds of unmeasured warm-up per scenario")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--customers", type=int, default=0, help="customers (default 2 per connection)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--out", type=pathlib.Path, help="results directory (default loadtest/results/<date>)")
    parser.add_argument("--base-url", help="test a running deployment (Envoy in compose, say) instead of starting shop")
    parser.add_argument("--ceiling-url", help="with --base-url: the running ceiling to compare with")
    parser.add_argument("--database-url", help="with --base-url: PostgreSQL of that deployment, for the audit")
    parser.add_argument(
        "--gateway-admin", help="Envoy's admin URL: its rate limit is not enforced during the runs (a runtime key)"
    )
    args = parser.parse_args()
    args.customers = args.customers or 2 * args.connections + args.threads
    today = datetime.date.today().isoformat()
    out = args.out or LOADTEST / "results" / today
    out.mkdir(parents=True, exist_ok=True)
    args.data = out / "data"
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenarios: {sorted(unknown)}; known: {list(SCENARIOS)}")

    processes: dict[str, Process] = {}
    if args.base_url:
        base, ceiling_base, database = args.base_url.rstrip("/"), args.ceiling_url, args.database_url
    else:
        args.autovacuum_turned_on = autovacuum(True)
        base, ceiling_base, database = start_locally(args, out, processes)
    memory = {name: {"idle_mib": process.rss_mib()} for name, process in processes.items()}

    if args.gateway_admin:
        gateway_rate_limit(args.gateway_admin, enforced=False)
    try:
        results, memory, audit_result = run_all(args, out, scenarios, base, ceiling_base, database, processes, memory)
    finally:
        for process in processes.values():
            process.stop()
        if args.gateway_admin:
            gateway_rate_limit(args.gateway_admin, enforced=True)
        if getattr(args, "autovacuum_turned_on", False):
            autovacuum(False)
    args.target = base if args.base_url else "shop"
    report = build_report(args, scenarios, results, memory, audit_result, today)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    import report as render  # loadtest/report.py: the markdown and the plots

    render.write(report, out)
    shutil.rmtree(args.data, ignore_errors=True)
    say(f"report: {out / 'report.md'}")


def run_all(args, out, scenarios, base, ceiling_base, database, processes, memory):
    """Data, ceilings, scenarios, audit and per-service memory: the measured part."""

    def pid(name: str) -> int | None:
        return processes[name].process.pid if name in processes else None

    say(f"customers and data files ({args.customers} customers)")
    prepare_data(base, args)
    if database:
        snapshot_stock(database)

    ceilings_needed = sorted({SCENARIOS[s]["ceiling"] for s in scenarios}) if ceiling_base else []
    runs = len(ceilings_needed) + len(scenarios)
    say(
        f"{runs} runs of {args.duration}s (+{args.warmup}s warm-up each), {args.connections} connections, "
        f"{args.threads} threads: about {runs * (args.duration + args.warmup) // 60 + 1} minutes"
    )
    results: dict[str, dict] = {}
    step = 0
    for name in ceilings_needed:
        step += 1
        method, path = CEILINGS[name]
        env_run = {"LOADTEST_METHOD": method, "LOADTEST_PATH": path}
        label = f"ceiling-{name}"
        checkpoint(database)
        if args.warmup:
            wrk(label + " (warm-up)", "ceiling.lua", ceiling_base, args, env_run, args.warmup, f"[{step}/{runs}]")
        results[label] = wrk(
            label, "ceiling.lua", ceiling_base, args, env_run, args.duration, f"[{step}/{runs}]", pid("ceiling")
        )
    audit_result = None
    # The audit follows the last scenario that places orders.
    last_checkout = next((name for name in reversed(scenarios) if name.startswith("checkout")), None)
    for name in scenarios:
        step += 1
        script, env_run = SCENARIOS[name]["script"], SCENARIOS[name].get("env", {})
        run_args = with_connections(args, SCENARIOS[name].get("connections"))
        if args.warmup:
            warm_up(name, base, run_args, f"[{step}/{runs}]")
        counting = name == "checkout" and database and statements_counted(database)
        checkpoint(database)
        if counting:
            idle, idle_end = idle_database_work(database)
        before = cache_counters(base), redis_commands()
        results[name] = wrk(name, script, base, run_args, env_run, args.duration, f"[{step}/{runs}]", pid("shop"))
        results[name]["connections"] = run_args.connections
        if "shop" in processes:
            # Resident memory after each run, to see which one the total after the runs comes from.
            results[name]["shop_rss_mib"] = processes["shop"].rss_mib()
        results[name]["cache"] = cache_use(before, (cache_counters(base), redis_commands()), results[name])
        if counting:
            results[name]["database_work"] = database_work_per_order(database, idle, idle_end, results[name])
        if name == last_checkout and database:
            say("auditing the invariants after the checkout scenario")
            audit_result = audit(database)
    if not args.base_url and "product-by-id" in scenarios:
        results["staleness"] = measure_staleness(args, out, processes, base)
        if "shop" in processes:
            memory["shop"]["after_staleness_mib"] = processes["shop"].rss_mib()
    for name, process in processes.items():
        memory[name]["after_mib"] = process.rss_mib()
        process.stop()
    deployed = [name for name in ("product-by-id", "checkout") if name in scenarios]
    if not args.base_url and deployed:
        services, deployed_runs = measure_services(args, out, deployed, database)
        memory.update(services)
        results.update(deployed_runs)
    return results, memory, audit_result


def with_connections(args, connections: int | None):
    """`args` with another number of wrk connections, for a scenario that sets its own."""
    return argparse.Namespace(**{**vars(args), "connections": connections}) if connections else args


L2_MISSES = '{level="l2",outcome="miss"}'


def warm_up(name: str, base: str, args, progress: str) -> None:
    """A scenario's unmeasured warm-up. One that must end with the catalogue cached walks
    it again (each walk starts over, quickly through what is cached) until a walk finds
    almost nothing missing from Redis: how long the first one takes depends on the
    database's own caches. Without the server's /metrics, one walk."""
    script, env_run = SCENARIOS[name]["script"], SCENARIOS[name].get("env", {})
    warmup = SCENARIOS[name].get("warmup", {})
    env, seconds = {**env_run, **warmup.get("env", {})}, max(args.warmup, warmup.get("seconds", 0))
    for _ in range(4 if warmup.get("until_cached") else 1):
        before = cache_counters(base)
        wrk(name + " (warm-up)", script, base, args, env, seconds, progress)
        after = cache_counters(base)
        if not after or after.get(L2_MISSES, 0) - before.get(L2_MISSES, 0) < args.products / 100:
            return


def cache_counters(base: str) -> dict[str, float]:
    """The cache's request counters from the server's /metrics, by their labels."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    counters = {}
    for line in text.splitlines():
        if line.startswith("cache_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            counters[labels.removeprefix("cache_requests_total")] = float(value)
    return counters


def redis_commands() -> int | None:
    """Commands Redis has run so far (every client's), from INFO."""
    done = subprocess.run(["redis-cli", "-h", "127.0.0.1", "INFO", "stats"], capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":")[1])
    return None


def cache_use(before: tuple, after: tuple, result: dict) -> dict:
    """Hit ratios of each cache level and Redis commands per request over one measured run."""
    (counters_before, redis_before), (counters_after, redis_after) = before, after

    def count(level: str, outcome: str) -> float:
        label = f'{{level="{level}",outcome="{outcome}"}}'
        return counters_after.get(label, 0) - counters_before.get(label, 0)

    use = {}
    for level in ("l1", "l2"):
        hits = count(level, "hit")
        asked = hits + count(level, "miss") + count(level, "bypassed")
        use[f"{level}_hit_ratio"] = round(hits / asked, 3) if asked else None
    if redis_before is not None and redis_after is not None and result["requests"]:
        use["redis_calls_per_request"] = round((redis_after - redis_before) / result["requests"], 3)
    return use


def measure_staleness(args, out: pathlib.Path, processes: dict, base: str, rounds: int = 200) -> dict:
    """A second `shop` replica on the same database and Redis: how long after a write on the
    first (an admin's stock change, answered) the second serves the new value, over
    `rounds` writes to products the second has just cached. Run with no other load."""
    say("cross-replica staleness: a second shop replica, writes on the first, reads on the second")
    port = free_port()
    replica = Process("shop-replica", str(binaries() / "shop"), [], {**processes["shop"].env, "PORT": str(port)},
                      out / "shop-replica.log")
    try:
        replica.wait_ready(f"http://127.0.0.1:{port}/ready")
        status, tokens = http("POST", f"{base}/api/auth/login", ADMIN)
        if status != 200:
            sys.exit(f"admin login for the staleness run: {status} {tokens}")
        admin = tokens["access_token"]
        ids = (args.data / "checkout-ids.txt").read_text().split()
        lags_ms, stale_max_ms = [], 0.0
        for n in range(rounds):
            product = ids[n % len(ids)]
            status, cached = http("GET", f"http://127.0.0.1:{port}/api/products/{product}")
            status, written = http("POST", f"{base}/api/products/{product}/stock", {"delta": 1}, admin)
            if status != 200:
                sys.exit(f"a stock change for the staleness run: {status} {written}")
            answered = time.monotonic()
            while True:
                status, seen = http("GET", f"http://127.0.0.1:{port}/api/products/{product}")
                if status == 200 and seen["stock"] >= written["stock"]:
                    lags_ms.append((time.monotonic() - answered) * 1000)
                    break
                if time.monotonic() - answered > 5:
                    sys.exit(f"replica two never saw the write to {product}")
        lags_ms.sort()
        stale_max_ms = lags_ms[-1]
        return {
            "rounds": rounds,
            "p50_ms": round(lags_ms[len(lags_ms) // 2], 2),
            "p99_ms": round(lags_ms[int(len(lags_ms) * 0.99) - 1], 2),
            "max_ms": round(stale_max_ms, 2),
        }
    finally:
        replica.stop()


def gateway_rate_limit(admin: str, enforced: bool) -> None:
    """Turns the gateway's local rate limit on or off (configuration, not code): a load test
    measures the platform, not the limit meant for one client."""
    value = 100 if enforced else 0
    request = urllib.request.Request(f"{admin.rstrip('/')}/runtime_modify?gateway.rate_limit_enforced={value}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            sys.exit(f"the gateway's admin refused the runtime change: {response.status}")
    say(f"gateway rate limit {'enforced again' if enforced else 'not enforced during the runs'}")


SERVICES = {"user": 8081, "product": 8082, "order": 8083, "payment": 8084}


ALONE = "product-by-id (product-service alone)"
DEPLOYED = "checkout (four services, Envoy, Kafka)"


def gateway_config(ports: dict[str, int], listen: int, admin: int) -> str:
    """deploy/envoy/envoy.yaml as it is, but for the services' and its own local ports."""
    text = (ROOT / "deploy" / "envoy" / "envoy.yaml").read_text()
    for name, port in ports.items():
        deployed = f"address: {name}-service, port_value: {SERVICES[name]}"
        if deployed not in text:
            sys.exit(f"deploy/envoy/envoy.yaml has no endpoint '{deployed}'")
        text = text.replace(deployed, f"address: 127.0.0.1, port_value: {port}")
    for deployed, local in (("port_value: 8080 }", listen), ("port_value: 9901 }", admin)):
        if deployed not in text:
            sys.exit(f"deploy/envoy/envoy.yaml has no '{deployed}'")
        text = text.replace(deployed, f"port_value: {local} }}", 1)
    return text


def measure_services(args, out: pathlib.Path, runs: list[str], database: str | None) -> tuple[dict, dict]:
    """The four service binaries as they are deployed (each its own process, with Redis and
    a Kafka-protocol broker): resident memory idle, and after product-by-id against the
    product service alone; and the checkout through the Envoy gateway of deploy/envoy
    (the `envoy` of ENVOY or the PATH; loadtest/run installs one), with the database work
    an order costs. Skipped, and said so, without tansu or the release binaries."""
    bin_dir = binaries()
    tansu = os.environ.get("TANSU") or shutil.which("tansu") or str(pathlib.Path.home() / ".cargo/bin/tansu")
    missing = [name for name in SERVICES if not (bin_dir / f"{name}-service").exists()]
    if not pathlib.Path(tansu).exists() or missing:
        say("per-service memory not measured: needs tansu and the release service binaries (loadtest/run builds them)")
        return {}, {}
    say("the four services as separate processes: memory idle and under product-by-id")
    broker_port = free_port()
    broker_url = f"tcp://127.0.0.1:{broker_port}"
    broker = subprocess.Popen(
        [tansu, "broker", "--listener-url", broker_url, "--advertised-listener-url", broker_url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ports = {name: free_port() for name in SERVICES}
    env = {
        "DATABASE_URL": f"{LOCAL_SERVER}/shop_loadtest",
        "REDIS_URL": "redis://127.0.0.1:6379",
        "REDIS_PREFIX": f"loadtest-services-{int(time.time())}",
        "KAFKA_BROKERS": f"127.0.0.1:{broker_port}",
        "PRODUCT_SERVICE_URL": f"http://127.0.0.1:{ports['product']}",
        "ORDER_SERVICE_URL": f"http://127.0.0.1:{ports['order']}",
        "USER_SERVICE_URL": f"http://127.0.0.1:{ports['user']}",
        "RUST_LOG": "warn",
        "DB_MAX_CONNECTIONS": "16",
        # Behind the gateway, as deployed; and the load settings shop runs with.
        "TRUST_FORWARDED_FOR": "true",
        "BCRYPT_COST": "4",
        **RAISED_LIMITS,
    }
    services: dict[str, Process] = {}
    gateway = None
    try:
        for name in SERVICES:
            service = Process(f"{name}-service", str(bin_dir / f"{name}-service"), [],
                              {**env, "PORT": str(ports[name])}, out / f"{name}-service.log")
            service.wait_ready(f"http://127.0.0.1:{ports[name]}/ready")
            services[f"{name}-service"] = service
        time.sleep(2)
        memory = {name: {"idle_mib": service.rss_mib()} for name, service in services.items()}
        base = f"http://127.0.0.1:{ports['product']}"

        def product_by_id(label: str) -> dict:
            if args.warmup:
                wrk(f"{label} (warm-up)", "product-by-id.lua", base, args, {}, args.warmup, "[+]")
            pid = services["product-service"].process.pid
            return wrk(label, "product-by-id.lua", base, args, {}, args.duration, "[+]", pid)

        measured = {}
        if "product-by-id" in runs:
            measured[ALONE] = product_by_id(ALONE)
        for name, service in services.items():
            memory[name]["after_mib"] = service.rss_mib()
            memory[name]["loaded"] = name == "product-service" and ALONE in measured
        envoy = os.environ.get("ENVOY") or shutil.which("envoy")
        if "checkout" in runs and not envoy:
            say("checkout through the gateway not measured: needs envoy (loadtest/run installs it)")
        elif "checkout" in runs:
            listen, admin = free_port(), free_port()
            config = out / "envoy.yaml"
            config.write_text(gateway_config(ports, listen, admin))
            gateway = Process("envoy", envoy, ["-c", str(config), "--log-level", "warn"], {}, out / "envoy.log")
            gateway.wait_ready(f"http://127.0.0.1:{admin}/ready")
            base = f"http://127.0.0.1:{listen}"
            # Its health checks must have found every service up before routing to it.
            Process.wait_ready(gateway, f"{base}/api/products?limit=1")
            gateway_rate_limit(f"http://127.0.0.1:{admin}", enforced=False)
            if args.warmup:
                wrk(f"{DEPLOYED} (warm-up)", "checkout.lua", base, args, {}, args.warmup, "[+]")
            counting = database and statements_counted(database)
            checkpoint(database)
            if counting:
                idle, idle_end = idle_database_work(database)
            pids = [service.process.pid for service in services.values()] + [gateway.process.pid]
            measured[DEPLOYED] = wrk(DEPLOYED, "checkout.lua", base, args, {}, args.duration, "[+]", pids)
            if counting:
                measured[DEPLOYED]["database_work"] = database_work_per_order(database, idle, idle_end, measured[DEPLOYED])
            measured[DEPLOYED]["connections"] = args.connections
        return memory, measured
    finally:
        if gateway:
            gateway.stop()
        for service in services.values():
            service.stop()
        broker.kill()


def binaries() -> pathlib.Path:
    bin_dir = pathlib.Path(os.environ.get("SHOP_BIN_DIR", ROOT / "target" / "release"))
    return bin_dir if bin_dir.is_absolute() else ROOT / bin_dir


def start_locally(args, out: pathlib.Path, processes: dict) -> tuple[str, str, str]:
    """A fresh database with the seeded catalogue, `shop` and the ceiling on free ports."""
    bin_dir = binaries()
    name = "shop_loadtest"
    database = f"{LOCAL_SERVER}/{name}"
    port, ceiling_port = free_port(), free_port()
    say(f"fresh database {name}, seeding {args.products} products")
    psql(f"{LOCAL_SERVER}/postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": "redis://127.0.0.1:6379",
        "REDIS_PREFIX": f"loadtest-{int(time.time())}",
        "PORT": str(port),
        "RUST_LOG": "warn",
        # Load-test settings, by configuration: cheap password hashing (logins are not
        # what is measured), and rate limits that the load's customers, all from one
        # address and each checking out far more often than a person would, fit in (the
        # report says so).
        "BCRYPT_COST": "4",
        **RAISED_LIMITS,
        "DB_MAX_CONNECTIONS": "16",
    }
    seeded = subprocess.run(
        [str(bin_dir / "shop"), "seed", "--products", str(args.products)],
        env={**os.environ, **env}, capture_output=True, text=True,
    )
    if seeded.returncode != 0:
        sys.exit(f"seeding failed:\n{seeded.stderr}")
    say("starting shop and the ceiling")
    base, ceiling_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ceiling_port}"
    processes["shop"] = Process("shop", str(bin_dir / "shop"), [], env, out / "shop.log")
    processes["shop"].wait_ready(f"{base}/ready")
    ceiling_env = {"DATABASE_URL": database, "PORT": str(ceiling_port), "DB_MAX_CONNECTIONS": env["DB_MAX_CONNECTIONS"]}
    processes["ceiling"] = Process("ceiling", str(bin_dir / "ceiling"), [], ceiling_env, out / "ceiling.log")
    processes["ceiling"].wait_ready(f"{ceiling_base}/json")
    time.sleep(1)
    return base, ceiling_base, database


def build_report(args, scenarios, results, memory, audit_result, today) -> dict:
    def summary(result: dict) -> dict:
        keep = ("requests", "seconds", "rps", "p50_us", "p90_us", "p99_us", "max_us", "mean_us", "non_2xx",
                "connect_errors", "read_errors", "write_errors", "timeouts", "orders", "payments", "non_2xx_by_status")
        return {key: result[key] for key in keep} | {
            key: result[key] for key in ("cpu_us_per_request", "cache", "database_work", "shop_rss_mib") if key in result
        }

    ceilings = {name.removeprefix("ceiling-"): summary(r) for name, r in results.items() if name.startswith("ceiling-")}
    rows = {}
    # The product pages again, from the product service as deployed, with tracing and
    # without (no targets of their own).
    extra = [name for name in (ALONE, DEPLOYED) if name in results]
    specs = {
        **SCENARIOS,
        ALONE: {"ceiling": "json", "target": None},
        DEPLOYED: {"ceiling": "tx", "target": None},
    }
    for name in [*scenarios, *extra]:
        row = summary(results[name])
        spec = specs[name]
        ceiling = ceilings.get(spec["ceiling"])
        if name.startswith("checkout"):
            row["orders_per_s"] = round(row["orders"] / row["seconds"], 1)
        row["connections"] = results[name].get("connections", args.connections)
        ours = row.get("orders_per_s", row["rps"])
        row["ratio"] = round(ours / ceiling["rps"], 3) if ceiling else None
        row["compared_with"] = f"ceiling-{spec['ceiling']}" if ceiling else None
        row["target_ratio"] = spec["target"]
        row["wrk_output"] = results[name]["wrk_output"]
        rows[name] = row
    return {
        "date": today,
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "target": args.target,
        "settings": {
            "products": args.products, "duration_s": args.duration, "warmup_s": args.warmup,
            "connections": args.connections, "threads": args.threads, "customers": args.customers,
            "raised_limits": sorted(RAISED_LIMITS) if args.target == "shop" else [],
            "autovacuum_turned_on": getattr(args, "autovacuum_turned_on", False),
        },
        "ceilings": ceilings,
        "scenarios": rows,
        "memory_mib": memory,
        "staleness": results.get("staleness"),
        "audit": audit_result,
    }


if __name__ == "__main__":
    sys.path.insert(0, str(LOADTEST))
    main()
