"""Two versions of the rule engine timed against each other on this machine, in turns.

On this shared machine the engine's throughput moves by 10 to 30 % within an hour, so two
runs of bench_engine.py made apart cannot show a 10 % change. This times version A, then B,
then A again..., each in a fresh process on the same core with bench_engine.py's workload,
and reports B's time over A's for each pair: a drift of the machine moves both sides of a
pair alike. A turn's time is its fastest pass (other work on the machine only ever adds time,
and it comes in bursts that can slow a whole turn); the result is the median over the pairs.
Run it with the same version on both sides (HEAD HEAD) to see how far pairs scatter by noise
alone.

A version is a git revision (checked out in a scratch worktree) or ``.``, the working tree
as it is. Each gets its kernels built ahead of time, for this CPU, into a scratch directory
(about a minute each): the figures are for the kernels the gateway would run.

``--rules`` sets the rules beside the shipped ones: ``bench`` (bench_engine.py's six extra
rules, the default), ``shipped`` (none), or a rule file; ``--rules-b`` sets them for B alone.
So ``HEAD HEAD --rules shipped --rules-b bench`` shows what the six extra rules cost, and
``--rules-b FILE`` with one rule in FILE what that rule costs.

    .venv/bin/python bench/bench_engine_ab.py HEAD~1 .          # the last commit against the working tree
    .venv/bin/python bench/bench_engine_ab.py HEAD . --devices 100 --pairs 6
    .venv/bin/python bench/bench_engine_ab.py HEAD HEAD --rules shipped --rules-b bench

Prints each side's throughput and the ratios, and writes them to bench/results/engine_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def child(tree: Path, devices: int, messages: int, rounds: int, extra: str) -> None:
    """In a fresh process, with ``tree``'s sources first on sys.path: time its engine, print JSON."""
    sys.path.insert(0, str(tree))
    sys.path.insert(0, str(tree / "bench"))
    import bench_engine

    from edge.engine import Engine, load_rules

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core, the same for every turn
    bench_engine.DEVICES = devices
    if extra == "bench":
        rules = bench_engine.bench_rules()
    elif extra == "shipped":
        rules = load_rules([tree / "rules"])
    else:
        rules = load_rules([tree / "rules", Path(extra)])
    registry = bench_engine.make_registry()
    probe = Engine(rules, registry)
    if probe.kernels.kind != "ahead-of-time":
        sys.exit(f"the kernels of {tree} are not built ahead of time in EDGE_KERNELS_DIR")
    _, batch, real = bench_engine.make_messages(registry, probe, messages)
    times = [bench_engine.time_engine(rules, registry, batch) for _ in range(rounds)]
    print(json.dumps({"readings": real, "rules": len(rules), "state_bytes": probe.state_bytes(), "seconds": times}))


def checkout(revision: str, scratch: Path) -> Path:
    """The source tree of ``revision``: the working tree for ".", else a scratch worktree."""
    if revision == ".":
        return ROOT
    tree = scratch / f"tree-{len(list(scratch.iterdir()))}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
                   check=True, capture_output=True)
    return tree


def build(tree: Path, kernels: Path) -> None:
    print(f"{tree}: ", end="", flush=True)
    env = dict(os.environ, PYTHONPATH=str(tree))  # the tree's own `edge engine build`
    subprocess.run([sys.executable, "-m", "edge", "engine", "build", "--dir", str(kernels)], check=True, env=env,
                   cwd=tree)


def turn(tree: Path, kernels: Path, rules: str, args) -> dict:
    env = dict(os.environ, EDGE_KERNELS_DIR=str(kernels))
    env.pop("EDGE_KERNELS", None)
    command = [sys.executable, __file__, "--child", str(tree),
               "--devices", str(args.devices), "--messages", str(args.messages), "--rounds", str(args.rounds)]
    command += ["--rules", rules if rules in ("bench", "shipped") else str(Path(rules).resolve())]
    done = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"timing {tree} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="A revision must have bench_engine.bench_rules (41a0826 and later).")
    parser.add_argument("a", nargs="?", help="version A: a git revision, or . for the working tree")
    parser.add_argument("b", nargs="?", default=".", help="version B (default: the working tree)")
    parser.add_argument("--devices", type=int, default=10_000, help="default 10,000, as bench_engine.py")
    parser.add_argument("--messages", type=int, default=1_000_000, help="per turn; default 1,000,000")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes over the messages per turn; default 5")
    parser.add_argument("--pairs", type=int, default=4, help="turns of A then B; default 4")
    parser.add_argument("--rules", default="bench", help="the rules beside the shipped ones: bench (bench_engine.py's "
                        "six extra rules; the default), shipped (none) or a rule file")
    parser.add_argument("--rules-b", help="the same, for B alone (default: as --rules)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.devices, args.messages, args.rounds, args.rules)
        return
    if args.a is None:
        parser.error("give version A")
    for rules in (args.rules, args.rules_b):
        if rules is not None and rules not in ("bench", "shipped") and not Path(rules).is_file():
            parser.error(f"no rule file {rules}")

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        trees = {}
        try:
            for side, revision in (("A", args.a), ("B", args.b)):
                if side == "B" and revision == args.a:  # the same version: its tree and kernels once
                    tree, kernels, _ = trees["A"]
                else:
                    tree = checkout(revision, scratch)
                    kernels = scratch / f"kernels-{side}"
                    build(tree, kernels)
                rules = args.rules_b if side == "B" and args.rules_b is not None else args.rules
                trees[side] = (tree, kernels, rules)
            runs = {"A": [], "B": []}
            for pair in range(args.pairs):
                for side in ("A", "B"):
                    runs[side].append(turn(*trees[side], args))
                a, b = (min(runs[side][-1]["seconds"]) for side in ("A", "B"))
                print(f"pair {pair + 1}: A {a * 1e3:7.1f} ms, B {b * 1e3:7.1f} ms, B/A {b / a:.3f}", flush=True)
        finally:
            for tree in {tree for tree, _, _ in trees.values()}:
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                                   capture_output=True)

    fastest = [(min(a["seconds"]), min(b["seconds"])) for a, b in zip(runs["A"], runs["B"])]
    ratios = [b / a for a, b in fastest]
    results = {"a": args.a, "b": args.b, "devices": args.devices, "messages": args.messages, "rounds": args.rounds,
               "rules_a": args.rules, "rules_b": args.rules_b or args.rules,
               "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "b_over_a_by_pair": [round(r, 3) for r in ratios], "b_over_a_median": round(statistics.median(ratios), 3),
               "b_minus_a_ns_per_message_median": round(statistics.median(
                   (b - a) / args.messages * 1e9 for a, b in fastest), 1)}
    for side in ("A", "B"):
        first = runs[side][0]
        seconds = [s for run in runs[side] for s in run["seconds"]]
        rate = first["readings"] / min(seconds)
        results[side] = {"rules": first["rules"], "readings": first["readings"], "state_bytes": first["state_bytes"],
                         "readings_per_s_fastest": round(rate)}
        print(f"{side} ({getattr(args, side.lower())}): {rate / 1e6:6.1f} M readings/s (fastest of {len(seconds)} "
              f"passes), {first['rules']} rules, state {first['state_bytes'] / 1e6:.1f} MB")
    print(f"B/A time  {results['b_over_a_median']:.3f} (median of {args.pairs} pairs; below 1: B is faster); "
          f"B - A {results['b_minus_a_ns_per_message_median']:+.1f} ns per message")
    out = ROOT / "bench" / "results" / "engine_ab.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
