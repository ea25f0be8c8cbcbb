"""Writes the distillation flagfiles of the paper's experiments (run from the repo root).

    python flags/generate.py

Every cell of Table 1 (CIFAR-10) and Table 2 (CIFAR-100) gets one flagfile per
method of METHOD_FLAGS (the gacd files run AFT too, so their metrics.json holds
both the "GACD" row, under before_aft, and the "GACD+AFT" row). Beside them,
the control rows (SPEC "Adversarial fine-tuning": KD+AFT, ARD+AFT, and
natural+AFT, a student trained without a teacher) and "ARD as its code runs"
(SPEC "ARD baseline"). Ablations (no reweighting; reweighted ARD; the
one-sided NCE form) and the k / T sweeps of Figure 2 follow.
Each file includes flags/distill_common.cfg and the teacher it needs is the
output of the matching flags/teacher_*.cfg run. tests/test_flagfiles.py checks
that the committed files equal this script's output and that they parse.
"""

import pathlib
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent
TEACHER = "runs/teacher_{dataset}_{teacher}/model.keras"
TABLES = {
    # Table 1 lists the second CIFAR-10 teacher as "WRN-34-2" while the text and
    # Table 3 say WRN-34-10; we follow the text.
    "table1": ("cifar10", ["resnet18", "wrn_34_10"], ["resnet18", "wrn_34_2", "mobilenetv2"]),
    "table2": ("cifar100", ["resnet56", "wrn_40_2"], ["resnet32", "wrn_16_2", "mobilenetv2"]),
}
METHOD_FLAGS = {"kd": ["# Weight decay 5e-4 (distill_common.cfg) is RepDistiller's (train_student.py),",
                       "# the KD code this row follows."],
                "ard": ["# Weight decay 5e-4 (distill_common.cfg) is ours, not ARD's: its main.py",
                        "# uses 2e-4 (the *_ard_code.cfg row runs ARD as its code does)."],
                "gacd": ["# Weight decay 5e-4 (distill_common.cfg) is RepDistiller's (CRD, on which",
                         "# GACD builds); the GACD paper gives none.", "--aft_epochs=10"],
                "rslad": ["# RSLAD's official recipe (zibojia/RSLAD, resnet18_rslad_cifar10.py):",
                          "# 300 epochs, lr x0.1 after epochs 215, 260, 285, weight decay 2e-4.",
                          "--epochs=300", "--lr_decay_epochs=215,260,285", "--weight_decay=2e-4"],
                "adaad": ["# AdaAD's official recipe (boyellow/AdaAD, main.py and its README):",
                          "# 200 epochs, lr x0.1 at epochs 100, 150, weight decay 5e-4.",
                          "--epochs=200", "--lr_decay_epochs=100,150", "--weight_decay=5e-4"],
                "igdm": ["# IGDM's official recipe (HongsinLee/saad, igdm.py and args.py): 200",
                         "# epochs, lr x0.1 at epochs 100, 150, weight decay 2e-4, igdm_alpha 1",
                         "# ramped as epoch/200; the inner attack here has AdaAD's defaults",
                         "# (step 2/255, eps 8/255) unless set below; *_igdm_code.cfg has the",
                         "# official call's.",
                         "--epochs=200", "--lr_decay_epochs=100,150", "--weight_decay=2e-4"]}


# Control rows beside each GACD+AFT row: the same AFT budget after other methods.
AFT = ["--aft_epochs=10"]
CONTROLS = {  # file-name suffix -> (method, flags)
    "kd_aft": ("kd", AFT),
    "ard_aft": ("ard", AFT),
    # ARD's official code as it runs (SPEC "ARD baseline"): weight decay 2e-4, the lr
    # decays once (0.1 -> 0.01 at epoch 100 of 200), the student attack in training-mode
    # batch norm; CIFAR-100 batch 256 (added per dataset below).
    "ard_code": ("ard", ["# ARD as its official code runs (goldblum/AdversariallyRobust"
                         "Distillation, main.py): weight",
                         "# decay 2e-4, lr x0.1 once at epoch 100, the student attack in "
                         "training-mode batch norm.",
                         "--weight_decay=2e-4", "--lr_decay_epochs=100",
                         "--ard_attack_training_mode"]),
    # IGDM's inner attack as its official igdm.py calls it: adaad_inner_loss(step_size=8/255,
    # epsilon=2/255), the reverse of AdaAD's defaults (SPEC "Peer methods").
    "igdm_code": ("igdm", ["# The inner attack as the official igdm.py calls it: step 8/255, "
                           "eps 2/255.", "--igdm_eps=0.00784313725490196",
                           "--train_step_size=0.03137254901960784"]),
}


def cell(folder, dataset, teacher, student, method, extra=(), name=None, recipe=True):
    """A distillation row: the method's recipe (METHOD_FLAGS, unless ``recipe`` is
    False: ``extra`` then says where every setting comes from), then ``extra``."""
    name = name or f"{dataset}_{teacher}_to_{student}_{method}"
    lines = [
        f"# {folder}: {method} distillation of {student} from the {teacher} teacher on {dataset}.",
        f"# Run: gacd-distill --flagfile=flags/{folder}/{name}.cfg [--data_dir=DIR]",
        "--flagfile=flags/distill_common.cfg",
        f"--dataset={dataset}",
        f"--teacher={TEACHER.format(dataset=dataset, teacher=teacher)}",
        f"--arch={student}",
        f"--method={method}",
        f"--model_dir=runs/{folder}/{name}",
        *(METHOD_FLAGS[method] if recipe else []),
        *extra,
    ]
    return ROOT / folder / f"{name}.cfg", "\n".join(lines) + "\n"


def natural_cell(folder, dataset, student):
    """natural+AFT: the student trained by plain cross-entropy (no teacher), then AFT."""
    name = f"{dataset}_{student}_natural_aft"
    lines = [
        f"# {folder}: control row natural+AFT: {student} trained on natural {dataset} images by "
        "cross-entropy (no teacher), then the same AFT as the GACD+AFT rows.",
        f"# Run: gacd-distill --flagfile=flags/{folder}/{name}.cfg [--data_dir=DIR]",
        "--flagfile=flags/distill_common.cfg",
        f"--dataset={dataset}",
        f"--arch={student}",
        "--method=natural",
        f"--model_dir=runs/{folder}/{name}",
        *AFT,
    ]
    return ROOT / folder / f"{name}.cfg", "\n".join(lines) + "\n"


def controls(folder, dataset, teachers, students):
    files = []
    for teacher in teachers:
        for student in students:
            for suffix, (method, extra) in CONTROLS.items():
                if suffix == "ard_code" and dataset == "cifar100":
                    extra = [*extra, "# Batch 256 on CIFAR-100, as its code runs.",
                             "--batch_size=256"]
                # ARD's code row has its own recipe (METHOD_FLAGS' ARD comment says
                # 5e-4 is ours, which this row replaces).
                files.append(cell(folder, dataset, teacher, student, method, extra,
                                  name=f"{dataset}_{teacher}_to_{student}_{suffix}",
                                  recipe=suffix != "ard_code"))
    return files + [natural_cell(folder, dataset, student) for student in students]


def flagfiles():
    files = []
    for folder, (dataset, teachers, students) in TABLES.items():
        for teacher in teachers:
            for student in students:
                for method in METHOD_FLAGS:
                    files.append(cell(folder, dataset, teacher, student, method))
        files += controls(folder, dataset, teachers, students)
    # Paper "Influence of sample reweighting": ResNet-18 teacher, WRN-34-10 student.
    pair = ("cifar10", "resnet18", "wrn_34_10")
    files += [
        cell("ablations", *pair, "gacd"),
        cell("ablations", *pair, "gacd", ["--noreweight"],
             name="cifar10_resnet18_to_wrn_34_10_gacd_no_reweight"),
        cell("ablations", *pair, "ard"),
        cell("ablations", *pair, "ard", ["--reweight"],
             name="cifar10_resnet18_to_wrn_34_10_ard_reweighted"),
        # The paper-literal one-sided NCE form (the default is two-sided: SPEC).
        cell("ablations", *pair, "gacd", ["--nce_form=one_sided"],
             name="cifar10_resnet18_to_wrn_34_10_gacd_one_sided"),
    ]
    # Figure 2: ResNet-18 teacher and student on CIFAR-10.
    for k in (16, 64, 256, 1024, 4096, 16384):
        files.append(cell("sweeps", "cifar10", "resnet18", "resnet18", "gacd",
                          [f"--nce_k={k}"], name=f"nce_k_{k}"))
    for t in ("0.02", "0.05", "0.07", "0.1", "0.2"):
        files.append(cell("sweeps", "cifar10", "resnet18", "resnet18", "gacd",
                          [f"--nce_t={t}"], name=f"nce_t_{t}"))
    return files + reproduce_files()


# ----------------------------------------------------------------------------- gacd-reproduce
# Grids of gacd-reproduce (flags/reproduce/*.cfg) and the flagfiles they run.
THREAT = ["--eps=0.031372549", "--step_size=0.0078431373", "--attack=pgd", "--attack_steps=20"]


def text_file(path, lines):
    return ROOT / path, "\n".join(lines) + "\n"


def grid_file(name, comment, seeds, groups):
    """A gacd-reproduce grid: ``groups`` = [(name, teacher flagfile or None, [(label, value)])]."""
    lines = [*(f"# {line}" for line in comment),
             f"# Run: gacd-reproduce --grid=flags/reproduce/{name}.cfg --output_dir=DIR "
             "[--data_dir=DIR]", "", "[grid]", f"seeds = {', '.join(map(str, seeds))}"]
    for group, teacher, rows in groups:
        suffix = f" {group}" if group else ""
        if teacher:
            lines += ["", f"[teacher{suffix}]", f"flagfile = {teacher}"]
        lines += ["", f"[methods{suffix}]", *(f"{label} = {value}" for label, value in rows)]
    return text_file(f"reproduce/{name}.cfg", lines)


def with_controls(prefix, aft_rows):
    """Rows of AFT runs, each followed by its "before AFT" row: [(label, flagfile)] -> rows."""
    rows = []
    for label, flagfile, before in aft_rows:
        if before:
            rows.append((f"{prefix}{before}", f"before_aft of {prefix}{label}"))
        rows.append((f"{prefix}{label}", flagfile))
    return rows


def cpu_teacher(epochs, budget):
    """The flags of the CPU grids' teacher: ResNet-20, PGD-3 AT (step 2.5 eps / 3)."""
    return ["--dataset=cifar10", "--arch=resnet20", f"--epochs={epochs}", *budget,
            "--train_attack_steps=3", "--train_step_size=0.0261437908", "--seed=0"]


def reproduce_files():
    files = []
    # smoke: what the tests run (seconds per run on tiny data).
    smoke = "flags/reproduce/smoke"
    data = ["--dataset=cifar10", "--arch=resnet8", "--train_examples=200", "--val_examples=0",
            "--test_examples=100", "--batch_size=100", "--epochs=1", "--lr_schedule=constant",
            "--train_attack_steps=1", "--eps=0.031372549", "--step_size=0.0078431373",
            "--attack=pgd", "--attack_steps=1", "--checkpoint_every_steps=0", "--verbose=0"]
    files.append(text_file("reproduce/smoke/teacher.cfg", [
        "# gacd-reproduce smoke grid, the teacher: ResNet-8, 1 epoch of PGD-1 AT on 200 images.",
        *data, "--seed=0"]))
    files.append(text_file("reproduce/smoke/natural.cfg", [
        "# natural: cross-entropy on natural images (no teacher), 1 epoch.",
        *data, "--method=natural"]))
    files.append(text_file("reproduce/smoke/gacd_aft.cfg", [
        "# GACD (two-sided NCE), 1 epoch, then 1 epoch of AFT.",
        *data, "--method=gacd", "--nce_k=16", "--embed_dim=16", "--aft_epochs=1"]))
    files.append(grid_file("smoke", [
        "Smoke grid (the tests run it on tiny data): two methods, two seeds, one epoch each."],
        [0, 1], [("", f"{smoke}/teacher.cfg", with_controls("", [
            ("natural", f"{smoke}/natural.cfg", None),
            ("GACD+AFT", f"{smoke}/gacd_aft.cfg", "GACD")]))]))

    # cpu: a CPU-scale grid on a 10,000-image CIFAR-10 subset, every row the same budget.
    # Sized for 2 CPU cores: measured, the teacher 22 min and each seed about 50 min (7 runs),
    # with evaluation on fixed class-balanced test subsets, the same for every row.
    cpu = "flags/reproduce/cpu"
    budget = ["--train_examples=9500", "--val_examples=500", "--batch_size=128",
              "--learning_rate=0.1", "--momentum=0.9", "--weight_decay=5e-4",
              "--lr_schedule=cosine", *THREAT, "--test_examples=2000",
              "--final_autoattack_examples=200", "--verbose=2"]
    files.append(text_file("reproduce/cpu/teacher.cfg", [
        "# gacd-reproduce CPU-scale grid, the teacher: ResNet-20, Madry PGD-AT (PGD-3, step",
        "# 2.5 eps / 3) for 15 epochs on a class-balanced 10,000-image CIFAR-10 subset (9,500",
        "# for training, 500 held out for validation), cosine lr; PGD-20 on a class-balanced 2,000 of",
        "# the test split, AutoAttack (standard) on a class-balanced 200 of it.",
        *cpu_teacher(15, budget)]))
    files.append(text_file("reproduce/cpu/common.cfg", [
        "# gacd-reproduce CPU-scale grid, every student (same budget for every row): ResNet-8,",
        "# 5 epochs of its method on the teacher's 10,000 images (PGD-5 inner attacks where the",
        "# method has one), then 1 epoch of AFT (PGD-5 AT, lr 0.01); the rows without AFT are",
        "# these runs before their AFT. This file's optimiser (SGD 0.1, momentum 0.9, batch 128,",
        "# weight decay 5e-4: RepDistiller's, cosine lr) and PGD-5 inner attacks at 4/255 are",
        "# ours, for the 5-epoch budget; the official rows override them with their sources'",
        "# recipes. Validation PGD-20 on the 500 held-out images after every epoch. Same test",
        "# subsets as the teacher.",
        "--dataset=cifar10", "--arch=resnet8", "--epochs=5", *budget,
        "--train_attack_steps=5", "--train_step_size=0.0156862745", "--aft_epochs=1",
        "--aft_learning_rate=0.01"]))
    gacd = ["--method=gacd", "--nce_k=4096", "--nce_t=0.1", "--nce_momentum=0.5",
            "--embed_dim=128", "--w_nce=0.8", "--w_ce=1.0"]
    methods = {
        "natural_aft": ("natural+AFT: cross-entropy on natural images (no teacher), then AFT.",
                        ["--method=natural"]),
        "kd_aft": ("KD (a 0.9, T 4), then AFT.", ["--method=kd"]),
        "ard_aft": ("ARD (a 1, T 30, PGD-5 student attack), then AFT; weight decay 5e-4 and "
                    "cosine lr are this grid's, not ARD's (main.py: 2e-4, one decay at half).",
                    ["--method=ard"]),
        "gacd_two_sided_aft": ("GACD, two-sided NCE (the default), k 4096, then AFT.",
                               [*gacd, "--nce_form=two_sided"]),
        "gacd_one_sided_aft": ("GACD, one-sided NCE (paper-literal ablation), k 4096, then AFT.",
                               [*gacd, "--nce_form=one_sided"]),
    }
    for name, (comment, flags) in methods.items():
        files.append(text_file(f"reproduce/cpu/{name}.cfg", [
            *textwrap.wrap(comment, 88, initial_indent="# ", subsequent_indent="# "),
            f"--flagfile={cpu}/common.cfg", *flags]))
    # The peers' official recipes (SPEC "Peer methods"), scaled to this grid's 5 epochs: the
    # same optimiser (SGD 0.1, momentum 0.9, batch 128), their weight decay, their step
    # decays at the same fractions of the budget, and PGD-10 at 2/255 inner attacks.
    official = ["--lr_schedule=step", "--train_attack_steps=10",
                "--train_step_size=0.0078431373"]
    peers = {
        "rslad": ("RSLAD with its official recipe (zibojia/RSLAD, rslad_loss.py and "
                  "resnet18_rslad_cifar10.py) scaled to this grid's 5 epochs: loss alpha 5/6 at "
                  "the official KL scale, inner attack PGD-10 at step 2/255 (eps 8/255), weight "
                  "decay 2e-4, lr 0.1 x0.1 after 215, 260 and 285 of 300 epochs (here the same "
                  "fractions of 5); no AFT (as published).",
                  ["--method=rslad", *official, "--weight_decay=2e-4",
                   "--lr_decay_epochs=71.6667%,86.6667%,95%"]),
        "adaad": ("AdaAD with its official recipe (boyellow/AdaAD, main.py, AT_helper.py) "
                  "scaled to this grid's 5 epochs: alpha 1 at the official KL scale, inner "
                  "attack through the teacher PGD-10 at step 2/255 (eps 8/255; main.py's "
                  "argparse defaults say 16/255 and 4/255, SPEC follows the paper), weight decay "
                  "5e-4, lr 0.1 x0.1 at 100 and 150 of 200 epochs (here the same fractions of "
                  "5); no AFT (as published).",
                  ["--method=adaad", *official, "--weight_decay=5e-4",
                   "--lr_decay_epochs=50%,75%"]),
        "igdm": ("IGDM with its official recipe (HongsinLee/saad, igdm.py) scaled to this "
                 "grid's 5 epochs: alpha 1 ramped over the epochs, AdaAD's inner attack PGD-10 at "
                 "step 2/255 (eps 8/255; the code's reversed call is the table rows' "
                 "*_igdm_code.cfg), weight decay 2e-4, lr 0.1 x0.1 at 100 and 150 of 200 epochs "
                 "(here the same fractions of 5); no AFT (as published).",
                 ["--method=igdm", *official, "--weight_decay=2e-4",
                  "--lr_decay_epochs=50%,75%"]),
    }
    for name, (comment, flags) in peers.items():
        files.append(text_file(f"reproduce/cpu/{name}.cfg", [
            *textwrap.wrap(comment, 88, initial_indent="# ", subsequent_indent="# "),
            f"--flagfile={cpu}/common.cfg", "--aft_epochs=0", *flags]))
    files.append(grid_file("cpu", [
        "CPU-scale grid: ResNet-20 PGD-AT teacher, ResNet-8 students on 10,000 CIFAR-10 images,",
        "three seeds, the same budget for every row (5 epochs, +1 of AFT; RSLAD, AdaAD and",
        "IGDM with their official recipes scaled to 5 epochs, without AFT, as published).",
        "About 2.5 h on 2 cores; stop and start it again at will: finished runs are skipped,",
        "killed ones resume."],
        [0, 1, 2], [("", f"{cpu}/teacher.cfg", [
            *with_controls("", [
                ("natural+AFT", f"{cpu}/natural_aft.cfg", "natural"),
                ("KD+AFT", f"{cpu}/kd_aft.cfg", "KD"),
                ("ARD+AFT", f"{cpu}/ard_aft.cfg", "ARD"),
                ("GACD two-sided+AFT", f"{cpu}/gacd_two_sided_aft.cfg", "GACD two-sided"),
                ("GACD one-sided+AFT", f"{cpu}/gacd_one_sided_aft.cfg", "GACD one-sided")]),
            ("RSLAD", f"{cpu}/rslad.cfg"), ("AdaAD", f"{cpu}/adaad.cfg"),
            ("IGDM", f"{cpu}/igdm.cfg")])]))

    # gacd_departures: GACD's departures from the paper (docs/methods.md), one at a time, on
    # the cpu grid's teacher, budget and test subsets.
    files.append(text_file("reproduce/gacd_departures/paper_normaliser_aft.cfg", [
        "# GACD two-sided as the cpu grid runs it, but h without CRD's normaliser Z (the",
        "# paper's Eq. 9), then AFT.",
        f"--flagfile={cpu}/gacd_two_sided_aft.cfg", "--nce_normaliser=paper"]))
    files.append(text_file("reproduce/gacd_departures/no_ce_aft.cfg", [
        "# GACD two-sided as the cpu grid runs it, but without the cross-entropy term on x+",
        "# (the paper's Eq. 10 has none), then AFT.",
        f"--flagfile={cpu}/gacd_two_sided_aft.cfg", "--w_ce=0"]))
    departures = "flags/reproduce/gacd_departures"
    files.append(grid_file("gacd_departures", [
        "GACD's departures from the paper, one at a time (docs/methods.md): the cpu grid's",
        "teacher, data, budget and test subsets; GACD as ours, without the normaliser Z, and",
        "without the CE term on x+, each before and after AFT; three seeds. About 3 h on the",
        "project's 2-core CPU: the teacher about 1 h, each of the 9 student runs about 14",
        "min. (The one-sided form is the cpu grid's own row; all departures together are",
        "cpu_long's paper-literal row.)"],
        [0, 1, 2], [("", f"{cpu}/teacher.cfg", with_controls("", [
            ("GACD ours+AFT", f"{cpu}/gacd_two_sided_aft.cfg", "GACD ours"),
            ("GACD paper normaliser+AFT", f"{departures}/paper_normaliser_aft.cfg",
             "GACD paper normaliser"),
            ("GACD no CE on x+ +AFT", f"{departures}/no_ce_aft.cfg", "GACD no CE on x+")]))]))

    # cpu_long: the same 10,000 images at a budget where the methods converge (issue 26):
    # a teacher trained twice as long, 30-epoch students, the peers with their official
    # recipes scaled to 30 epochs, GACD as ours and as the paper writes it; evaluation on
    # class-balanced test subsets, PGD-20 on 2,000 and AutoAttack on 500.
    long = "flags/reproduce/cpu_long"
    long_budget = [b.replace("--final_autoattack_examples=200", "--final_autoattack_examples=500")
                   for b in budget]
    files.append(text_file("reproduce/cpu_long/teacher.cfg", [
        "# gacd-reproduce long CPU grid, the teacher: ResNet-20, Madry PGD-AT (PGD-3, step",
        "# 2.5 eps / 3) for 30 epochs (twice the cpu grid's) on a class-balanced",
        "# 10,000-image CIFAR-10 subset (9,500 for training, 500 held out for validation),",
        "# cosine lr; PGD-20 on a class-balanced 2,000 of the test split, AutoAttack",
        "# (standard) on a class-balanced 500 of it.",
        *cpu_teacher(30, long_budget)]))
    files.append(text_file("reproduce/cpu_long/common.cfg", [
        "# gacd-reproduce long CPU grid, every student: ResNet-8, 30 epochs of its method on",
        "# the teacher's 10,000 images, then (rows with AFT) 2 epochs of AFT (PGD-5 AT at",
        "# step 4/255, lr 0.01). This file's optimiser (SGD 0.1, momentum 0.9, batch 128,",
        "# weight decay 5e-4, cosine lr) and PGD-5 inner attacks at 4/255 are ours; the",
        "# official rows override them with their sources' recipes. Validation PGD-20 on the",
        "# 500 held-out images after every epoch (the budget curve). Same test subsets as",
        "# the teacher.",
        "--dataset=cifar10", "--arch=resnet8", "--epochs=30", *long_budget,
        "--train_attack_steps=5", "--train_step_size=0.0156862745", "--aft_epochs=2",
        "--aft_learning_rate=0.01"]))
    long_rows = {
        "natural_aft": ("natural+AFT: cross-entropy on natural images (no teacher), then AFT.",
                        ["--method=natural"]),
        "kd_aft": ("KD (a 0.9, T 4; weight decay 5e-4 as RepDistiller's), then AFT.",
                   ["--method=kd"]),
        "ard": ("ARD as its official code runs (goldblum/AdversariallyRobustDistillation, "
                "main.py), scaled to 30 epochs: a 1, T 30, student attack PGD-10 at step 2/255 "
                "in training-mode batch norm, weight decay 2e-4, lr 0.1 decayed once x0.1 at "
                "half the budget; no AFT.",
                ["--method=ard", *official, "--weight_decay=2e-4", "--lr_decay_epochs=50%",
                 "--ard_attack_training_mode", "--aft_epochs=0"]),
        **{name: (comment.replace("this grid's 5 epochs", "30 epochs")
                  .replace("fractions of 5", "fractions of 30"), [*flags, "--aft_epochs=0"])
           for name, (comment, flags) in peers.items()},
        "gacd_two_sided_aft": ("GACD as ours (two-sided NCE, CRD's normaliser Z, CE on x+), "
                               "k 4096, then AFT.", [*gacd, "--nce_form=two_sided"]),
        "gacd_paper_aft": ("GACD as the paper writes it (Eq. 9/10: one-sided NCE, no "
                           "normaliser Z, no CE on x+), k 4096, then AFT (ours).",
                           [*(f for f in gacd if f != "--w_ce=1.0"), "--w_ce=0",
                            "--nce_form=one_sided", "--nce_normaliser=paper"]),
    }
    for name, (comment, flags) in long_rows.items():
        files.append(text_file(f"reproduce/cpu_long/{name}.cfg", [
            *textwrap.wrap(comment, 88, initial_indent="# ", subsequent_indent="# "),
            f"--flagfile={long}/common.cfg", *flags]))
    files.append(grid_file("cpu_long", [
        "Long CPU grid: the cpu grid's data and test subsets at a budget where the methods",
        "converge: ResNet-20 PGD-AT teacher (30 epochs), ResNet-8 students for 30 epochs (+2",
        "of AFT where the row has it), the peers with their official recipes, 3 seeds; PGD-20",
        "on a class-balanced 2,000 test images, AutoAttack on 500. Many hours on 2 cores",
        "(docs/results.md gives its measured cost); stop and start it again at will."],
        [0, 1, 2], [("", f"{long}/teacher.cfg", [
            *with_controls("", [
                ("natural+AFT", f"{long}/natural_aft.cfg", None),
                ("KD+AFT", f"{long}/kd_aft.cfg", None)]),
            ("ARD (official)", f"{long}/ard.cfg"),
            ("RSLAD (official)", f"{long}/rslad.cfg"),
            ("AdaAD (official)", f"{long}/adaad.cfg"),
            ("IGDM (official)", f"{long}/igdm.cfg"),
            *with_controls("", [
                ("GACD two-sided+AFT", f"{long}/gacd_two_sided_aft.cfg", "GACD two-sided"),
                ("GACD paper-literal+AFT", f"{long}/gacd_paper_aft.cfg",
                 "GACD paper-literal")])])]))

    # paper: Tables 1-2 with their control rows, one group per teacher.
    groups = []
    for folder, (dataset, teachers, students) in TABLES.items():
        for teacher in teachers:
            rows = []
            for student in students:
                cell_name = f"flags/{folder}/{dataset}_{teacher}_to_{student}"
                rows += with_controls(f"{student} ", [
                    ("KD+AFT", f"{cell_name}_kd_aft.cfg", "KD"),
                    ("ARD+AFT", f"{cell_name}_ard_aft.cfg", "ARD"),
                    ("GACD+AFT", f"{cell_name}_gacd.cfg", "GACD")])
                rows.append((f"{student} ARD as its code runs", f"{cell_name}_ard_code.cfg"))
                rows += [(f"{student} RSLAD", f"{cell_name}_rslad.cfg"),
                         (f"{student} AdaAD", f"{cell_name}_adaad.cfg"),
                         (f"{student} IGDM", f"{cell_name}_igdm.cfg")]
            groups.append((f"{dataset} {teacher}", f"flags/teacher_{dataset}_{teacher}.cfg",
                           rows))
        groups.append((f"{dataset} no teacher", None, [
            row for student in students for row in with_controls(f"{student} ", [
                ("natural+AFT", f"flags/{folder}/{dataset}_{student}_natural_aft.cfg",
                 "natural")])]))
    files.append(grid_file("paper", [
        "The paper's Tables 1-2 (CIFAR-10, CIFAR-100) with the control rows: each teacher, then",
        "KD, ARD, GACD with and without AFT, ARD as its code runs, RSLAD, AdaAD and IGDM with",
        "their official recipes, and natural+AFT, 3 seeds.",
        "GPU-scale (200 epochs per run)."], [0, 1, 2], groups))
    return files


if __name__ == "__main__":
    for path, text in flagfiles():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(flagfiles())} flagfiles")
