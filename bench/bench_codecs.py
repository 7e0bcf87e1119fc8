"""Benchmark of vendor JavaScript codecs: decodes per second on one core, and memory per codec.

1. Engines. The same codec (a vendor-style ``decodeUplink`` returning values with units) in
   QuickJS (the ``quickjs`` package, what the gateway runs) and in V8 (``mini-racer``, when
   installed: ``pip install -e '.[bench]'``): calls per second, one input and one output
   crossing as JSON text each way, and resident memory per loaded codec (RSS growth over
   ``--codecs`` codecs loaded, each in its own context).
2. The gateway's path. ``VendorModels.from_bytes`` (edge/ingest/vendor_models.py) on the
   project's codec of each mapped model in config/models: the sandboxed call, its checks and
   the mapping's unit conversion, per second on one core; and ``chirpstack.decode`` of whole
   ChirpStack events for that model, against the built-in Python codec (MCL-300).

    .venv/bin/python bench/bench_codecs.py [--calls 20000] [--codecs 50]

prints the figures and writes them to bench/results/codecs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.ingest import chirpstack  # noqa: E402
from edge.ingest.jscodec import _CALL, JsCodec  # noqa: E402
from edge.ingest.vendor_models import load_models  # noqa: E402
from edge.paths import default_codecs, default_models  # noqa: E402

CODEC = """function decodeUplink(input) {
  var b = input.bytes;
  if (input.fPort !== 2) return {errors: ["unknown fPort " + input.fPort]};
  var temp = ((b[2] << 24 >> 16) | b[3]) / 10;
  return {data: {distance: ((b[0] << 8) | b[1]) + " mm", temperature: temp + " \\u2103", tilt: b[4] + " \\u00b0",
                 moved: (b[5] & 1) === 1, battery: b[6] / 10}, warnings: []};
}
"""
FRAME = bytes([6, 164, 0, 221, 3, 1, 36])
# V8 gets the same function the gateway's sandbox wraps a codec in (edge/ingest/jscodec.py).
CALL = _CALL


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def per_second(fn, calls: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return calls / (time.perf_counter() - start)


def quickjs_engine(calls: int, codecs: int, folder: Path) -> dict:
    import quickjs

    path = folder / "bench.js"
    path.write_text(CODEC)
    before = rss_mb()
    loaded = [JsCodec(path, name=f"bench-{n}.js") for n in range(codecs)]
    per_codec = (rss_mb() - before) / codecs
    codec = loaded[0]
    _, bare = codec._context()  # the loaded decodeUplink, called as V8's is below: JSON text in and out
    text = json.dumps({"bytes": list(FRAME), "fPort": 2})
    return {"engine": f"QuickJS (quickjs {getattr(quickjs, '__version__', '')})".replace(" )", ")"),
            "calls_per_s_bare": round(per_second(lambda: bare(text), calls)),
            "calls_per_s_sandboxed_jscodec": round(per_second(lambda: codec.decode(2, FRAME, "D-1"), calls)),
            "rss_mb_per_loaded_codec": round(per_codec, 3)}


def v8_engine(calls: int, codecs: int) -> dict | None:
    try:
        from py_mini_racer import MiniRacer
    except ImportError:
        return None
    before = rss_mb()
    loaded = []
    for _ in range(codecs):
        racer = MiniRacer()
        racer.eval(CODEC)
        racer.eval(f"var call = {CALL};")
        loaded.append(racer)
    per_codec = (rss_mb() - before) / codecs
    racer = loaded[0]
    text = json.dumps({"bytes": list(FRAME), "fPort": 2})
    return {"engine": "V8 (mini-racer)", "calls_per_s_bare": round(per_second(lambda: racer.call("call", text), calls // 10)),
            "rss_mb_per_loaded_codec": round(per_codec, 3)}


def gateway_path(calls: int) -> dict:
    from firmware_sim.protocols import lorawan

    vendor, problems = load_models(default_models(), default_codecs())
    if problems:
        raise SystemExit("\n".join(problems))
    out = {}
    now = time.time()
    for model in ["MCL-300", *sorted(m for m, v in vendor.models.items() if v.codec is not None)]:
        kind = "manhole_cover" if model in ("MCL-300",) or vendor.get(model).kind == "manhole_cover" else "bin"
        readings = ({"tilt_deg": 1.0, "open": 0, "water_cm": 150.0, "temp_c": 12.0, "battery_v": 3.6} if kind == "manhole_cover"
                    else {"distance_cm": 60.0, "temp_c": 21.0, "tilt_deg": 0.0, "battery_v": 3.6})
        frame, _ = lorawan.report("street", "D-0001", model, now, readings, False, 1, 1)
        model_of = {"D-0001": model}.get
        entry = {"chirpstack_events_per_s": round(per_second(
            lambda: chirpstack.decode(frame.topic, frame.payload, model_of, received_at=now, vendor=vendor), calls))}
        if model in vendor:
            fport = json.loads(frame.payload)["fPort"]
            import base64
            data = base64.b64decode(json.loads(frame.payload)["data"])
            entry["codec_and_mapping_per_s"] = round(per_second(lambda: vendor.from_bytes(model, fport, data, "D-0001"), calls))
        out[model] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000, help="calls timed for each figure (default 20000)")
    parser.add_argument("--codecs", type=int, default=50, help="codecs loaded for the memory figure (default 50)")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = {"cpu_count": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                   "quickjs": quickjs_engine(args.calls, args.codecs, Path(tmp))}
    v8 = v8_engine(args.calls, max(5, args.codecs // 5))
    results["v8"] = v8 if v8 is not None else "mini-racer not installed (pip install -e '.[bench]')"
    results["gateway_path"] = gateway_path(args.calls)
    print(json.dumps(results, indent=2, ensure_ascii=False))
    out = ROOT / "bench" / "results" / "codecs.json"
    out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"written to {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
