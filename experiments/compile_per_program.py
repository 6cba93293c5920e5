"""`--mode compile` one program at a time (train step, then eval forward), each report
written as soon as it is done, so a slow compile still leaves the first one:

  python experiments/compile_per_program.py configs/dlsn.py v5litepod-8 OUT_PREFIX

writes OUT_PREFIX_train_step.json and OUT_PREFIX_eval_forward.json (`aot.run_compile`
reports: compile wall / CPU seconds, code size, memory, cost). config.model.init is set to
'flax': the compiled program does not depend on the init values (the state is abstract),
and the scan measurements of docs/performance.md ran on a tree whose torch init rules did
not take stacked kernels yet.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import common  # noqa: E402
from jaxsr import aot, config_util  # noqa: E402


def main(spec: str, target: str, out_prefix: str) -> None:
    aot.prepare_host(target)
    for program in aot.PROGRAMS:
        config = config_util.load_config_file(spec)
        config.model.init = "flax"
        report = aot.run_compile(config, target, programs=(program,), check=False)
        report["process_cpu_seconds_so_far"] = time.process_time()
        common.write_json(f"{out_prefix}_{program}.json", report)
        print(program, aot.compile_time_line(report[program]), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
