"""Images per second of gacd_tf's AutoAttack, attack by attack, and the ratio to the reference.

On each model (``--model``, repeatable, or ``--arch``, a comma list of
untrained architectures) and ``--examples`` class-balanced CIFAR-10 test
images, times
APGD-CE, APGD-T, FAB-T and Square, each run alone from the clean images
(through the ensemble driver, so each attacks only the clean-correct points,
and Square spends its 5,000 queries only on the points it has not broken),
then the whole standard ensemble (each attack on the points still robust).
The same runs are made by the reference implementation (fra31/auto-attack,
PyPI ``pyautoattack``, PyTorch) on the same model exported to ONNX and
converted with onnx2torch, in a subprocess under ``--reference_python``
(``benchmarks/autoattack_crosscheck.py --role=reference``), interleaved
with ours: each run is timed on our side and then on the reference's before
the next run starts, so a change in the machine's load falls on both sides
of a ratio alike (each side times its own runs; the reference's start-up,
torch import and ONNX conversion, is outside its timing, as our tracing is
outside ours; the reference's run includes its few sanity-check passes,
which ours skips, ``checks=False``). The table
shows both throughputs, their ratio (> 1: gacd_tf faster) and the robust
accuracy each side reached (a more robust model costs more: later attacks
run on more points). gacd_tf's ``tf.function`` tracing is done first, on a
few images, and reported apart; the timed runs reuse the traces.

Images per second = ``--examples`` / seconds of that run (clean
classification included). The last lines extrapolate the ensemble to 1,000
images (linear in the number of images for a given robust fraction).

Example:
    python benchmarks/autoattack_speed.py --model=runs/resnet20/model.keras \\
        --model=runs/wrn_16_2/model.keras --data_dir=data/cifar10 --examples=64 \\
        --reference_python=/path/to/refenv/bin/python
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoattack_crosscheck import STANDARD, _logits


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[],
                   help="A .keras classifier; repeat for several (default: untrained --arch, "
                        "which is not robust and so times little more than APGD-CE).")
    p.add_argument("--arch", default="resnet20",
                   help="Comma list of architectures built when --model is unset.")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data_dir", default=os.environ.get("GACD_DATA_DIR"))
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--attacks", default=",".join(STANDARD))
    p.add_argument("--warmup_examples", type=int, default=4,
                   help="Images of the untimed tracing run (gacd_tf side).")
    p.add_argument("--reference_python", default=None,
                   help="Python with torch, onnx, onnx2torch and pyautoattack (unset: gacd_tf "
                        "only).")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of each side: TensorFlow's intra- and inter-op threads "
                        "here, torch's threads on the reference side (1: on a shared 2-core "
                        "machine torch's OpenMP threads with 2 slowed its forward pass ~18x).")
    p.add_argument("--output_dir", default="autoattack_speed")
    return p.parse_args(argv)


def reference_run(args, onnx_path, inputs, names, output_dir):
    """The reference's time for one run (``names`` as an ensemble from the clean images)."""
    result = os.path.join(output_dir, "reference_" + "+".join(names) + ".json")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autoattack_crosscheck.py")
    cmd = [args.reference_python, script, "--role=reference", f"--onnx={onnx_path}",
           f"--inputs={inputs}", f"--result={result}", f"--eps={args.eps!r}",
           f"--seed={args.seed}", f"--batch_size={args.batch_size}",
           f"--attacks={','.join(names)}", "--ensemble", "--no-individual",
           f"--threads={args.threads}"]
    subprocess.run(cmd, check=True)
    with open(result) as f:
        stored = json.load(f)
    run = stored["ensemble"]
    run.pop("robust", None)
    return run, stored


def benchmark_model(args, model, name, x, y, output_dir):
    """Every run of one model, ours then the reference's, interleaved; prints its table."""
    import tensorflow as tf

    from gacd_tf.attacks.autoattack import AutoAttack

    os.makedirs(output_dir, exist_ok=True)
    attacks = args.attacks.split(",")
    runs = [[a] for a in attacks] + [attacks]

    # Trace every attack once on a few clean-correct images (untimed).
    correct = np.flatnonzero(_logits(model, x).argmax(1) == y)
    warm = correct[:args.warmup_examples] if len(correct) else np.arange(1)
    adversaries = {}
    trace_start = time.time()
    for names in runs:
        aa = AutoAttack(version="standard", attacks=names, eps=args.eps, seed=args.seed,
                        verbose=0, checks=False)
        aa.run(model, x[warm], y[warm], batch_size=args.batch_size)
        adversaries[tuple(names)] = aa
    tracing = time.time() - trace_start

    onnx_path = inputs = None
    if args.reference_python:
        from gacd_tf.serving import export_onnx

        onnx_path = export_onnx(model, os.path.join(output_dir, "onnx"), version=1,
                                overwrite=True)
        inputs = os.path.join(output_dir, "inputs.npz")
        np.savez(inputs, x=x, y=y)

    ours, ref, stored = {}, {}, None
    for names in runs:
        key = " + ".join(names)
        start = time.time()
        res = adversaries[tuple(names)].run(model, x, y, batch_size=args.batch_size, verbose=0)
        ours[key] = {"seconds": time.time() - start, "robust_accuracy": res["robust_accuracy"],
                     "natural_accuracy": res["natural_accuracy"],
                     "seconds_by_attack": res["seconds_by_attack"],
                     "passes_by_attack": res["passes_by_attack"]}
        print(f"gacd_tf: {name}: {key}: {ours[key]['seconds']:.1f} s, "
              f"robust {100 * res['robust_accuracy']:.1f} %", flush=True)
        if args.reference_python:
            ref[key], stored = reference_run(args, onnx_path, inputs, names, output_dir)
            print(f"reference: {name}: {key}: {ref[key]['seconds']:.1f} s, "
                  f"robust {100 * ref[key]['robust_accuracy']:.1f} %", flush=True)

    n = len(y)
    print()
    print(f"AutoAttack speed, {name}, {n} CIFAR-10 test images, eps {args.eps:.5f}, "
          f"{os.cpu_count()} CPU cores; gacd_tf: TensorFlow {tf.__version__}"
          + (f"; reference: pyautoattack, torch {stored['torch']} "
             f"({stored['threads']} thread(s)) via ONNX + onnx2torch" if ref else "")
          + f"; {args.threads} CPU thread(s) each side; each run ours then the reference's,"
          " interleaved")
    print(f"natural accuracy {100 * ours[attacks[0]]['natural_accuracy']:.1f} %; gacd_tf "
          f"tracing (untimed, once per attack) {tracing:.1f} s")
    print()
    if ref:
        print("| run (from clean images) | gacd_tf img/s | reference img/s | ratio | "
              "gacd_tf s | reference s | robust % gacd_tf / reference |")
        print("|---|---:|---:|---:|---:|---:|---:|")
    else:
        print("| run (from clean images) | gacd_tf img/s | gacd_tf s | robust % |")
        print("|---|---:|---:|---:|")
    rows = {}
    for names in runs:
        key = " + ".join(names)
        label = "ensemble (standard)" if len(names) > 1 else key
        o = ours[key]
        if ref:
            r = ref[key]
            ratio = r["seconds"] / o["seconds"]
            print(f"| {label} | {n / o['seconds']:.2f} | {n / r['seconds']:.2f} | {ratio:.2f} | "
                  f"{o['seconds']:.1f} | {r['seconds']:.1f} | "
                  f"{100 * o['robust_accuracy']:.1f} / {100 * r['robust_accuracy']:.1f} |")
        else:
            print(f"| {label} | {n / o['seconds']:.2f} | {o['seconds']:.1f} | "
                  f"{100 * o['robust_accuracy']:.1f} |")
        rows[label] = {"ours": o, "reference": ref.get(key)}
    ens = ours[" + ".join(attacks)]
    print()
    print(f"gacd_tf standard ensemble: {1000 * ens['seconds'] / n / 60:.1f} min per 1,000 images "
          f"(extrapolated from {n}; per attack {ens['seconds_by_attack']})")
    if ref:
        r = ref[" + ".join(attacks)]
        print(f"reference standard ensemble: {1000 * r['seconds'] / n / 60:.1f} min per 1,000 "
              "images (same extrapolation)")
    print()
    with open(os.path.join(output_dir, "speed.json"), "w") as f:
        json.dump({"model": name, "examples": n, "tracing_seconds": tracing, "rows": rows}, f,
                  indent=1)


def main(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.makedirs(args.output_dir, exist_ok=True)
    import tensorflow as tf

    # The same number of threads on both sides: a ratio of implementations, not of cores.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from gacd_tf.data import load_split
    from gacd_tf.models import build_model
    from gacd_tf.models.io import load_model

    split = load_split(args.dataset, "test", args.data_dir, examples=args.examples)
    x = split.images.astype(np.float32) / 255.0
    y = split.labels.astype(np.int64)
    if args.model:
        models = [(path, os.path.basename(os.path.dirname(os.path.abspath(path))) + "/"
                   + os.path.basename(path)) for path in args.model]
    else:
        models = [(None, arch) for arch in args.arch.split(",")]
    for i, (path, name) in enumerate(models):
        if path:
            model = load_model(path)
        else:
            model = build_model(name, num_classes=split.info.num_classes)
            model(x[:1], training=False)
            name = f"untrained {name}"
        out = args.output_dir if len(models) == 1 else os.path.join(args.output_dir, str(i))
        benchmark_model(args, model, name, x, y, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
