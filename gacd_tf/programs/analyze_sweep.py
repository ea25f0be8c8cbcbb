"""gacd-analyze sweep: one gacd-distill run per value of a flag (paper Figure 2)."""

import os
import shlex

from gacd_tf.analysis import run_sweep
from gacd_tf.errors import ConfigError
from gacd_tf.programs.analyze_inputs import require
from gacd_tf.programs.flag_core import FLAGS


def sweep_command(run):
    del run  # one device, writes into --output_dir

    flagfile = require("distill_flagfile", "sweep")
    flag = require("sweep_flag", "sweep").lstrip("-")
    values = require("sweep_values", "sweep")
    if not os.path.isfile(flagfile):
        raise ConfigError(f"--distill_flagfile={flagfile} does not exist; name a gacd-distill "
                          "flagfile (e.g. flags/quickstart_gacd.cfg)")
    if flag in ("model_dir", "flagfile"):
        raise ConfigError(f"--sweep_flag={flag} cannot be swept: each run gets its own "
                          "--model_dir=OUTPUT_DIR/FLAG=VALUE")
    try:
        extra = shlex.split(FLAGS.distill_args)
    except ValueError as err:
        raise ConfigError(f"--distill_args cannot be split into arguments ({err})") from None
    rows = run_sweep(flag, values, FLAGS.output_dir, [f"--flagfile={flagfile}", *extra],
                     timeout=FLAGS.sweep_timeout)
    return {"flag": flag, "rows": rows}
