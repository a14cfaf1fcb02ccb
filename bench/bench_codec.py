"""codec.decode / codec.encode per struct type, Apache Thrift's C reader against the
bounded thriftpy2 reader, alternately in the same run (no servers).

    .venv/bin/python bench/bench_codec.py [--lines 50] [--rounds 5]

Prints us per call for each path (best of --rounds, each round timing both paths back
to back), the body size, and the load average. "dec tp2" is plain thriftpy2 (codec
before the C reader, without the reference's bounds), for comparison. Every struct has all its fields set;
a Transcript has --lines ChatMessages (and 5 pages).
"""

from __future__ import annotations

import argparse
import os
import timeit
from typing import Any

from thriftpy2.utils import deserialize

from libs.common import codec


def _value(ttype: int, arg: Any, lines: int) -> Any:
    if ttype == 11:
        return "Hello, is the blue one in stock in size 42?"
    if ttype == 2:
        return True
    if ttype == 8:
        return 1
    if ttype == 10:
        return 1_764_856_800_000
    if ttype == 12:
        return _struct(arg, lines)
    if ttype == 15:
        elem, elem_arg = arg if isinstance(arg, tuple) else (arg, None)
        count = lines if elem_arg is codec.ChatMessage else 5
        return [_value(elem, elem_arg, lines) for _ in range(count)]
    raise NotImplementedError(ttype)


def _struct(cls: Any, lines: int) -> Any:
    return cls(**{s[1]: _value(s[0], s[2] if len(s) > 3 else None, lines) for s in cls.thrift_spec.values()})


def _best_us(func: Any, seconds: float = 0.1) -> float:
    number = max(1, int(seconds / max(timeit.timeit(func, number=1), 1e-7)))
    return timeit.timeit(func, number=number) / number * 1e6


def _measure(name: str, cls: Any, struct: Any, body: bytes, rounds: int) -> dict[str, float]:
    best: dict[str, float] = {}
    for _ in range(rounds):
        for path in ("C", "py"):
            codec.FAST = path == "C"
            for op, func in (("dec", lambda: codec.decode(name, body)), ("enc", lambda: codec.encode(struct))):
                key = f"{op} {path}"
                best[key] = min(best.get(key, float("inf")), _best_us(func))
        codec.FAST = True
        plain = _best_us(lambda: deserialize(cls(), body, codec._PROTOCOL))
        best["dec tp2"] = min(best.get("dec tp2", float("inf")), plain)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=50, help="ChatMessages in the Transcript")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not codec.HAVE_C:
        raise SystemExit("thrift's C extension does not import: nothing to compare")
    print(f"load average {os.getloadavg()[0]:.1f}; us per call, best of {args.rounds} alternating rounds")
    print(
        f"{'struct':<20} {'bytes':>6} {'dec C':>8} {'dec py':>8} {'x':>5} {'dec tp2':>8} "
        f"{'enc C':>8} {'enc py':>8} {'x':>5}"
    )
    for name, cls in sorted(codec.REGISTRY.items()):
        struct = _struct(cls, args.lines)
        body = codec.encode(struct)
        best = _measure(name, cls, struct, body, args.rounds)
        print(
            f"{name:<20} {len(body):>6} {best['dec C']:>8.1f} {best['dec py']:>8.1f} "
            f"{best['dec py'] / best['dec C']:>5.1f} {best['dec tp2']:>8.1f} "
            f"{best['enc C']:>8.1f} {best['enc py']:>8.1f} "
            f"{best['enc py'] / best['enc C']:>5.1f}"
        )
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
