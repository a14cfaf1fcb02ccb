"""What bench_e2e prints: progress while it runs, then every figure with its baseline."""

from __future__ import annotations

import argparse
import datetime
import os
import statistics

from bench.e2e_baselines import ComponentRates
from bench.e2e_chat import Lines, percentile
from bench.e2e_http import Load
from bench.e2e_procs import BENCH, WRK, Phase, table


def _ratio(ours: float, baseline: float) -> str:
    return f"{ours / baseline:.2f}x" if baseline else "-"


def _latency(values: list[float]) -> str:
    return f"p50 {statistics.median(values or [0.0]):6.1f} ms  p99 {percentile(values, 0.99):6.1f} ms"


def _latency_vs(ours: list[float], bare: list[float]) -> str:
    """Latency, the bare component's at the same rate, and ours over it (p50 and p99)."""
    p50, p99 = statistics.median(ours or [0.0]), percentile(ours, 0.99)
    b50, b99 = statistics.median(bare or [0.0]), percentile(bare, 0.99)
    return f"{_latency(ours)}   bare component {_latency(bare)}   {_ratio(p50, b50)} / {_ratio(p99, b99)}"


def _slowest(lines: Lines) -> str:
    """The slowest 1% of lines: their latencies and when in the phase they were sent."""
    worst = sorted(zip(lines.latencies_ms, lines.sent_offsets_s, strict=True), reverse=True)
    worst = worst[: max(1, len(worst) // 100)]
    return "[" + " ".join(f"{ms:.0f}ms@{at:.1f}s" for ms, at in worst) + "]"


def _lag(lines: Lines) -> str:
    lags = lines.client_lag_ms
    return f"p99 {percentile(lags, 0.99):.1f} ms, max {max(lags or [0.0]):.1f} ms"


class Report:
    def __init__(self, args: argparse.Namespace, at: datetime.datetime) -> None:
        self.args, self.at = args, at
        self.phases: list[Phase] = []
        self.lines: tuple[Lines, Lines] | None = None
        self.paced_rows: list[tuple[float, list[Lines]]] = []
        self.http: tuple[Load, Load] | None = None
        self.tool = ""
        self.publish_rate = 0.0
        self.component_rates = ComponentRates(0.0, 0.0)
        self.bare_http: tuple[Load, Load | None] | None = None
        self.answer_bytes = 0
        self.profile_lines: list[str] = []
        self.redis: dict[str, str] = {}
        self.idle_rates: dict[str, float] = {}

    @staticmethod
    def say(line: str) -> None:
        print(line, flush=True)

    def header(self) -> None:
        load = os.getloadavg()
        a = self.args
        self.say(
            f"Habla end to end, {self.at:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load average "
            f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start (figures from a noisy, shared machine)\n"
            f"  {a.visitors} visitors on WebSockets, {a.operators} operators on XMPP (strict clients), "
            f"{a.lines} lines per visitor saturated, paced {', '.join(f'{r:g}' for r in a.rates)} lines/s "
            f"for {a.paced_seconds:g} s, page views {a.connections} at once for {a.http_seconds:g} s"
        )

    def started(self, seconds: float) -> None:
        self.say(f"  stack started in {seconds:.1f} s")

    def processes(self, names: list[str]) -> None:
        self.say(f"  processes measured: {', '.join(names)}")

    def phase(self, name: str, unit: str, count: int, cpu: dict[str, float]) -> None:
        self.phases.append(Phase(name, unit, count, cpu))
        self.say(f"  .. {name}: {count} {unit}")

    def saturated(self, to_operator: Lines, to_visitor: Lines) -> None:
        self.lines = (to_operator, to_visitor)

    def paced(self, rate: float, rows: list[Lines]) -> None:
        self.paced_rows.append((rate, rows))
        self.say(f"  .. paced {rate:g} lines/s each way")

    def page_views(self, boots: Load, views: Load, connections: int, tool: str) -> None:
        self.http, self.tool = (boots, views), tool

    def publishes(self, rate: float, tasks: int) -> None:
        self.publish_rate = rate
        self.say(f"  .. bare confirmed publishes ({tasks} tasks)")

    def component(self, rates: ComponentRates) -> None:
        self.component_rates = rates
        self.say("  .. bare slixmpp component")

    def http_baselines(self, tornado_load: Load, nginx_load: Load | None, answer_bytes: int) -> None:
        self.bare_http, self.answer_bytes = (tornado_load, nginx_load), answer_bytes

    def idle(self, rates: dict[str, float]) -> None:
        self.idle_rates = rates
        busy = ", ".join(f"{name} {rate * 100:.0f}%" for name, rate in sorted(rates.items(), key=lambda kv: -kv[1])[:4])
        self.say(f"  .. idle CPU before the phases (others' runs, heartbeats), subtracted from each phase: {busy}")

    def redis_commands(self, found: dict[str, str]) -> None:
        self.redis = found

    def profile(self, lines: list[str]) -> None:
        self.profile_lines += ["", *lines]

    def summary(self) -> None:
        comp = self.component_rates
        out = ["", "figure                                         ours   baseline (same run)                 ratio"]
        if self.lines is not None:
            to_op, to_v = self.lines
            out.append(
                f"lines/s visitor -> operator, saturated   {to_op.rate:9.0f}   bare component -> client "
                f"{comp.component_to_client:8.0f}/s   {_ratio(to_op.rate, comp.component_to_client)}"
            )
            out.append(
                f"lines/s operator -> visitor, saturated   {to_v.rate:9.0f}   bare client -> component "
                f"{comp.client_to_component:8.0f}/s   {_ratio(to_v.rate, comp.client_to_component)}"
            )
            accepted = to_op.count / to_op.accepted_s if to_op.accepted_s else 0.0
            out.append(
                f"frontend accepted lines/s ('sent')       {accepted:9.0f}   bare confirmed publishes "
                f"{self.publish_rate:8.0f}/s   {_ratio(accepted, self.publish_rate)}"
            )
        for rate, (v_to_o, o_to_v) in self.paced_rows:
            client_to_component, component_to_client = comp.paced.get(rate, ([], []))
            out.append(f"latency paced at {rate:g} lines/s each way (baseline: the same direction's bare component):")
            out.append(f"  visitor -> operator {_latency_vs(v_to_o.latencies_ms, component_to_client)}")
            out.append(f"  operator -> visitor {_latency_vs(o_to_v.latencies_ms, client_to_component)}")
            out.append(
                f"    (visitor -> frontend's 'sent' {_latency(v_to_o.sent_ms)}; slowest 1% each way: "
                f"{_slowest(v_to_o)}, {_slowest(o_to_v)}; bench client's event-loop lag {_lag(v_to_o)})"
            )
        if self.http is not None and self.bare_http is not None:
            boots, views = self.http
            tornado_load, nginx_load = self.bare_http
            for name, ours in (("widget boots/s", boots), ("returning page views/s", views)):
                line = (
                    f"{name:<28} {ours.rate:8.0f}/s  p50 {ours.p50_ms:6.1f} ms  p99 {ours.p99_ms:6.1f} ms   "
                    f"bare Tornado {tornado_load.rate:7.0f}/s {_ratio(ours.rate, tornado_load.rate)}"
                )
                if nginx_load is not None:
                    line += f"; nginx {nginx_load.rate:7.0f}/s {_ratio(ours.rate, nginx_load.rate)}"
                out.append(line + (f"  [{ours.errors}]" if ours.errors else ""))
            if nginx_load is None:
                out.append("nginx baseline skipped: nginx is not installed (apt-get install nginx-light)")
            out.append(
                f"  (page views: {self.tool}, {self.args.connections} connections, one request in flight each; "
                f"baselines answer the same POST with the same {self.answer_bytes} bytes: bare Tornado p50 "
                f"{tornado_load.p50_ms:.1f} ms" + (f", nginx p50 {nginx_load.p50_ms:.2f} ms)" if nginx_load else ")")
            )
            boots_cpu = next((p for p in self.phases if p.name == "widget boots"), None)
            if boots_cpu is not None:
                suite_us = sum(boots_cpu.per_million(n) for n in boots_cpu.cpu if n not in (BENCH, WRK))
                line = (
                    f"CPU per widget boot: rpc_frontend {boots_cpu.per_million('rpc_frontend'):.0f} us, whole suite "
                    f"{suite_us:.0f} us; same request: bare Tornado {tornado_load.cpu_us:.0f} us"
                )
                if nginx_load is not None:
                    line += f", nginx {nginx_load.cpu_us:.0f} us"
                out.append(line)
        if self.phases:
            out.append("")
            out.append("CPU seconds per 1 M units, per process (/proc/<pid>/stat before and after each phase, less the")
            out.append(
                "process's idle rate measured just before; shared servers also served other runs, so their figures"
            )
            out.append("are the noisiest; bench client and wrk are the load, not the suite)")
            out += table(self.phases)
        boots_phase = next((p for p in self.phases if p.name == "widget boots"), None)
        if boots_phase is not None:
            per_thousand = boots_phase.per_million("rpc_frontend") / 1000
            out.append(f"  rpc_frontend alone: {per_thousand:.2f} CPU s per 1,000 widget boots")
        if self.redis:
            out += [
                "",
                "Redis commands per unit of work, whole suite (MONITOR, this run's prefix only;",
                "mean of 20, less the suite's own background commands (their rate over 6 s or more)), then",
                "round trips (what clients sent and waited for: a script or a MULTI…EXEC is one),",
                "all processes' and the frontend's own",
            ]
            out += [f"  {name:<26} {counts}" for name, counts in self.redis.items()]
        out += self.profile_lines
        self.say("\n".join(out))
