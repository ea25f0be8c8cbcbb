"""Command-line programs (absl): thin mains that translate flags into library calls.

- the programs: ``train_teacher.py`` (gacd-train-teacher), ``distill.py``
  (gacd-distill), ``evaluate.py`` (gacd-evaluate), ``export.py``
  (gacd-export), ``analyze.py`` with ``analyze_*.py`` (gacd-analyze) and
  ``reproduce.py`` (gacd-reproduce);
- the flag machinery: ``flag_core.py`` (``FLAGS``, ``DEFINE_*``, ``run``, and
  the re-wording of library errors in flag names), which imports nothing else
  of the programs;
- the shared flag groups, each built from the library's declarations:
  ``data_flags.py``, ``attack_flags.py`` (from the attack registry),
  ``method_flags.py`` (from the method registry), ``devices.py``
  (strategy, precision, several workers), and ``common.py`` (model,
  optimizer, output folders, resumable phases).

The library never reads a flag; only these modules do.
"""
