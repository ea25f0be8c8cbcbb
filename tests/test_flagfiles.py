"""Every committed flagfile parses and validates with its program's flags, and the
generated distillation flagfiles equal flags/generate.py's output."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS_DIR = ROOT / "flags"

PARSE = """
import sys
from absl import flags
from gacd_tf.programs import {module} as program
program.define_flags()
for path in sys.argv[1:]:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prog", "--flagfile=" + path])
    flags.FLAGS.validate_all_flags()
print("parsed", len(sys.argv) - 1)
"""


def _files(pattern):
    # flags/reproduce/ holds gacd-reproduce grids: tests/test_reproduce.py parses them.
    return sorted(str(p.relative_to(ROOT)) for p in FLAGS_DIR.glob(pattern)
                  if p.parent.name != "reproduce")


@pytest.mark.parametrize("module, files", [
    ("train_teacher", _files("teacher_*.cfg") + ["flags/quickstart.cfg"]),
    ("distill", _files("*/*.cfg") + ["flags/quickstart_gacd.cfg"]),
])
def test_flagfiles_parse(module, files):
    assert files
    result = subprocess.run([sys.executable, "-c", PARSE.format(module=module), *files],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"parsed {len(files)}" in result.stdout


def test_generated_flagfiles_are_up_to_date():
    spec = importlib.util.spec_from_file_location("generate", FLAGS_DIR / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    expected = dict(generate.flagfiles())
    on_disk = {p for p in FLAGS_DIR.glob("*/**/*.cfg")}
    assert on_disk == set(expected), "run: python flags/generate.py"
    for path, text in expected.items():
        assert path.read_text() == text, f"{path} is stale; run: python flags/generate.py"
    # Distillation flagfiles have distinct names (their runs/ folders); gacd-reproduce's
    # (flags/reproduce/GRID/) name their runs' folders themselves.
    distill = [p for p in expected if "reproduce" not in p.relative_to(FLAGS_DIR).parts]
    assert len({p.name for p in distill}) == len(distill)
    table1 = [p for p in expected if p.parent.name == "table1"]
    # 2 teachers x 3 students x (methods + controls), plus natural+AFT per student.
    assert len(table1) == 2 * 3 * (len(generate.METHOD_FLAGS) + len(generate.CONTROLS)) + 3
