#!/usr/bin/env python3
"""Turn the cell results of bench/pgbench.sh into a Markdown table and a JSON document.

    report.py --cells cells.tsv --meta meta.tsv [--idle idle.json] --json OUT.json [--md OUT.md]

cells.tsv: one line per cell, tab-separated, columns as in CELL_FIELDS (written by pgbench.sh).
meta.tsv:  key<TAB>value lines (machine info and parameters).
The Markdown table goes to stdout (and to --md).
"""

import argparse
import json
import sys

CELL_FIELDS = ["target", "mode", "clients", "status", "tps", "latency_ms", "failed_transactions",
               "aborted_clients", "transactions", "exit_code", "elapsed_s", "error", "note",
               "connection_ms", "pgbench_T_s", "pooler_cpu_user_us_per_txn",
               "pooler_cpu_sys_us_per_txn"]
TARGET_ORDER = {"direct": 0, "relay": 1, "pgbouncer": 2, "tenantgate": 3}
MODE_ORDER = {"simple": 0, "extended": 1, "prepared": 2}
INT_FIELDS = ("clients", "failed_transactions", "aborted_clients", "transactions", "exit_code",
              "pgbench_T_s")
FLOAT_FIELDS = ("tps", "latency_ms", "elapsed_s", "connection_ms", "pooler_cpu_user_us_per_txn",
                "pooler_cpu_sys_us_per_txn")


def parse_cells(path):
    cells = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            parts += [""] * (len(CELL_FIELDS) - len(parts))
            cell = dict(zip(CELL_FIELDS, parts))
            for k in INT_FIELDS:
                cell[k] = int(cell[k]) if cell[k] not in ("", None) else None
            for k in FLOAT_FIELDS:
                cell[k] = float(cell[k]) if cell[k] not in ("", None) else None
            for k in ("error", "note"):
                cell[k] = cell[k] or None
            cells.append(cell)
    return cells


def ratio(cell, base):
    if not base or cell is base:
        return None
    if cell["status"] != "ok" or base["status"] != "ok" or not cell["tps"] or not base["tps"]:
        return None
    return round(cell["tps"] / base["tps"], 3)


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def status_text(c):
    s = c["status"]
    if s == "ok":
        return "ok"
    detail = c["error"] or c["note"] or ""
    if s == "failed":
        bits = []
        if c["exit_code"] is not None:
            bits.append(f"exit {c['exit_code']}")
        if c["aborted_clients"]:
            bits.append(f"{c['aborted_clients']} clients aborted")
        head = "FAILED" + (f" ({', '.join(bits)})" if bits else "")
        return f"{head}: {detail}" if detail else head
    return f"{s}: {detail}" if detail else s


def md_escape(s):
    return s.replace("|", "\\|").replace("\n", " ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--idle")
    ap.add_argument("--json", action="append", default=[], help="write the JSON here (repeatable)")
    ap.add_argument("--md", action="append", default=[], help="write the Markdown here (repeatable)")
    args = ap.parse_args()

    meta = {}
    with open(args.meta) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            if k:
                meta[k] = v

    cells = parse_cells(args.cells)
    by_key = {(c["target"], c["mode"], c["clients"]): c for c in cells}
    for c in cells:
        c["ratio_vs_direct"] = ratio(c, by_key.get(("direct", c["mode"], c["clients"])))
        c["ratio_vs_pgbouncer"] = ratio(c, by_key.get(("pgbouncer", c["mode"], c["clients"])))
        # The relay floor (proxy/examples/relay_floor.rs): what relaying alone costs.
        c["ratio_vs_relay"] = ratio(c, by_key.get(("relay", c["mode"], c["clients"])))
    cells.sort(key=lambda c: (MODE_ORDER.get(c["mode"], 9), c["clients"] or 0,
                              TARGET_ORDER.get(c["target"], 9), c["target"]))

    idle = None
    if args.idle:
        try:
            with open(args.idle) as f:
                idle = json.load(f)
        except (OSError, ValueError) as e:
            idle = {"error": f"no idle-client result: {e}"}

    lines = []
    lines.append(f"pgbench -S, {meta.get('duration_s', '?')} s per cell (+{meta.get('connect_allowance_s_per_1000_clients', '?')} s per 1000 clients), scale {meta.get('scale', '?')}, "
                 f"-j {meta.get('jobs', '?')}, {meta.get('nproc', '?')} CPUs, pool size "
                 f"{meta.get('pool_size', '?')} (both poolers; clients over {meta.get('client_socket', 'tcp')}, poolers to Postgres over {meta.get('server_socket', 'tcp')}), commit {meta.get('git_commit', '?')}"
                 f" — {meta.get('timestamp', '')}")
    lines.append("")
    lines.append("| target | mode | clients | tps | latency ms | failed txns | vs direct | vs relay | vs pgbouncer | pooler CPU µs/txn (user + sys) | connect ms | status |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for c in cells:
        u, k = c.get("pooler_cpu_user_us_per_txn"), c.get("pooler_cpu_sys_us_per_txn")
        cpu = f"{u + k:.1f} ({u:.1f} + {k:.1f})" if u is not None and k is not None else "–"
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            c["target"], c["mode"], c["clients"],
            fmt(c["tps"], ".0f"), fmt(c["latency_ms"], ".3f"),
            fmt(c["failed_transactions"], "d"),
            fmt(c["ratio_vs_direct"], ".2f"), fmt(c["ratio_vs_relay"], ".2f"),
            fmt(c["ratio_vs_pgbouncer"], ".2f"),
            cpu, fmt(c["connection_ms"], ".0f"),
            md_escape(status_text(c))[:300]))
    if idle is not None:
        lines.append("")
        if "during" in idle and idle.get("during"):
            d, b = idle["during"], idle.get("before") or {}
            lines.append(
                "tenantgate with {ready}/{req} idle clients open: VmRSS {rss:.1f} MiB "
                "(fresh process before: {b:.1f} MiB; {per} bytes/connection; {thr} threads; "
                "{fds} fds){fail}".format(
                    ready=idle.get("ready"), req=idle.get("requested"),
                    rss=(d.get("rss_kb") or 0) / 1024, b=(b.get("rss_kb") or 0) / 1024,
                    per=idle.get("bytes_per_connection", "?"), thr=d.get("threads"),
                    fds=d.get("fds"),
                    fail=f"; {idle.get('failed')} failed: {idle.get('errors')}"
                    if idle.get("failed") else ""))
            if idle.get("probe"):
                lines.append(f"Server connections held by tenantgate meanwhile: {idle['probe']}"
                             f" (before opening them: {idle.get('probe_before', '?')})")
            if idle.get("after_close"):
                lines.append("After closing them: VmRSS {:.1f} MiB.".format(
                    (idle["after_close"].get("rss_kb") or 0) / 1024))
        else:
            lines.append(f"Idle-client RSS measurement failed: {idle.get('error') or idle}")
    if meta.get("note_instructions"):
        lines += ["", meta["note_instructions"] + "."]
    md = "\n".join(lines) + "\n"
    sys.stdout.write(md)
    for path in args.md:
        with open(path, "w") as f:
            f.write(md)

    machine_keys = ["hostname", "nproc", "cpu_model", "mem_total_kb", "kernel", "os",
                    "pgbench_version", "pgbouncer_version", "postgres_version",
                    "tenantgate_version", "git_commit", "git_dirty"]
    param_keys = ["duration_s", "scale", "jobs", "pool_size", "server_socket", "client_socket", "clients", "modes", "targets",
                  "direct_max_clients", "cell_timeout_s",
                  "connect_allowance_s_per_1000_clients", "warmup_s", "idle_clients",
                  "pgbouncer_prepared", "audit", "enforce", "pgbench_options"]
    doc = {
        "timestamp": meta.get("timestamp"),
        "machine": {k: meta.get(k) for k in machine_keys},
        "params": {k: meta.get(k) for k in param_keys},
        "cells": cells,
        "idle_clients": idle,
        # Hook: AUDIT=1 / ENFORCE=1 runs (policy enforcement on vs off) are recorded as
        # ordinary cells with their own target name (e.g. "tenantgate+enforce").
        "notes": [v for k, v in sorted(meta.items()) if k.startswith("note")],
    }
    for path in args.json:
        with open(path, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
