"""Benchmark of the domain core alone: circulations applied per second, in-process.

    make bench            # or: python -m benchmarks.core [--certificates 100 --hops 2000]

Two figures, each the best of ``--repeat`` runs on one core:
* ``core``: ``domain.handle`` on already-decoded Circulate commands;
* ``core+codec``: JSON bytes -> msgspec decode -> handle -> encode every event and
  settlement to JSON, as a service does around each message.

Every circulation acquires and replenishes (the heaviest common path). Results are
appended to docs/benchmarks.md with the machine's description.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import time
from pathlib import Path

import msgspec

from domain import Accepted, handle
from schemas import commands as c

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "benchmarks.md"
T0 = 1_700_000_000_000


def _cid(n: int) -> str:
    return f"seller~bench-{n}-00001"


def setup(certificates: int) -> dict:
    states = {}
    for n in range(certificates):
        cid = _cid(n)
        out = handle(None, c.IssueCertificate(
            command_id=f"i{n}", certificate_id=cid, at_ms=T0, account_id="seller",
            offer_id=cid[:-6], serial=1, copies=1, name="x", price_minor=10**9,
            currency="EUR", funder_id="funder"))
        state = out.state
        for cmd in (
            c.AttachPool(command_id=f"a{n}", certificate_id=cid, at_ms=T0, account_id="funder",
                         funding_ref="esc", budget_minor=10**12, attached_minor=1_000,
                         currency="EUR",
                         acquisition=c.AcquisitionPolicy(amount=c.FixedAmount(amount_minor=7)),
                         # every kind of threshold is evaluated, none is reached
                         thresholds=c.Thresholds(max_circulations=10**6,
                                                 max_cumulative_minor=10**11,
                                                 max_display_s=10**6)),
            c.ConfirmFunding(command_id=f"e{n}", certificate_id=cid, at_ms=T0,
                             funding_ref="esc", amount_minor=10**12, currency="EUR"),
            c.PostCertificate(command_id=f"p{n}", certificate_id=cid, at_ms=T0,
                              account_id="seller"),
        ):
            assert isinstance(handle(state, cmd), Accepted)
        states[cid] = state
    return states


def commands(certificates: int, hops: int) -> list[c.Circulate]:
    return [
        c.Circulate(command_id=f"s{h}-{n}", certificate_id=_cid(n), at_ms=T0 + h,
                    account_id=f"user-{h}", via=f"user-{h - 1}" if h else None)
        for h in range(hops) for n in range(certificates)
    ]


def run_core(certificates: int, cmds: list[c.Circulate]) -> float:
    states = setup(certificates)
    start = time.perf_counter()
    for cmd in cmds:
        out = handle(states[cmd.certificate_id], cmd)
    elapsed = time.perf_counter() - start
    assert isinstance(out, Accepted) and len(out.events) == 3
    return elapsed


def run_codec(certificates: int, cmds: list[c.Circulate]) -> float:
    states = setup(certificates)
    raw = [msgspec.json.encode(cmd) for cmd in cmds]
    decode = msgspec.json.Decoder(c.Command).decode
    encode = msgspec.json.Encoder().encode
    start = time.perf_counter()
    out_bytes = 0
    for body in raw:
        cmd = decode(body)
        out = handle(states[cmd.certificate_id], cmd)
        for event in out.events:
            out_bytes += len(encode(event))
    elapsed = time.perf_counter() - start
    assert out_bytes > 0
    return elapsed


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.core")
    parser.add_argument("--certificates", type=int, default=100)
    parser.add_argument("--hops", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    cmds = commands(args.certificates, args.hops)
    n = len(cmds)
    core = min(run_core(args.certificates, cmds) for _ in range(args.repeat))
    codec = min(run_codec(args.certificates, cmds) for _ in range(args.repeat))
    rows = [("core", n / core, core / n * 1e6), ("core+codec", n / codec, codec / n * 1e6)]
    print(f"{n} circulations over {args.certificates} certificates, best of {args.repeat}")
    for name, rate, us in rows:
        print(f"  {name:<11} {rate:>10,.0f} circulations/s  {us:6.2f} us each")
    if args.no_write:
        return
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = [
        f"\n### Domain core, {stamp}\n",
        f"Command: `python -m benchmarks.core --certificates {args.certificates} "
        f"--hops {args.hops} --repeat {args.repeat}`  ",
        f"Machine: {machine()}\n",
        "| path | circulations/s | us per circulation |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {rate:,.0f} | {us:.2f} |" for name, rate, us in rows],
        "",
    ]
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmarks\n\nFigures appended by `make bench`; newest last.\n")
    with RESULTS.open("a") as f:
        f.write("\n".join(block))


if __name__ == "__main__":
    main()
