"""Step parity with PyTorch: our training step against the official code's, run side by side.

For each method, gacd_tf's training step (the trainer built by
``gacd_tf.methods.build`` or ``AdversarialTrainer``, compiled with the
optimizer the programs use, ``gacd_tf.training.sgd_optimizer``, and the
trainers' coupled L2 weight decay) and a PyTorch re-derivation of the
official training step take ``--steps`` SGD steps side by side:

* the same starting weights: a RobustBench ``WideResNet`` (``wide_resnet.py``
  loaded by file path; student depth 10 width 1, teacher depth 10 width 2)
  initialised on the PyTorch side and carried into Keras by gacd_tf's importer
  (``gacd_tf.models.torch_import``), the teacher with random batch-norm
  statistics; GACD's embedding heads and memory banks start from the same
  arrays on both sides;
* the same batches (a class-balanced subset of the CIFAR-10 training split,
  no augmentation), the same attack start noise (drawn here, injected into
  both sides: uniform in the eps-ball for PGD starts, N(0, 1) for the 0.001
  Gaussian starts of RSLAD, AdaAD, IGDM and TRADES) and, for GACD, the same
  negative indices;
* SGD with momentum 0.9, weight decay and a step decay (x0.1 from step
  ``--decay_steps``, each step being one "epoch" of the official loops, which
  decay at epoch boundaries); IGDM's ramp is epoch / E with E = ``--steps``.

The PyTorch side runs in another Python (``--reference_python``: torch and
numpy only, nothing of gacd_tf or TensorFlow) as a subprocess of this
script, as ``benchmarks/autoattack_crosscheck.py`` runs its reference. Its
step functions are written from the official code (file:line in their
comments; nothing is copied): natural from AdaAD's plain loop, PGD-AT from
Madry et al.'s ``MadryLab/cifar10_challenge`` as it runs (its attack
differentiates the training graph: batch statistics, running averages moved
at every attack step; ours: ``AdversarialTrainer(attack_training_mode=True)``),
AFT as Madry's step with the attack in eval mode (the PyTorch codes' habit and
gacd-distill's AFT), TRADES from ``yaodongyu/TRADES``, KD from
``HobbitLong/RepDistiller``, ARD from ``goldblum/AdversariallyRobustDistillation``
(``main.py``), RSLAD from ``zibojia/RSLAD``, AdaAD from ``boyellow/AdaAD``, IGDM
from ``HongsinLee/saad``; GACD has no official code and is re-derived from
SPEC "GACD" and the paper (Algorithm 1, Eq. 9/10), in three forms: ``gacd``
(ours: two-sided, CRD's normaliser Z, CE on x+), ``gacd_one_sided`` and
``gacd_paper`` (the paper's loss as written: one-sided, no Z, no CE term).

Printed per method: the per-step losses of both sides, the largest relative
per-step loss difference, the largest final relative weight difference
(per tensor ``max|ours - ref| / max|ref|``, over every weight: kernels,
biases, batch-norm gammas, betas, running means and variances, GACD's heads,
banks and log Z) and a verdict. The exit status is 1 if any method is beyond
the tolerance.

Precision. ``--dtype=float32`` (default) compares both sides in float32;
``--dtype=float64`` runs ours with Keras' floatx float64 (the zoo's network
rebuilt with every layer in float64, see :func:`float64_twin`) against the
reference's float64 run, where round-off no longer hides semantics. It
needs gacd_tf's attacks to keep a float64 batch's dtype, which they do
(``_training_input`` in ``gacd_tf/attacks/pgd.py``); a change that breaks
this makes it stop with a message saying so (:func:`check_float64_attacks`).

Tolerance in float32. Both sides compute in float32 with different kernels, so they
agree only to round-off, and the reference measures round-off's scale itself:
it runs every method twice, in float32 (the comparison) and in float64, and
the table prints their distance beside ours. Two effects set the scale:

* the sign steps of the attacks: a pixel whose gradient is within round-off
  of zero takes the other sign on the other side, moving by 2 alpha; PyTorch
  against itself (float32 vs float64) already differs by up to 2e-3 in a
  step's loss for ARD, RSLAD, AdaAD and IGDM, and by up to O(1) in the
  displacement of single tensors after 5 steps;
* Keras 3's batch norm in training mode (no fused kernel on TensorFlow: its
  gradient is autodiff through ``tf.nn.batch_normalization``): in float32
  its gradient in the first layers is 1e-3 relative from the float64 one,
  PyTorch's 1e-6 (measured on this network; in float64 the two agree to
  1e-7), which gives the natural step a 2.5e-4 loss difference after 5 steps.

A method passes when every per-step loss is within ``--tolerance`` (5e-3,
relative: above both effects; it catches a difference the size of the
optimizer's momentum form and late decay, 2.8e-2 in a loss, but not the
smaller ones this script found: ARD's start 2e-3, TRADES' start 5.4e-4 and
pass order 2.9e-4, which only ``--dtype=float64`` tells from round-off, so
float64 is the comparison that proves a step) and the final weights are
within ``max(--weight_tolerance, --roundoff_factor x PyTorch's own
float32-vs-float64 distance)`` (0.2 and
5: the weight figure is the largest, over tensors, of ``max|ours - ref|``
relative to how far the reference moved that tensor, which round-off alone
takes to O(1) where an attack flips signs). The methods whose attack runs
batch norm in training mode (``pgd_at``, ``ard``, as their official code)
get a per-step loss tolerance of 2e-2: there every attack step differentiates
Keras' float32 batch norm (the second effect), so signs flip from the first
step (``pgd_at``: 7.7e-4 at step 0, where PyTorch's float32 and float64
agree to 3e-8, and up to 8.9e-3 by step 4), while in float64 the same
steps agree to 2e-14.

Tolerance in float64: 1e-9 on a step's loss and 1e-6 on the final weights
(same measure). Measured in float64 the two sides agree to 4e-13 in a loss
and 1e-11 in the weights for every method (the table in docs/benchmarks.md),
so the bounds leave three orders of magnitude to round-off, and a semantic
difference of 1e-4 (or 1e-6) in a loss or a weight fails by orders of
magnitude: the float64 comparison is the sharp one. Run it with
``--bn_running_variance=biased``: the one difference kept on purpose (the
running variance's n / (n - 1)) would otherwise fail every method's weights.

Example:
    python benchmarks/torch_parity.py --methods=natural,kd,ard,rslad,adaad,igdm,gacd \\
        --steps=5 --reference_python=/path/to/torch-env/bin/python
    python benchmarks/torch_parity.py --methods=all --steps=5 --dtype=float64 \\
        --bn_running_variance=biased --reference_python=/path/to/torch-env/bin/python

The reference side alone (what the subprocess runs; needs no TensorFlow):
    /path/to/torch-env/bin/python benchmarks/torch_parity.py --role=reference \\
        --output_dir=torch_parity --robustbench_dir=/path/to/robustbench

Reference:
    SPEC "Parity with the official code"; the official repositories above.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

EPS = 8 / 255
STEP = 2 / 255
NUM_CLASSES = 10
STUDENT = dict(depth=10, widen_factor=1)
TEACHER = dict(depth=10, widen_factor=2)
# Our arch name for RobustBench's WideResNet (depth and width are options).
ARCH = "wrn_28_10"
ALL_METHODS = ("natural", "pgd_at", "trades", "kd", "ard", "rslad", "adaad", "igdm", "gacd",
               "gacd_one_sided", "gacd_paper", "aft")
# What each method's attack starts from: a uniform point of the eps-ball, or x + 0.001 N(0, 1).
START = {"pgd_at": "uniform", "aft": "uniform", "ard": "uniform", "gacd": "uniform",
         "gacd_one_sided": "uniform", "gacd_paper": "uniform", "trades": "normal",
         "rslad": "normal", "adaad": "normal", "igdm": "normal"}
TEACHER_METHODS = ("kd", "ard", "rslad", "adaad", "igdm", "gacd", "gacd_one_sided",
                   "gacd_paper")
GACD_EMBED_DIM = 32
GACD_K = 64
GACD_T = 0.1
GACD_MOMENTUM = 0.5
# (per-step loss, final weights) tolerances by precision; the module docstring says why.
TOLERANCES = {"float32": (5e-3, 0.2), "float64": (1e-9, 1e-6)}
# Methods whose attack runs the student's batch norm in training mode (as their
# official code): in float32 Keras' unfused batch-norm gradient flips attack
# signs there, so their float32 loss tolerance is TRAINING_MODE_TOLERANCE.
TRAINING_MODE_ATTACKS = ("pgd_at", "ard")
TRAINING_MODE_TOLERANCE = 2e-2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["driver", "reference"], default="driver")
    p.add_argument("--methods", default="natural,kd,ard,rslad,adaad,igdm,gacd",
                   help=f"Comma-separated, from: {', '.join(ALL_METHODS)} ('all': every one).")
    p.add_argument("--steps", type=int, default=5, help="SGD steps per method.")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_data", type=int, default=160,
                   help="Class-balanced training subset the batches come from (GACD's M).")
    p.add_argument("--learning_rate", type=float, default=0.1)
    p.add_argument("--aft_learning_rate", type=float, default=0.01,
                   help="AFT's constant rate (gacd-distill --aft_learning_rate).")
    p.add_argument("--decay_steps", default="2",
                   help="Steps from which the rate is x0.1 (each step is one epoch of the "
                        "official loops).")
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--attack_steps", type=int, default=10, help="PGD steps of the attacks.")
    p.add_argument("--sgd_form", choices=["pytorch", "keras"], default=None,
                   help="Our optimizer's momentum form (default: sgd_optimizer's default).")
    p.add_argument("--pgd_at_attack_mode", choices=["training", "inference"], default="training",
                   help="Diagnostic: our pgd_at row's attack mode ('training': Madry's code, "
                        "AdversarialTrainer(attack_training_mode=True); 'inference': "
                        "gacd-train-teacher's default), against Madry's training-mode step.")
    p.add_argument("--trades_start", choices=["gaussian", "attack"], default="gaussian",
                   help="Diagnostic: our TRADES attack's start (AdversarialTrainer "
                        "trades_start; 'attack': PGD's clipped uniform start, given the "
                        "driver's uniform noise).")
    p.add_argument("--bn_running_variance", choices=["unbiased", "biased"], default="unbiased",
                   help="Diagnostic: 'biased' makes the reference's batch norm update its "
                        "running variance with the biased batch variance, as Keras does "
                        "(PyTorch's own: unbiased).")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="Precision of the comparison: both sides in float32, or both in "
                        "float64 (Keras floatx float64; the reference's float64 run).")
    p.add_argument("--tolerance", type=float, default=None,
                   help="Largest relative per-step loss difference that passes (default: "
                        f"{TOLERANCES['float32'][0]:g} in float32, "
                        f"{TOLERANCES['float64'][0]:g} in float64).")
    p.add_argument("--weight_tolerance", type=float, default=None,
                   help="Final weight difference that passes whatever the round-off (default: "
                        f"{TOLERANCES['float32'][1]:g} in float32, "
                        f"{TOLERANCES['float64'][1]:g} in float64).")
    p.add_argument("--roundoff_factor", type=float, default=5.0,
                   help="float32: final weight difference that passes, in units of PyTorch's "
                        "own float32-vs-float64 distance on the same run (not used in "
                        "float64).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data_dir", default=None,
                   help="CIFAR-10 in its official binary format (default: $GACD_DATA_DIR, "
                        "else ../shared/data/cifar10 beside the repository, as the tests).")
    p.add_argument("--reference_python", default=None,
                   help="Python of an environment with torch and numpy.")
    p.add_argument("--robustbench_dir", default=os.environ.get("ROBUSTBENCH_DIR"),
                   help="Folder of the robustbench package, whose model_zoo/architectures/"
                        "wide_resnet.py both sides build (default: $ROBUSTBENCH_DIR, else the "
                        "robustbench installed in this Python or in --reference_python).")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads of each side (TensorFlow intra-op, torch.set_num_threads).")
    p.add_argument("--output_dir", default="torch_parity")
    p.add_argument("--sides", default="reference,ours",
                   help="Sides to run now (a side not run is read from --output_dir).")
    args = p.parse_args(argv)
    if args.tolerance is None:
        args.tolerance = TOLERANCES[args.dtype][0]
    if args.weight_tolerance is None:
        args.weight_tolerance = TOLERANCES[args.dtype][1]
    return args


def method_list(text):
    names = list(ALL_METHODS) if text == "all" else [m.strip() for m in text.split(",") if m]
    unknown = [m for m in names if m not in ALL_METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(ALL_METHODS)}")
    return names


def lr_at(step, config, method):
    """The official loops' rate at ``step``: x0.1 for each decay step reached (AFT: constant)."""
    if method == "aft":
        return config["aft_learning_rate"]
    return config["learning_rate"] * 0.1 ** sum(step >= d for d in config["decay_steps"])


# ----------------------------------------------------------------------
# Reference side (torch; no TensorFlow or gacd_tf import here).


def reference_main(args):
    import importlib.util

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    folder = args.output_dir
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    inputs = dict(np.load(os.path.join(folder, "inputs.npz")))
    path = os.path.join(config["robustbench_dir"], "model_zoo", "architectures",
                        "wide_resnet.py")
    spec = importlib.util.spec_from_file_location("rb_wide_resnet", path)
    wide_resnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wide_resnet)

    def network(options):
        return wide_resnet.WideResNet(num_classes=NUM_CLASSES, **options)

    # Starting weights: PyTorch's own initialisation; the teacher also gets
    # random batch-norm affine parameters and running statistics, as a trained
    # network has.
    torch.manual_seed(config["seed"])
    student0 = network(STUDENT)
    teacher = network(TEACHER)
    generator = torch.Generator().manual_seed(config["seed"] + 1)
    with torch.no_grad():
        for module in teacher.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                for tensor, low, high in ((module.weight, 0.5, 1.5), (module.bias, -0.2, 0.2),
                                          (module.running_mean, -0.2, 0.2),
                                          (module.running_var, 0.5, 2.0)):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low)
                                 + low)
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) * 0.6
                                    - 0.3)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def state_arrays(net):
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()
                if not k.endswith("num_batches_tracked")}

    np.savez(os.path.join(folder, "init_student.npz"), **state_arrays(student0))
    np.savez(os.path.join(folder, "init_teacher.npz"), **state_arrays(teacher))

    def features_and_logits(net, x):
        """(penultimate features, logits): the input of the last Linear and its output."""
        seen = {}
        hook = net.fc.register_forward_pre_hook(lambda m, a: seen.setdefault("f", a[0]))
        try:
            logits = net(x)
        finally:
            hook.remove()
        return seen["f"], logits

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    def project(x_adv, x, eps):
        # The official loops' projection: onto the l_inf ball around x, then
        # into [0, 1] (e.g. ARD main.py:77-78, rslad_loss.py:50-51,
        # AT_helper.py:38-40, TRADES trades.py:40-41).
        return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)

    def sign_ascent(objective, x_start, x, eps, step, steps):
        """``steps`` signed-gradient steps of ``objective`` from ``x_start``, projected."""
        x_adv = x_start.detach()
        for _ in range(steps):
            x_adv.requires_grad_()
            with torch.enable_grad():
                value = objective(x_adv)
            grad = torch.autograd.grad(value, [x_adv])[0]
            x_adv = project(x_adv.detach() + step * torch.sign(grad.detach()), x, eps)
        return x_adv.detach()

    def kl_sum(log_q, p):
        # nn.KLDivLoss(reduction='sum' / size_average=False): sum of p (log p - log q).
        return F.kl_div(log_q, p, reduction="sum")

    if config.get("bn_running_variance") == "biased":
        use_biased_running_variance(torch, F)
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "methods": {}}

    for method in config["methods"]:
        for dtype_name in ("float32", "float64"):
            # float32: the comparison; float64: the same steps with less
            # round-off, whose distance from float32 is round-off's scale.
            dtype = getattr(torch, dtype_name)
            torch.set_default_dtype(dtype)
            start_time = time.time()
            losses, final = run_reference_method(
                method, config, inputs, network, student0, teacher.to(dtype), dtype, torch, F,
                nchw, state_arrays, features_and_logits, sign_ascent, kl_sum)
            suffix = "" if dtype_name == "float32" else "_float64"
            np.savez(os.path.join(folder, f"reference_{method}{suffix}.npz"), **final)
            entry = results["methods"].setdefault(method, {})
            entry[f"losses{suffix}"] = losses
            entry[f"seconds{suffix}"] = round(time.time() - start_time, 2)
            print(f"reference ({dtype_name}): {method} losses {['%.6g' % v for v in losses]} "
                  f"({entry[f'seconds{suffix}']} s)", flush=True)
        torch.set_default_dtype(torch.float32)
        teacher.to(torch.float32)
    with open(os.path.join(folder, "reference.json"), "w") as f:
        json.dump(results, f, indent=1)


def use_biased_running_variance(torch, F):
    """Diagnostic (``--bn_running_variance=biased``): PyTorch batch norm updating its
    running variance with the *biased* batch variance, as Keras does. PyTorch's
    own uses the unbiased one (n / (n - 1) times larger, n = B H W)."""

    def forward(self, x):
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                False, 0.0, self.eps)
        with torch.no_grad():
            mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    torch.nn.BatchNorm2d.forward = forward


def run_reference_method(method, config, inputs, network, student0, teacher, dtype, torch, F,
                         nchw, state_arrays, features_and_logits, sign_ascent, kl_sum):
    """``config["steps"]`` official steps of ``method`` in ``dtype``: (losses, final weights)."""
    student = network(STUDENT).to(dtype)
    student.load_state_dict(student0.state_dict())
    student.train()
    params = list(student.parameters())
    extra = {}
    if method.startswith("gacd"):
        heads = {}
        for name in ("student_embed", "teacher_embed"):
            linear = torch.nn.Linear(*inputs[f"{name}_kernel"].shape).to(dtype)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(inputs[f"{name}_kernel"].T.copy()))
                linear.bias.copy_(torch.from_numpy(inputs[f"{name}_bias"]))
            heads[name] = linear
            params += list(linear.parameters())
        banks = {"student": torch.from_numpy(inputs["student_bank"].copy()).to(dtype),
                 "teacher": torch.from_numpy(inputs["teacher_bank"].copy()).to(dtype)}
        extra = dict(heads=heads, banks=banks, log_z={})
    # Coupled L2 and momentum as every official loop: torch.optim.SGD
    # (ARD main.py:168, RSLAD resnet18_rslad_cifar10.py:37, AdaAD
    # main.py:247-248, saad igdm.py:38, TRADES train_trades_cifar10.py,
    # RepDistiller train_student.py:274-276).
    optimizer = torch.optim.SGD(params, lr=lr_at(0, config, method),
                                momentum=config["momentum"],
                                weight_decay=config["weight_decay"])
    losses = []
    for t in range(config["steps"]):
        # Step decay at the epoch boundary (ARD main.py:32-36,170; RSLAD
        # resnet18_rslad_cifar10.py:81-83; saad igdm.py:95-97; AdaAD
        # main.py:113-128,293-294): epoch e >= D runs at the decayed rate.
        for group in optimizer.param_groups:
            group["lr"] = lr_at(t, config, method)
        x = nchw(inputs["images"][t]).to(dtype)
        y = torch.from_numpy(inputs["labels"][t].astype(np.int64))
        uniform = nchw(inputs["uniform"][t]).to(dtype)
        normal = nchw(inputs["normal"][t]).to(dtype)
        optimizer.zero_grad()
        loss, reported = REFERENCE_STEPS[method](
            student=student, teacher=teacher, x=x, y=y, uniform=uniform, normal=normal,
            t=t, config=config, inputs=inputs, F=F, torch=torch, kl_sum=kl_sum,
            sign_ascent=sign_ascent, features_and_logits=features_and_logits,
            attack_steps=config["attack_steps"], **extra)
        loss.backward()
        optimizer.step()
        if method.startswith("gacd"):
            gacd_update_banks(torch, F, extra, inputs, t, method)
        losses.append(float(reported))
    final = state_arrays(student)
    if method.startswith("gacd"):
        for name, linear in extra["heads"].items():
            final[f"{name}/kernel"] = linear.weight.detach().numpy().T.copy()
            final[f"{name}/bias"] = linear.bias.detach().numpy().copy()
        final["student_bank/bank"] = extra["banks"]["student"].numpy()
        final["student_bank/log_z"] = np.float64(extra["log_z"]["student"])
        if method == "gacd":
            final["teacher_bank/bank"] = extra["banks"]["teacher"].numpy()
            final["teacher_bank/log_z"] = np.float64(extra["log_z"]["teacher"])
    return losses, final


# Each reference step returns (the loss to differentiate, the value to report).


def ref_natural(student, x, y, F, **_):
    # Plain cross-entropy on natural images, network in training mode
    # (boyellow/AdaAD main.py:291,302-304 "Plain_Clean").
    loss = F.cross_entropy(student(x), y)
    return loss, loss.item()


def _madry_pgd(student, x, y, uniform, F, torch, sign_ascent, attack_steps, training):
    # Madry et al.'s attack (MadryLab/cifar10_challenge pgd_attack.py:43-61):
    # a uniform start in the eps-ball clipped to the image range (:46-48),
    # then signed steps of the summed cross-entropy (:26-27,41,53-56; model.py
    # :94-96), projected onto the ball and the range (:58-59).
    # training=True: as Madry's TF code runs. Its attack differentiates the
    # training graph (train.py:41,57: one Model(mode='train')), whose batch
    # norm (model.py:100-110, is_training, updates_collections=None) uses batch
    # statistics and moves the running averages at every run: here the
    # student in training mode, each iterate's forward updating them.
    # training=False: the network in eval mode, as the PyTorch codes make
    # their Madry attack (boyellow/AdaAD AT_helper.py:63-64, BN_eval=True;
    # TRADES trades.py:28) and as gacd_tf does by default.
    student.train(training)
    start = torch.clamp(x + uniform, 0.0, 1.0)
    x_adv = sign_ascent(lambda z: F.cross_entropy(student(z), y, reduction="sum"), start, x,
                        EPS, STEP, attack_steps)
    student.train()
    return x_adv


def ref_pgd_at(student, x, y, uniform, F, torch, sign_ascent, attack_steps, training=True,
               **_):
    # PGD-AT as Madry's code runs: the attack in training mode (above).
    x_adv = _madry_pgd(student, x, y, uniform, F, torch, sign_ascent, attack_steps, training)
    # The update sees only the adversarial batch (cifar10_challenge
    # train.py:110-111,137) with the mean cross-entropy (model.py:97, train.py:51).
    loss = F.cross_entropy(student(x_adv), y)
    return loss, loss.item()


def ref_aft(**kwargs):
    # AFT (SPEC "GACD": PGD-AT at a small constant rate; no official code):
    # Madry's step with the attack in eval mode, as gacd-distill runs it.
    return ref_pgd_at(training=False, **kwargs)


def ref_trades(student, x, y, normal, F, torch, kl_sum, sign_ascent, attack_steps, **_):
    # yaodongyu/TRADES trades.py:17-84 with beta = 6 (train_trades_cifar10.py:36).
    student.eval()  # :28
    x_start = x + 0.001 * normal  # :31, not clipped
    target = None

    def objective(z):
        # :36-37: KL(softmax(f(x)) || softmax(f(z))) summed; f(x) recomputed each time.
        return kl_sum(F.log_softmax(student(z), dim=1), F.softmax(student(x), dim=1))

    x_adv = sign_ascent(objective, x_start, x, EPS, STEP, attack_steps)
    student.train()  # :73
    x_adv = torch.clamp(x_adv, 0.0, 1.0)  # :75
    logits = student(x)  # :79
    loss_natural = F.cross_entropy(logits, y)  # :80
    # :81-82: the KL's target softmax(f(x)) is a second natural pass, with gradient.
    loss_robust = (1.0 / len(x)) * kl_sum(F.log_softmax(student(x_adv), dim=1),
                                          F.softmax(student(x), dim=1))
    del target
    loss = loss_natural + 6.0 * loss_robust
    return loss, loss.item()


def ref_kd(student, teacher, x, y, F, torch, kl_sum, **_):
    # RepDistiller: the student forward (helper/loops.py:114), the teacher's
    # under no_grad, CE (:120) and DistillKL (:121; distiller_zoo/KD.py:13-17:
    # T^2 * KL summed over classes / batch), combined as gamma CE + alpha KL
    # (:184) with the README's KD setting -r 0.1 -a 0.9, T = 4.
    logit_s = student(x)
    with torch.no_grad():
        logit_t = teacher(x)
    temperature = 4.0
    kl = kl_sum(F.log_softmax(logit_s / temperature, dim=1),
                F.softmax(logit_t / temperature, dim=1)) * temperature**2 / len(x)
    loss = 0.1 * F.cross_entropy(logit_s, y) + 0.9 * kl
    return loss, loss.item()


def ref_ard(student, teacher, x, y, uniform, F, torch, attack_steps, **_):
    # goldblum/AdversariallyRobustDistillation main.py. The whole step runs
    # with the student in training mode (net.train(), :118): its PGD
    # iterates use batch statistics and move the running averages.
    x_adv = x.detach() + uniform  # :69-70, the start is not clipped
    for _ in range(attack_steps):  # :71-78
        x_adv.requires_grad_()
        with torch.enable_grad():
            value = F.cross_entropy(student(x_adv), y, reduction="sum")  # :74
        grad = torch.autograd.grad(value, [x_adv])[0]
        x_adv = x_adv.detach() + STEP * torch.sign(grad.detach())  # :76
        x_adv = torch.clamp(torch.min(torch.max(x_adv, x - EPS), x + EPS), 0.0, 1.0)  # :77-78
    outputs = student(x_adv)  # :79, the forward the loss uses (training mode)
    with torch.no_grad():
        teacher_outputs = teacher(x)  # :125 (the teacher is in eval mode, :111)
    basic_outputs = student(x)  # :126, run even at alpha = 1
    alpha, temperature = 1.0, 30.0  # :23, :26
    # :113,127: nn.KLDivLoss() (its then default) averages over batch *and* classes.
    kl = F.kl_div(F.log_softmax(outputs / temperature, dim=1),
                  F.softmax(teacher_outputs / temperature, dim=1), reduction="none").mean()
    loss = (alpha * temperature * temperature * kl
            + (1.0 - alpha) * F.cross_entropy(basic_outputs, y))
    return loss, loss.item()


def ref_rslad(student, teacher, x, normal, F, torch, kl_sum, sign_ascent, attack_steps, **_):
    # zibojia/RSLAD resnet18_rslad_cifar10.py:52-65 and rslad_loss.py:26-59.
    with torch.no_grad():
        teacher_logits = teacher(x)  # :53-54
    student.eval()  # rslad_loss.py:37
    x_start = x + 0.001 * normal  # :40, not clipped
    target = F.softmax(teacher_logits, dim=1)
    x_adv = sign_ascent(lambda z: kl_sum(F.log_softmax(student(z), dim=1), target),  # :45-47
                        x_start, x, EPS, STEP, attack_steps)
    student.train()  # :53
    adv_logits = student(torch.clamp(x_adv, 0.0, 1.0))  # :55,58
    nat_logits = student(x)  # resnet18_rslad_cifar10.py:58

    def official(log_q):
        # :38-40 kl_loss(a, b) = -a b + log(b + 1e-5) b, then torch.mean over
        # batch and classes (:61-62).
        return torch.mean(-log_q * target + torch.log(target + 1e-5) * target)

    def without_shift(log_q):
        # The same without the 1e-5: the term only shifts the value (its
        # gradient is zero: target is a constant); gacd_tf leaves it out.
        return torch.mean(torch.xlogy(target, target) - log_q * target)

    log_adv, log_nat = F.log_softmax(adv_logits, dim=1), F.log_softmax(nat_logits, dim=1)
    loss = 5 / 6.0 * official(log_adv) + 1 / 6.0 * official(log_nat)  # :63
    reported = 5 / 6.0 * without_shift(log_adv) + 1 / 6.0 * without_shift(log_nat)
    return loss, reported.item()


def _adaad_point(student, teacher, x, normal, F, torch, attack_steps, eps=EPS, step=STEP):
    # boyellow/AdaAD AT_helper.py:8-48 (the same function in HongsinLee/saad
    # attacks.py:197-237): both networks in eval mode (:20-24), start x +
    # 0.001 N(0, 1) not clipped (:26-27), KL(T(z) || S(z)) summed with the
    # gradient through both networks (:33-35), signed steps projected
    # (:37-40), back to training mode and clamped (:42-47).
    student.eval()
    teacher.eval()
    x_adv = x.detach() + 0.001 * normal
    for _ in range(attack_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            value = F.kl_div(F.log_softmax(student(x_adv), dim=1),
                             F.softmax(teacher(x_adv), dim=1), reduction="sum")
        grad = torch.autograd.grad(value, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)
    student.train()
    return torch.clamp(x_adv, 0.0, 1.0).detach()


def ref_adaad(student, teacher, x, normal, F, torch, attack_steps, **_):
    # boyellow/AdaAD main.py:326-353, the CIFAR-10 branch.
    x_adv = _adaad_point(student, teacher, x, normal, F, torch, attack_steps)  # :327-328
    ori_outputs = student(x)  # :333, the natural pass first
    adv_outputs = student(x_adv)  # :334
    with torch.no_grad():
        t_ori, t_adv = teacher(x), teacher(x_adv)  # :336-339
    alpha = 1.0  # --AdaAD_alpha, :41
    # :342-345: nn.KLDivLoss() (its then default: the mean over batch and classes).
    kl1 = F.kl_div(F.log_softmax(adv_outputs, dim=1), F.softmax(t_adv, dim=1),
                   reduction="none").mean()
    kl2 = F.kl_div(F.log_softmax(ori_outputs, dim=1), F.softmax(t_ori, dim=1),
                   reduction="none").mean()
    loss = alpha * kl1 + (1 - alpha) * kl2  # :353
    return loss, loss.item()


def ref_igdm(student, teacher, x, normal, t, config, F, torch, attack_steps, **_):
    # HongsinLee/saad igdm.py:45-61. Its call (:49) passes step_size=8/255 and
    # epsilon=2/255; gacd_tf defaults to AdaAD's 2/255 and 8/255 (its
    # flags/table*/*_igdm_code.cfg give the call's), and so does this comparison.
    x_plus = _adaad_point(student, teacher, x, normal, F, torch, attack_steps)
    with torch.no_grad():
        delta = x_plus - x  # :52
        teacher_plus = teacher(x_plus)  # :53
        teacher_minus = teacher(x - delta)  # :54
    student_plus = student(x + delta)  # :55
    student_minus = student(x - delta)  # :56
    # :40 KLDivLoss(reduction="batchmean"); :57-59; the ramp epoch / 200 for
    # its 200 epochs is epoch / E here, E = the steps (one step per epoch).
    igdm = F.kl_div(F.log_softmax(student_plus - student_minus, dim=1),
                    F.softmax(teacher_plus - teacher_minus, dim=1), reduction="batchmean")
    kl = F.kl_div(F.log_softmax(student_plus, dim=1), F.softmax(teacher_plus, dim=1),
                  reduction="batchmean")
    loss = kl + 1.0 * ((t + 1) / config["steps"]) * igdm
    return loss, loss.item()


def ref_gacd(student, teacher, x, y, uniform, t, config, inputs, F, torch, features_and_logits,
             heads, banks, log_z, method="gacd", **_):
    # No official code: SPEC "GACD" and the paper (Algorithm 1; "Construction
    # of Sample Set"; "Estimation Model h", Eq. 9/10).
    # gacd: ours (two-sided, Z, CE on x+); gacd_one_sided; gacd_paper: Eq. 9/10 as
    # written (one-sided, no Z: h = e^{s/T} / (e^{s/T} + k/M), no CE term).
    two_sided, paper = method == "gacd", method == "gacd_paper"
    # Positives: one PGD step of size eps against the student, ascending the
    # entropic OT distance between the student's features of the clean and
    # of the adversarial batch (Feature Scattering's attack, with features).
    student.eval()
    with torch.no_grad():
        clean = features_and_logits(student, x)[0]

    def cost(a, b):
        # C_ij = max(0, 1 - cos(a_i, b_j)), norms floored at 1e-6 (CosineSimilarity's eps).
        na = torch.sqrt(torch.clamp((a * a).sum(1), min=1e-12))
        nb = torch.sqrt(torch.clamp((b * b).sum(1), min=1e-12))
        return torch.relu(1.0 - (a @ b.t()) / (na[:, None] * nb[None, :]))

    def plan(c, reg=0.01, iters=100, threshold=0.1):
        # Log-domain Sinkhorn, uniform marginals, alternating updates of the
        # dual potentials; stop when sum |u - u_prev| < threshold.
        n, m = c.shape
        u, v = torch.zeros(n), torch.zeros(m)
        for _ in range(iters):
            u_new = reg * (-np.log(n) - torch.logsumexp((-c + u[:, None] + v[None, :]) / reg,
                                                          1)) + u
            v_new = reg * (-np.log(m) - torch.logsumexp((-c + u_new[:, None] + v[None, :])
                                                          / reg, 0)) + v
            err = (u_new - u).abs().sum()
            u, v = u_new, v_new
            if err < threshold:
                break
        return torch.exp((-c + u[:, None] + v[None, :]) / reg)

    def ot_distance(z):
        c = cost(clean, features_and_logits(student, z)[0])
        # The plan is held fixed (its gradient is not taken): gacd_tf's
        # documented choice (sinkhorn.py); Feature Scattering differentiates
        # through the iterations.
        return (plan(c.detach()) * c).sum()

    # Madry's start (cifar10_challenge pgd_attack.py:47-48): uniform, clipped.
    x_adv = torch.clamp(x + uniform, 0.0, 1.0)
    x_adv.requires_grad_()
    grad = torch.autograd.grad(ot_distance(x_adv), [x_adv])[0]
    x_pos = torch.clamp(torch.min(torch.max(x_adv.detach() + EPS * torch.sign(grad), x - EPS),
                                  x + EPS), 0.0, 1.0).detach()
    student.train()
    # Teacher on x+ (Algorithm 1's t+ = f_T(x+)); weight w = softmax(z_T)[y].
    with torch.no_grad():
        f_t, z_t = features_and_logits(teacher, x_pos)
        w = F.softmax(z_t, dim=1).gather(1, y[:, None])[:, 0]
    f_s, z_s = features_and_logits(student, x_pos)
    e_s = F.normalize(heads["student_embed"](f_s), dim=1)
    e_t = F.normalize(heads["teacher_embed"](f_t), dim=1)
    negatives = torch.from_numpy(inputs["negatives"][t].astype(np.int64))
    k, num_data = negatives.shape[1], inputs["student_bank"].shape[0]

    def nce(anchor, positive, bank, name):
        # Scores: positive <a_i, p_i> / T, negatives <a_i, bank[n_ij]> / T,
        # computed by gathering the bank rows ([B, k, d]).
        pos = (anchor * positive).sum(1) / GACD_T
        neg = torch.einsum("bd,bkd->bk", anchor, bank[negatives]) / GACD_T
        if paper:
            log_z[name] = 0.0  # no Z
        elif name not in log_z:
            # Z = mean(exp(scores)) * M over the first batch's B (k + 1) scores, then fixed.
            scores = torch.cat([pos[:, None], neg], 1).detach()
            log_z[name] = float(torch.log(torch.exp(scores).mean() * num_data))
        noise = k / num_data
        p_pos, p_neg = torch.exp(pos - log_z[name]), torch.exp(neg - log_z[name])
        h_pos, h_neg = p_pos / (p_pos + noise), p_neg / (p_neg + noise)  # h = P / (P + k/M)
        per_example = torch.log(h_pos) + torch.log(1.0 - h_neg).sum(1)
        return -(w * per_example).mean()

    loss_nce = nce(e_t, e_s, banks["student"], "student")
    if two_sided:
        loss_nce = loss_nce + nce(e_s, e_t, banks["teacher"], "teacher")
    loss = 0.8 * loss_nce + (0.0 if paper else 1.0) * F.cross_entropy(z_s, y)
    heads["_embeddings"] = (e_s.detach(), e_t.detach())
    return loss, loss.item()


def ref_gacd_one_sided(**kwargs):
    return ref_gacd(method="gacd_one_sided", **kwargs)


def ref_gacd_paper(**kwargs):
    return ref_gacd(method="gacd_paper", **kwargs)


def gacd_update_banks(torch, F, extra, inputs, t, method):
    """After the step: bank[idx] <- l2norm(m bank[idx] + (1 - m) e) (SPEC "Memory bank")."""
    e_s, e_t = extra["heads"].pop("_embeddings")
    idx = torch.from_numpy(inputs["indices"][t].astype(np.int64))
    pairs = [("student", e_s)] + ([("teacher", e_t)] if method == "gacd" else [])
    for name, e in pairs:
        bank = extra["banks"][name]
        bank[idx] = F.normalize(GACD_MOMENTUM * bank[idx] + (1 - GACD_MOMENTUM) * e, dim=1)


REFERENCE_STEPS = {"natural": ref_natural, "pgd_at": ref_pgd_at, "aft": ref_aft,
                   "trades": ref_trades, "kd": ref_kd, "ard": ref_ard, "rslad": ref_rslad,
                   "adaad": ref_adaad, "igdm": ref_igdm, "gacd": ref_gacd,
                   "gacd_one_sided": ref_gacd_one_sided, "gacd_paper": ref_gacd_paper}


# ----------------------------------------------------------------------
# Driver: inputs, the reference subprocess, our side, the comparison.


def data_dir(args):
    """--data_dir, else $GACD_DATA_DIR, else ../shared/data/cifar10 beside the repository."""
    if args.data_dir:
        return args.data_dir
    if os.environ.get("GACD_DATA_DIR"):
        return os.environ["GACD_DATA_DIR"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(os.path.dirname(root), "shared", "data", "cifar10")


def find_robustbench(args):
    """The robustbench package folder: the flag, this Python's, or the reference Python's."""
    from gacd_tf.models.robustbench_zoo import robustbench_source_dir

    if args.robustbench_dir:
        return args.robustbench_dir
    if robustbench_source_dir():
        return robustbench_source_dir()
    if args.reference_python:
        probe = ("import importlib.util as u; s = u.find_spec('robustbench'); "
                 "print(next(iter(s.submodule_search_locations)) if s else '')")
        found = subprocess.run([args.reference_python, "-c", probe], capture_output=True,
                               text=True).stdout.strip()
        if found:
            return found
    raise SystemExit("robustbench not found: pass --robustbench_dir (or set $ROBUSTBENCH_DIR) "
                     "to the folder of the robustbench package, which holds "
                     "model_zoo/architectures/wide_resnet.py")


def write_inputs(args, methods):
    from gacd_tf.data import load_split

    rng = np.random.default_rng(args.seed)
    split = load_split("cifar10", "train", data_dir(args), examples=args.num_data)
    images = split.images.astype(np.float32) / 255.0
    labels = split.labels.astype(np.int32)
    order = rng.permutation(len(labels))
    need = args.steps * args.batch_size
    if need > len(order):
        raise SystemExit(f"--steps x --batch_size = {need} exceeds --num_data={len(order)}")
    indices = order[:need].reshape(args.steps, args.batch_size).astype(np.int32)
    shape = (args.steps, args.batch_size, 32, 32, 3)
    inputs = {
        "images": images[indices], "labels": labels[indices], "indices": indices,
        "train_labels": labels,
        "uniform": rng.uniform(-EPS, EPS, shape).astype(np.float32),
        "normal": rng.standard_normal(shape).astype(np.float32),
    }
    # GACD: negatives from other classes (distinct, fixed for both sides),
    # heads (Glorot uniform, zero bias, as keras Dense) and banks U(-s, s).
    negatives = np.zeros((args.steps, args.batch_size, GACD_K), np.int32)
    for t in range(args.steps):
        for i, anchor in enumerate(inputs["labels"][t]):
            pool = np.flatnonzero(labels != anchor)
            negatives[t, i] = rng.choice(pool, GACD_K, replace=False)
    inputs["negatives"] = negatives
    for name, width in (("student_embed", 64 * STUDENT["widen_factor"]),
                        ("teacher_embed", 64 * TEACHER["widen_factor"])):
        limit = np.sqrt(6.0 / (width + GACD_EMBED_DIM))
        inputs[f"{name}_kernel"] = rng.uniform(-limit, limit,
                                               (width, GACD_EMBED_DIM)).astype(np.float32)
        inputs[f"{name}_bias"] = np.zeros(GACD_EMBED_DIM, np.float32)
    bound = 1.0 / np.sqrt(GACD_EMBED_DIM / 3.0)
    for name in ("student_bank", "teacher_bank"):
        inputs[name] = rng.uniform(-bound, bound, (len(labels), GACD_EMBED_DIM)).astype(
            np.float32)
    os.makedirs(args.output_dir, exist_ok=True)
    np.savez(os.path.join(args.output_dir, "inputs.npz"), **inputs)
    config = {"methods": methods, "steps": args.steps, "seed": args.seed, "dtype": args.dtype,
              "learning_rate": args.learning_rate, "aft_learning_rate": args.aft_learning_rate,
              "decay_steps": [int(d) for d in args.decay_steps.split(",") if d],
              "weight_decay": args.weight_decay, "momentum": args.momentum,
              "attack_steps": args.attack_steps, "bn_running_variance": args.bn_running_variance,
              "robustbench_dir": find_robustbench(args)}
    with open(os.path.join(args.output_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return config, inputs


def run_reference(args):
    if not args.reference_python:
        raise SystemExit("--reference_python is required to run the reference side")
    command = [args.reference_python, os.path.abspath(__file__), "--role=reference",
               f"--output_dir={args.output_dir}", f"--threads={args.threads}"]
    print("reference:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


class _InjectedStart:
    """A norm whose random start is the given noise (the rest is the norm's own)."""

    def __init__(self, norm, noise):
        self._norm, self._noise = norm, noise

    def random_perturbation(self, x, eps, seed):
        del x, eps, seed
        return self._noise.value()

    def __getattr__(self, name):
        return getattr(self._norm, name)


class _FixedNegatives:
    """GACD's sampler replaced by the driver's negative indices of the current step."""

    def __init__(self, sampler, negatives):
        self._sampler, self._negatives = sampler, negatives

    def __call__(self, labels, k):
        del labels, k
        return self._negatives.value()

    def __getattr__(self, name):
        return getattr(self._sampler, name)


def inject_start(attack, kind, noise):
    """Makes ``attack`` start from ``noise``: PGD's own start code with the uniform
    draw replaced; for the Gaussian starts, x + start_std * noise (their start)."""
    if kind == "uniform":
        attack.norm = _InjectedStart(attack.norm, noise)
    else:
        attack.start = lambda x: x + attack.start_std * noise.value()


def our_trainer(method, student, teacher, args, config, inputs):
    from gacd_tf import methods as gm

    context = gm.MethodContext(seed=args.seed, weight_decay=args.weight_decay, eps=EPS,
                               step_size=STEP, train_attack_steps=args.attack_steps,
                               epochs=args.steps, steps_per_epoch=1)
    if method == "pgd_at":
        # PGD-AT as Madry's code runs (its attack in training mode).
        return gm.AdversarialTrainer(student, attack=context.attack(),
                                     weight_decay=args.weight_decay,
                                     attack_training_mode=args.pgd_at_attack_mode == "training")
    if method == "aft":
        return gm.AdversarialTrainer(student, attack=context.attack(),
                                     weight_decay=args.weight_decay)
    if method == "trades":
        return gm.AdversarialTrainer(student, attack=context.attack(), trades_beta=6.0,
                                     weight_decay=args.weight_decay,
                                     trades_start=args.trades_start)
    if method == "natural":
        return gm.build("natural", student, context=context)
    settings = {}
    if method == "ard":
        settings = dict(ard_attack_training_mode=True)  # "ARD as its code runs"
    if method.startswith("gacd"):
        settings = dict(nce_k=GACD_K, nce_t=GACD_T, nce_momentum=GACD_MOMENTUM,
                        embed_dim=GACD_EMBED_DIM,
                        nce_form="two_sided" if method == "gacd" else "one_sided")
        if method == "gacd_paper":  # the paper's literal loss (cpu_long's paper-literal row)
            settings.update(nce_normaliser="paper", w_ce=0.0)
        return gm.build("gacd", student, teacher, train_labels=inputs["train_labels"],
                        context=context, **settings)
    return gm.build(method, student, teacher, context=context, **settings)


def our_side(args, config, inputs, methods):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    from gacd_tf.models.torch_import import import_torch_model
    from gacd_tf.training import sgd_optimizer

    dtype = args.dtype
    if dtype == "float64":
        # Before anything is built: trainers' heads, banks, optimizer slots
        # and rates follow floatx.
        keras.config.set_floatx("float64")
        check_float64_attacks()

    def load(name, options):
        state = dict(np.load(os.path.join(args.output_dir, name)))
        model = import_torch_model(state, ARCH, **options)
        return float64_twin(model) if dtype == "float64" else model

    teacher = load("init_teacher.npz", TEACHER)
    uniform = tf.Variable(tf.zeros(inputs["uniform"].shape[1:], dtype), trainable=False)
    normal = tf.Variable(tf.zeros(inputs["normal"].shape[1:], dtype), trainable=False)
    negatives = tf.Variable(tf.zeros(inputs["negatives"].shape[1:], tf.int32), trainable=False)
    results = {}
    for method in methods:
        start_time = time.time()
        student = load("init_student.npz", STUDENT)
        trainer = our_trainer(method, student, teacher, args, config, inputs)
        if method in START:
            kind = START[method]
            if method == "trades" and args.trades_start == "attack":
                kind = "uniform"
            inject_start(trainer.attack, kind, uniform if kind == "uniform" else normal)
        if method.startswith("gacd"):
            trainer.sampler = _FixedNegatives(trainer.sampler, negatives)
            for head in ("student_embed", "teacher_embed"):
                getattr(trainer, head).set_weights([inputs[f"{head}_kernel"],
                                                    inputs[f"{head}_bias"]])
            trainer.student_bank.bank.assign(inputs["student_bank"])
            if trainer.teacher_bank is not None:
                trainer.teacher_bank.bank.assign(inputs["teacher_bank"])
        # The programs' optimizer (gacd_tf.programs.common.optimizer_from_flags).
        if method == "aft":
            optimizer_args = dict(schedule="constant")
            rate = args.aft_learning_rate
        else:
            optimizer_args = dict(schedule="step", decay_epochs=config["decay_steps"])
            rate = args.learning_rate
        if args.sgd_form:
            optimizer_args["sgd_form"] = args.sgd_form
        trainer.compile(optimizer=sgd_optimizer(rate, steps_per_epoch=1, epochs=args.steps,
                                                momentum=args.momentum, **optimizer_args))
        losses, rates = [], []
        for t in range(args.steps):
            uniform.assign(inputs["uniform"][t])
            normal.assign(inputs["normal"][t])
            negatives.assign(inputs["negatives"][t])
            rates.append(float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate)))
            logs = trainer.train_on_batch(inputs["images"][t].astype(dtype), inputs["labels"][t],
                                          sample_weight=inputs["indices"][t], return_dict=True)
            losses.append(float(logs["loss"]))
        weights = {}
        reference = load_reference_weights(args, method, student)
        initial = load("init_student.npz", STUDENT).weights
        for variable, ref_value, start in zip(student.weights, reference["student"], initial):
            weights[variable.path] = (np.asarray(variable.numpy()), ref_value, start.numpy())
        starts = initial_extras(inputs)
        if method.startswith("gacd"):
            ref = reference["raw"]
            for head in ("student_embed", "teacher_embed"):
                layer = getattr(trainer, head)
                for part, value in (("kernel", layer.kernel), ("bias", layer.bias)):
                    name = f"{head}/{part}"
                    weights[name] = (value.numpy(), ref[name], starts[name])
            banks = [("student_bank", trainer.student_bank)]
            if trainer.teacher_bank is not None:
                banks.append(("teacher_bank", trainer.teacher_bank))
            for name, bank in banks:
                weights[f"{name}/bank"] = (bank.bank.numpy(), ref[f"{name}/bank"],
                                           starts[f"{name}/bank"])
                weights[f"{name}/log_z"] = (bank.log_z.numpy(), ref[f"{name}/log_z"], 0.0)
        worst, worst_name = largest_difference(weights)
        # Round-off's scale: the reference's float32 run against its float64 run.
        ref32 = dict(np.load(os.path.join(args.output_dir, f"reference_{method}.npz")))
        ref64 = dict(np.load(os.path.join(args.output_dir, f"reference_{method}_float64.npz")))
        init = dict(np.load(os.path.join(args.output_dir, "init_student.npz")))
        init.update(starts)
        roundoff, roundoff_name = largest_difference(
            {k: (ref32[k], ref64[k], init.get(k, 0.0)) for k in ref64})
        results[method] = {"losses": losses, "rates": rates, "weight_difference": worst,
                           "worst_weight": worst_name, "weight_roundoff": roundoff,
                           "worst_roundoff_weight": roundoff_name,
                           "seconds": round(time.time() - start_time, 2)}
        print(f"ours: {method} losses {['%.6g' % v for v in losses]} "
              f"({results[method]['seconds']} s)", flush=True)
    return results


def initial_extras(inputs):
    """GACD's starting heads and banks, by the names the weights are compared under."""
    starts = {}
    for head in ("student_embed", "teacher_embed"):
        starts[f"{head}/kernel"] = inputs[f"{head}_kernel"]
        starts[f"{head}/bias"] = inputs[f"{head}_bias"]
    for name in ("student_bank", "teacher_bank"):
        starts[f"{name}/bank"] = inputs[name]
    return starts


def largest_difference(triples):
    """The largest relative difference of two final weights, and its tensor.

    Over ``{name: (a, b, start)}``: ``max|a - b| / max|b - start|``, the
    difference of the two sides' final values relative to how far the
    reference moved that tensor in the run (a batch-norm beta starting at 0
    and a kernel far from 0 are judged alike); tensors that did not move
    (e.g. bank rows never indexed are not a tensor of their own) count with
    a floor of 1e-12."""
    worst, worst_name = 0.0, None
    for name, (a, b, start) in triples.items():
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        moved = float(np.max(np.abs(b - np.asarray(start, np.float64))))
        difference = float(np.max(np.abs(a - b))) / max(moved, 1e-12)
        if difference >= worst:
            worst, worst_name = difference, name
    return worst, worst_name


def check_float64_attacks():
    """Exits with a message if gacd_tf's PGD cannot take a float64 batch."""
    import tensorflow as tf

    from gacd_tf.attacks import PGD

    try:
        PGD(steps=0, random_start=False)(lambda z, training=False: z, tf.zeros([1, 2], tf.float64),
                                         tf.zeros([1], tf.int32))
    except (TypeError, ValueError) as error:
        raise SystemExit(f"--dtype=float64: gacd_tf's PGD does not take a float64 batch "
                         f"({str(error).splitlines()[0]}); gacd_tf/attacks/pgd.py and "
                         "gaussian_start_pgd.py must keep the batch's float dtype")


def float64_twin(model):
    """``model`` rebuilt with every layer (its input included) in float64, same weights.

    The zoo builds its input and logits layers in float32 (so they stay
    float32 under mixed precision); here every dtype of the config becomes
    float64, as ``gacd_tf.models.io.float32_copy`` does for float32."""
    import keras

    def to_float64(config):
        if isinstance(config, dict):
            if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
                return "float64"
            return {key: ("float64" if key == "dtype" and value == "float32"
                          else to_float64(value)) for key, value in config.items()}
        if isinstance(config, list):
            return [to_float64(item) for item in config]
        return config

    twin = model.__class__.from_config(to_float64(model.get_config()))
    twin.set_weights(model.get_weights())
    return twin


def load_reference_weights(args, method, student):
    """The reference's final weights in ``--dtype``: the student's in ``student.weights``
    order (through the importer, as the starting weights came), and the raw arrays."""
    from gacd_tf.models.torch_import import load_state_dict_into
    import keras

    suffix = "_float64" if args.dtype == "float64" else ""
    raw = dict(np.load(os.path.join(args.output_dir, f"reference_{method}{suffix}.npz")))
    state = {k: v for k, v in raw.items() if "/" not in k}

    def imported(arrays):
        fresh = keras.models.clone_model(student)
        load_state_dict_into(fresh, ARCH, arrays)
        return [np.asarray(w.numpy(), np.float64) for w in fresh.weights]

    if args.dtype == "float32":
        return {"student": imported(state), "raw": raw}
    # The importer stores float32 arrays (gacd_tf/models/torch_import.py), which
    # would round the float64 weights by 6e-8: import their float32 part and
    # the rest apart and add them (the importer only moves axes: linear).
    high = {k: v.astype(np.float32) for k, v in state.items()}
    low = {k: (v - high[k]).astype(np.float32) for k, v in state.items()}
    return {"student": [a + b for a, b in zip(imported(high), imported(low))], "raw": raw}


def compare(args, methods, ours, reference):
    rows, failed = [], []
    float64 = args.dtype == "float64"
    # The other precision's reference loss beside the compared one.
    other, width = ("ref. f32 loss", 18) if float64 else ("ref. f64 loss", 14)
    digits = 14 if float64 else 8
    print()
    print(f"{'method':<15} {'steps':>5} {'step':>4} {'lr':>8} {'ours loss':>{width}} "
          f"{'reference loss':>{width}} {'rel. diff':>9} {other:>{width}} {'f32-f64':>9}")
    for method in methods:
        mine, ref = ours[method], reference["methods"][method]
        loss_diffs, roundoffs = [], []
        compared = ref["losses_float64"] if float64 else ref["losses"]
        for t, (a, b, r32, r64) in enumerate(zip(mine["losses"], compared, ref["losses"],
                                                  ref["losses_float64"])):
            difference = abs(a - b) / max(abs(b), 1e-12)
            roundoff = abs(r32 - r64) / max(abs(r64), 1e-12)
            loss_diffs.append(difference)
            roundoffs.append(roundoff)
            c = r32 if float64 else r64
            print(f"{method:<15} {args.steps:>5} {t:>4} {mine['rates'][t]:>8.4g} "
                  f"{a:>{width}.{digits}g} {b:>{width}.{digits}g} {difference:>9.2e} "
                  f"{c:>{width}.{digits}g} {roundoff:>9.2e}")
        worst_loss = max(loss_diffs)
        weight_bound = (args.weight_tolerance if float64 else
                        max(args.weight_tolerance, args.roundoff_factor * mine["weight_roundoff"]))
        loss_bound = (max(args.tolerance, TRAINING_MODE_TOLERANCE)
                      if not float64 and method in TRAINING_MODE_ATTACKS else args.tolerance)
        ok = worst_loss <= loss_bound and mine["weight_difference"] <= weight_bound
        if not ok:
            failed.append(method)
        rows.append((method, args.steps, worst_loss, mine["weight_difference"],
                     max(roundoffs), mine["weight_roundoff"], "ok" if ok else "DIFFERS"))
    print()
    weights_rule = (f"{args.weight_tolerance:g}" if float64 else
                    f"max({args.weight_tolerance:g}, {args.roundoff_factor:g} x round-off)")
    print(f"| method | steps | largest per-step loss difference | largest final weight "
          f"difference | PyTorch f32 vs f64: loss | PyTorch f32 vs f64: weights | verdict "
          f"({args.dtype}: loss {args.tolerance:g}"
          f"{'' if float64 else f', {TRAINING_MODE_TOLERANCE:g} for ' + ', '.join(TRAINING_MODE_ATTACKS)}"
          f"; weights {weights_rule}) |")
    print("|---|---|---|---|---|---|---|")
    for method, steps, loss_diff, weight_diff, loss_r, weight_r, verdict in rows:
        print(f"| {method} | {steps} | {loss_diff:.2e} | {weight_diff:.2e} | {loss_r:.2e} | "
              f"{weight_r:.2e} | {verdict} |")
    return rows, failed


def main(argv=None):
    args = parse_args(argv)
    if args.role == "reference":
        reference_main(args)
        return 0
    methods = method_list(args.methods)
    sides = args.sides.split(",")
    config, inputs = write_inputs(args, methods)
    if "reference" in sides:
        run_reference(args)
    with open(os.path.join(args.output_dir, "reference.json")) as f:
        reference = json.load(f)
    missing = [m for m in methods if m not in reference["methods"]]
    if missing:
        raise SystemExit(f"the reference result in {args.output_dir} lacks {missing}: rerun "
                         "with --sides=reference,ours")
    ours = our_side(args, config, inputs, methods)
    rows, failed = compare(args, methods, ours, reference)
    with open(os.path.join(args.output_dir, "parity.json"), "w") as f:
        json.dump({"config": config, "ours": ours, "reference": reference,
                   "rows": rows, "tolerance": args.tolerance}, f, indent=1)
    if failed:
        print(f"beyond the tolerance: {', '.join(failed)}")
        return 1
    print("every method within the tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
