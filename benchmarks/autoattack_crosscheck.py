"""Cross-check gacd_tf's AutoAttack against the reference implementation.

Runs, on the same model and the same test images, gacd_tf's native
TensorFlow AutoAttack and the reference (fra31/auto-attack, PyPI
``pyautoattack``, PyTorch) and prints, side by side, the robust accuracy
after each attack of the ensemble, the final figure, optionally each attack
run alone from the clean images, and the seconds each side took. The
reference never enters gacd_tf's dependencies: it runs in another Python
(``--reference_python``, an environment with torch, onnx, onnx2torch and
pyautoattack) as a subprocess of this script, on the model exported to ONNX
(``gacd_tf.serving.export_onnx``) and converted with onnx2torch. The logits
of both sides on the clean images are compared first (max abs difference).

The two sides draw different random numbers (APGD's starts, FAB's and
Square's draws: gacd_tf's are keyed per example, the reference's made per
batch; Square picks its square per example here, per batch there), so
per-example flags may differ on borderline points; the issue's criterion is
the robust accuracies within ``--tolerance`` points.

Everything is written under ``--output_dir`` (inputs.npz, model.onnx,
ours.json, reference.json, crosscheck.json). A side whose JSON is already
there for the same settings is reused unless ``--rerun``; ``--sides`` runs one
side at a time (the machine may be shared).

Example:
    python benchmarks/autoattack_crosscheck.py --model=runs/quickstart/model.keras \\
        --data_dir=data/cifar10 --examples=500 --output_dir=/tmp/xcheck \\
        --reference_python=/path/to/refenv/bin/python --individual --threads=1

The reference side alone (what the subprocess runs; needs no TensorFlow):
    /path/to/refenv/bin/python benchmarks/autoattack_crosscheck.py --role=reference \\
        --onnx=/tmp/xcheck/model.onnx --inputs=/tmp/xcheck/inputs.npz --result=/tmp/ref.json

Reference: Croce and Hein, ICML 2020; github.com/fra31/auto-attack.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import time

import numpy as np

STANDARD = ("apgd-ce", "apgd-t", "fab-t", "square")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["driver", "reference"], default="driver",
                   help="driver (default): run both sides and compare; reference: the "
                        "reference side only (run under --reference_python).")
    p.add_argument("--model", help="The .keras classifier (driver).")
    p.add_argument("--onnx", help="The model as ONNX (default: exported into --output_dir).")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data_dir", default=os.environ.get("GACD_DATA_DIR"))
    p.add_argument("--examples", type=int, default=500,
                   help="Deterministic class-balanced subset of the test split.")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=250, help="Points per attack call "
                   "(the reference's default 250).")
    p.add_argument("--attacks", default=",".join(STANDARD),
                   help="Attacks of the ensemble, in order, each with the standard "
                        "version's settings.")
    p.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=True,
                   help="Run the ensemble.")
    p.add_argument("--individual", action=argparse.BooleanOptionalAction, default=False,
                   help="Also run each attack alone from the clean images.")
    p.add_argument("--sides", default="ours,reference",
                   help="Sides to run now (a side not run is read from --output_dir).")
    p.add_argument("--rerun", action="store_true",
                   help="Run the --sides even if their JSON for the same settings exists.")
    p.add_argument("--reference_python", default=None,
                   help="Python of the environment with torch, onnx, onnx2torch, pyautoattack.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads on the reference side (default: torch's). On "
                        "a shared 2-core machine use 1: torch's 2 OpenMP threads competing "
                        "with other jobs made its forward pass ~18x slower.")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="Allowed difference of robust accuracies, in points.")
    p.add_argument("--output_dir", default="autoattack_crosscheck")
    # reference role
    p.add_argument("--inputs", help="reference: .npz with x (NHWC float32 in [0,1]) and y.")
    p.add_argument("--result", help="reference: JSON file to write.")
    p.add_argument("--logits_out", help="reference: .npy file for the clean logits.")
    return p.parse_args(argv)


def settings_key(args):
    """What a side's result depends on (a stored result is reused only if equal)."""
    return {"examples": args.examples, "eps": args.eps, "seed": args.seed,
            "batch_size": args.batch_size, "attacks": args.attacks.split(","),
            "ensemble": args.ensemble, "individual": args.individual,
            "dataset": args.dataset, "model": os.path.abspath(args.model) if args.model else None}


# ----------------------------------------------------------------------
# Reference side (torch; no TensorFlow or gacd_tf import here).


class _Collector(logging.Handler):
    """Keeps the reference logger's records (messages and times)."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append((record.created, record.levelname, record.getMessage()))


def load_reference_model(onnx_path, threads=None):
    """The ONNX model (NHWC ``images`` -> ``logits``) as a torch module on NCHW input."""
    import onnx
    import torch
    from onnx2torch import convert

    if threads:
        torch.set_num_threads(threads)
    graph = onnx.load(onnx_path)
    names = [o.name for o in graph.graph.output]
    if "logits" in names and len(names) > 1:
        # Keep only the logits output (drops the softmax and argmax heads).
        pruned = onnx_path + ".logits.onnx"
        onnx.utils.extract_model(onnx_path, pruned, [graph.graph.input[0].name], ["logits"])
        graph = onnx.load(pruned)
    net = convert(graph).eval()

    class NCHW(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            out = self.net(x.permute(0, 2, 3, 1))
            return out[0] if isinstance(out, (tuple, list)) else out

    model = NCHW(net).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reference_main(args):
    import torch
    from pyautoattack import AutoAttack

    data = np.load(args.inputs)
    x = torch.from_numpy(np.ascontiguousarray(data["x"].transpose(0, 3, 1, 2)))
    y = torch.from_numpy(data["y"].astype(np.int64))
    model = load_reference_model(args.onnx, args.threads)
    attacks = args.attacks.split(",")

    with torch.no_grad():
        logits = torch.cat([model(x[i:i + args.batch_size])
                            for i in range(0, len(y), args.batch_size)]).numpy()
    if args.logits_out:
        np.save(args.logits_out, logits)
    clean = logits.argmax(1) == y.numpy()
    out = {"natural_accuracy": float(clean.mean()), "num_examples": len(y),
           "torch": torch.__version__, "threads": torch.get_num_threads(),
           "key": json.loads(os.environ.get("XCHECK_KEY", "null"))}

    logger = logging.getLogger("auto-attack")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    collector = _Collector()
    logger.addHandler(collector)

    def make():
        adversary = AutoAttack(model, norm="Linf", eps=args.eps, version="standard",
                               seed=args.seed, device="cpu")
        adversary.attacks_to_run = list(attacks)
        return adversary

    a = make()
    out["settings"] = {
        "apgd": {"n_iter": a.apgd.n_iter, "n_restarts": a.apgd.n_restarts, "rho": a.apgd.thr_decr},
        "apgd-t": {"n_iter": a.apgd_targeted.n_iter, "n_restarts": a.apgd_targeted.n_restarts,
                   "n_target_classes": a.apgd_targeted.n_target_classes},
        "fab": {"n_iter": a.fab.n_iter, "n_target_classes": a.fab.n_target_classes,
                "alpha_max": a.fab.alpha_max, "eta": a.fab.eta, "beta": a.fab.beta},
        "square": {"n_queries": a.square.n_queries, "p_init": a.square.p_init,
                   "rescale_schedule": a.square.rescale_schedule}}

    def run(adversary, order):
        collector.records.clear()
        start = time.time()
        x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=args.batch_size)
        seconds = time.time() - start
        robust = (y_adv == y).numpy() & clean
        # Per attack: points broken (from the per-batch lines) and seconds
        # (between its "running" line and its "robust accuracy after" line).
        broken, begin, end = {a: 0 for a in order}, {}, {}
        for created, _, msg in collector.records:
            for a in order:
                if msg == f"running {a}":
                    begin[a] = created
                elif msg.startswith(f"{a} - ") and "successfully perturbed" in msg:
                    broken[a] += int(msg.split(" - ")[2].split(" out of ")[0])
                elif msg.startswith(f"robust accuracy after {a.upper()}:"):
                    end[a] = created
        count, by_attack, seconds_by = int(clean.sum()), {}, {}
        for a in order:
            count -= broken[a]
            by_attack[a] = count / len(y)
            if a in begin and a in end:
                seconds_by[a] = round(end[a] - begin[a], 2)
        linf = float(np.abs((x_adv - x).numpy()).reshape(len(y), -1).max())
        warnings = [m for _, level, m in collector.records if level == "WARNING"]
        return {"robust_accuracy": float(robust.mean()), "robust_accuracy_by_attack": by_attack,
                "seconds": round(seconds, 2), "seconds_by_attack": seconds_by,
                "warnings": warnings, "max_linf": linf, "robust": robust.astype(int).tolist()}

    if args.ensemble:
        print(f"reference: ensemble {attacks} on {len(y)} images", flush=True)
        out["ensemble"] = run(make(), attacks)
        print(f"reference: ensemble {out['ensemble']['robust_accuracy_by_attack']} "
              f"({out['ensemble']['seconds']} s)", flush=True)
    if args.individual:
        out["individual"] = {}
        for a in attacks:
            adversary = make()
            adversary.attacks_to_run = [a]
            res = run(adversary, [a])
            out["individual"][a] = res
            print(f"reference: {a} alone {100 * res['robust_accuracy']:.2f} % "
                  f"({res['seconds']} s)", flush=True)
    with open(args.result, "w") as f:
        json.dump(out, f)


# ----------------------------------------------------------------------
# Our side (TensorFlow).


def our_side(args, model, x, y):
    from gacd_tf.attacks.autoattack import AutoAttack

    attacks = args.attacks.split(",")
    out = {"key": settings_key(args)}

    def run(names, checks):
        aa = AutoAttack(version="standard", attacks=names, eps=args.eps, seed=args.seed,
                        verbose=2, checks=checks)
        res = aa.run(model, x, y, batch_size=args.batch_size)
        linf = float(np.abs(res["x_adv"] - x).reshape(len(y), -1).max())
        return {"natural_accuracy": res["natural_accuracy"],
                "robust_accuracy": res["robust_accuracy"],
                "robust_accuracy_by_attack": res["robust_accuracy_by_attack"],
                "seconds": res["seconds"], "seconds_by_attack": res["seconds_by_attack"],
                "warnings": res["warnings"], "max_linf": linf, "attack": res["attack"],
                "robust": res["robust"].astype(int).tolist()}

    if args.ensemble:
        print(f"ours: ensemble {attacks} on {len(y)} images", flush=True)
        out["ensemble"] = run(attacks, True)
    if args.individual:
        out["individual"] = {}
        for a in attacks:
            out["individual"][a] = run([a], False)
            print(f"ours: {a} alone {100 * out['individual'][a]['robust_accuracy']:.2f} % "
                  f"({out['individual'][a]['seconds']} s)", flush=True)
    return out


def _load_if_same(path, key):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    return stored if stored.get("key") == key else None


def _agreement(ours, ref):
    a, b = np.asarray(ours, bool), np.asarray(ref, bool)
    return {"both_robust": int(np.sum(a & b)), "only_ours_robust": int(np.sum(a & ~b)),
            "only_reference_robust": int(np.sum(~a & b))}


def compare(args, ours, ref):
    """Rows (what, ours %, reference %, difference in points, ours s, reference s)."""
    rows, failures = [], []

    def row(what, o, r, so=None, sr=None):
        diff = 100 * (o - r)
        ok = abs(diff) <= args.tolerance + 1e-9
        rows.append({"what": what, "ours": 100 * o, "reference": 100 * r, "diff": diff,
                     "ours_s": so, "reference_s": sr, "ok": ok})
        if not ok:
            failures.append(what)

    if args.ensemble and "ensemble" in ours and "ensemble" in ref:
        e, f = ours["ensemble"], ref["ensemble"]
        row("natural", e["natural_accuracy"], ref["natural_accuracy"])
        for a in args.attacks.split(","):
            row(f"ensemble, after {a}", e["robust_accuracy_by_attack"][a],
                f["robust_accuracy_by_attack"][a], e["seconds_by_attack"].get(a),
                f["seconds_by_attack"].get(a))
        row("ensemble (final)", e["robust_accuracy"], f["robust_accuracy"], e["seconds"],
            f["seconds"])
    if args.individual and "individual" in ours and "individual" in ref:
        for a in args.attacks.split(","):
            o, r = ours["individual"][a], ref["individual"][a]
            row(f"{a} alone", o["robust_accuracy"], r["robust_accuracy"], o["seconds"],
                r["seconds"])
    return rows, failures


def print_table(rows, n, logits_diff, pred_agree):
    print()
    print(f"AutoAttack cross-check, {n} images; clean logits max |TF - torch| = "
          f"{logits_diff:.2e}, predictions agree on {pred_agree}/{n}")
    print()
    print("| robust accuracy (%) | gacd_tf | reference | diff (pts) | gacd_tf s | reference s |")
    print("|---|---:|---:|---:|---:|---:|")

    def sec(s):
        return "" if s is None else f"{s:.1f}"

    for r in rows:
        flag = "" if r["ok"] else " **>tol**"
        print(f"| {r['what']} | {r['ours']:.2f} | {r['reference']:.2f} | {r['diff']:+.2f}{flag} "
              f"| {sec(r['ours_s'])} | {sec(r['reference_s'])} |")
    print()


def driver_main(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.model:
        sys.exit("error: --model is required (a .keras classifier)")
    sides = [s for s in args.sides.split(",") if s]
    if "reference" in sides and not args.reference_python:
        sys.exit("error: --reference_python is required to run the reference side "
                 "(or pass --sides=ours)")
    os.makedirs(args.output_dir, exist_ok=True)
    from gacd_tf.data import load_split
    from gacd_tf.models.io import load_model

    split = load_split(args.dataset, "test", args.data_dir, examples=args.examples)
    x = split.images.astype(np.float32) / 255.0
    y = split.labels.astype(np.int64)
    inputs = os.path.join(args.output_dir, "inputs.npz")
    np.savez(inputs, x=x, y=y)
    model = load_model(args.model)
    logits = np.concatenate([_logits(model, x[i:i + 250]) for i in range(0, len(y), 250)])

    onnx_path = args.onnx
    if onnx_path is None:
        from gacd_tf.serving import export_onnx

        onnx_path = export_onnx(model, os.path.join(args.output_dir, "onnx"), version=1,
                                overwrite=True)
    key = settings_key(args)
    ours_path = os.path.join(args.output_dir, "ours.json")
    ref_path = os.path.join(args.output_dir, "reference.json")
    ref_logits_path = os.path.join(args.output_dir, "reference_logits.npy")

    ours = None if args.rerun and "ours" in sides else _load_if_same(ours_path, key)
    if ours is None and "ours" in sides:
        ours = our_side(args, model, x, y)
        with open(ours_path, "w") as f:
            json.dump(ours, f)
    ref = None if args.rerun and "reference" in sides else _load_if_same(ref_path, key)
    if ref is None and "reference" in sides:
        cmd = [args.reference_python, os.path.abspath(__file__), "--role=reference",
               f"--onnx={onnx_path}", f"--inputs={inputs}", f"--result={ref_path}",
               f"--logits_out={ref_logits_path}", f"--eps={args.eps!r}", f"--seed={args.seed}",
               f"--batch_size={args.batch_size}", f"--attacks={args.attacks}",
               "--ensemble" if args.ensemble else "--no-ensemble",
               "--individual" if args.individual else "--no-individual"]
        if args.threads:
            cmd.append(f"--threads={args.threads}")
        env = dict(os.environ, XCHECK_KEY=json.dumps(key))
        print("reference:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
        with open(ref_path) as f:
            ref = json.load(f)

    result = {"settings": key, "onnx": onnx_path}
    if os.path.exists(ref_logits_path):
        ref_logits = np.load(ref_logits_path)
        logits_diff = float(np.abs(ref_logits - logits).max())
        pred_agree = int(np.sum(ref_logits.argmax(1) == logits.argmax(1)))
    else:
        logits_diff, pred_agree = float("nan"), -1
    result.update(logits_max_abs_diff=logits_diff, predictions_agree=pred_agree,
                  logits_scale=float(np.abs(logits).max()))
    if ours is None or ref is None:
        print(f"only {'ours' if ours else 'reference' if ref else 'no side'} available; "
              "run the other side with --sides")
        return 0
    rows, failures = compare(args, ours, ref)
    print_table(rows, len(y), logits_diff, pred_agree)
    agreement = {}
    if "ensemble" in ours and "ensemble" in ref:
        agreement["ensemble"] = _agreement(ours["ensemble"]["robust"], ref["ensemble"]["robust"])
    for a in (ours.get("individual") or {}):
        if a in (ref.get("individual") or {}):
            agreement[a] = _agreement(ours["individual"][a]["robust"],
                                      ref["individual"][a]["robust"])
    for what, counts in agreement.items():
        print(f"per-example flags, {what}: {counts}")
    for side, res in (("ours", ours), ("reference", ref)):
        if "ensemble" in res:
            print(f"{side}: max l_inf of the adversarial examples {res['ensemble']['max_linf']:.6f}"
                  f" (eps {args.eps:.6f}); warnings: {res['ensemble']['warnings'] or 'none'}")
    result.update(rows=rows, failures=failures, per_example=agreement)
    with open(os.path.join(args.output_dir, "crosscheck.json"), "w") as f:
        json.dump(result, f, indent=1)
    if failures:
        print(f"DISAGREEMENT > {args.tolerance} points: {', '.join(failures)}")
        return 1
    print(f"all within {args.tolerance} points")
    return 0


def _logits(model, x):
    from gacd_tf.attacks.objectives import as_outputs

    return np.asarray(as_outputs(model(x, training=False))["logits"])


if __name__ == "__main__":
    arguments = parse_args()
    sys.exit(reference_main(arguments) if arguments.role == "reference"
             else driver_main(arguments))
