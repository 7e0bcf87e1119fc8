"""The rule engine's work per message, counted by valgrind: a figure the machine's noise cannot move.

bench_engine.py times the engine, and on this shared machine the same code varies by 10 to
30 % within a session and by 2x between sessions. This counts instead, with valgrind's
callgrind, the instructions the kernels execute per message, and from its branch simulation
the conditional branches and indirect jumps and how many of them its simple predictor
mispredicts. The counts repeat exactly for the same kernels and workload, so two versions of
the kernels can be compared from one run each, on any day.

Workload: bench_engine.py's 21 rules and messages, over 100 devices (the state in cache:
this counts compute, not memory). The kernels are built for an AVX2 CPU ("haswell") in a
scratch directory: valgrind 3.19 stops at AVX-512 instructions, which the gateway's own
build uses on this machine. The counts include the warm-up call on an empty batch (a few
hundred instructions in all).

    .venv/bin/python bench/bench_engine_instructions.py   # about 3 minutes; prints, and writes
                                                          # bench/results/engine_instructions.json

Needs valgrind (Debian package ``valgrind``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DEVICES = 100
MESSAGES = 40_000
CPU = "haswell"
EVENTS = ("Ir", "Bc", "Bcm", "Bi", "Bim")


def workload(devices: int, messages: int, kernels):
    """bench_engine.py's rules, registry and messages over ``devices`` devices."""
    import bench_engine

    from edge.engine import Engine

    rules = bench_engine.bench_rules()
    bench_engine.DEVICES = devices
    registry = bench_engine.make_registry()
    _, batch, _ = bench_engine.make_messages(registry, Engine(rules, registry, kernels=kernels), messages)
    return rules, registry, batch


def child(kernels_dir: Path, devices: int, messages: int) -> None:
    """Run under valgrind: the engine with the kernels in ``kernels_dir``, over the workload once."""
    from edge.engine import Engine, aot

    # any built module, not only one of the current sources: an older commit's can be counted
    built = sorted(kernels_dir.glob("edge_kernels_*.so"))
    if len(built) != 1:
        sys.exit(f"want one edge_kernels_*.so in {kernels_dir}, found {len(built)}")
    kernels = aot.kernels_of(aot.load_file(built[0]))
    rules, registry, batch = workload(devices, messages, kernels)
    engine = Engine(rules, registry, origin=1_763_000_000.0, kernels=kernels)
    engine.warm_up()
    engine.process(batch)


def totals(callgrind_out: Path) -> dict[str, int]:
    """The program totals of a callgrind output file, by event."""
    text = subprocess.run(["callgrind_annotate", str(callgrind_out)], check=True, capture_output=True,
                          text=True).stdout
    header = next(line for line in text.splitlines() if line.startswith("Events shown:"))
    names = header.split(":", 1)[1].split()
    line = next(line for line in text.splitlines() if "PROGRAM TOTALS" in line)
    counts = [int(n.replace(",", "")) for n in re.findall(r"([\d,]+) \(", line)]
    return dict(zip(names, counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=DEVICES, help=f"default {DEVICES}")
    parser.add_argument("--messages", type=int, default=MESSAGES, help=f"default {MESSAGES:,}")
    parser.add_argument("--kernels", type=Path, help="count the kernels built in this directory (one edge_kernels_*.so, of any commit "
                        "whose kernels take the same arguments; built for a CPU valgrind can run) "
                        "instead of building them")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.devices, args.messages)
        return
    for tool in ("valgrind", "callgrind_annotate"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: install Debian's valgrind package")

    from edge.engine import aot

    with tempfile.TemporaryDirectory() as tmp:
        kernels_dir = args.kernels
        if kernels_dir is None:
            kernels_dir = Path(tmp) / "kernels"
            print(f"building the kernels for {CPU} (about a minute) ...", flush=True)
            aot.build(kernels_dir, cpu=CPU)
        out = Path(tmp) / "callgrind.out"
        print(f"counting under valgrind: {args.messages:,} messages over {args.devices} devices ...", flush=True)
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--branch-sim=yes", f"--callgrind-out-file={out}",
             "--toggle-collect=*pycc_method_run_batch*",
             sys.executable, __file__, "--child", str(kernels_dir),
             "--devices", str(args.devices), "--messages", str(args.messages)],
            check=True, capture_output=True,
        )
        counts = totals(out)
    per = {name: counts[name] / args.messages for name in EVENTS}
    results = {
        "devices": args.devices,
        "messages": args.messages,
        "kernels_cpu": CPU if args.kernels is None else str(args.kernels),
        "instructions_per_message": round(per["Ir"], 1),
        "conditional_branches_per_message": round(per["Bc"], 1),
        "conditional_mispredicted_per_message": round(per["Bcm"], 2),
        "indirect_jumps_per_message": round(per["Bi"], 2),
        "indirect_mispredicted_per_message": round(per["Bim"], 2),
    }
    print(f"instructions   {per['Ir']:8.0f} per message (21 rules, {args.devices} devices, {args.messages:,} messages)")
    print(f"branches       {per['Bc']:8.1f} conditional, {per['Bcm']:.2f} mispredicted by callgrind's predictor")
    print(f"indirect jumps {per['Bi']:8.2f}, {per['Bim']:.2f} mispredicted")
    if args.kernels is None:
        path = ROOT / "bench" / "results" / "engine_instructions.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
