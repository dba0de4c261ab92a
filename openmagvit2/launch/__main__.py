"""Command line: render or submit a training / evaluation job from the composed config.

    python -m openmagvit2.launch submit cluster=slurm_32gpu experiment=in256_base [overrides]
    python -m openmagvit2.launch render cluster=slurm_32gpu experiment=in256_base [--output job.sbatch]
    sbatch job.sbatch                                   # a rendered script submits as is (its log dir exists)
    python -m openmagvit2.launch submit --job eval cluster=slurm_32gpu [eval overrides]

``render`` is the dry run: it validates and prints (or writes) the script without touching SLURM.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from openmagvit2.launch.plan import DEFAULT_CONFIG_DIR, JOBS, LaunchError, make_plan, validate_plan
from openmagvit2.launch.render import render_script
from openmagvit2.launch.submit import local_command, submit_plan
from openmagvit2.train.signals import REQUEUE_EXIT_CODE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m openmagvit2.launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("submit", "validate, render and sbatch the job (cluster=local: run it here)"),
                            ("render", "validate and print the job script without submitting (dry run)")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--job", choices=sorted(JOBS), default="train", help="train.py or eval.py (default train)")
        sub.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, help="the project's conf/ directory")
        if name == "render":
            sub.add_argument("--output", type=Path, default=None, help="write the script here instead of stdout")
        sub.add_argument("overrides", nargs="*", help="Hydra overrides, as for train.py (cluster=..., experiment=...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args.job, args.overrides, config_dir=args.config_dir)
        validate_plan(plan)
        if args.command == "render":
            if plan.cluster["launcher"] == "local":
                print(shlex.join(local_command(plan)))
                return 0
            script = render_script(plan, args.overrides)
            if args.output is None:
                sys.stdout.write(script)
                print(f"note: SLURM opens the job's log before the script runs, so `sbatch` of this script needs "
                      f"{plan.log_path.parent} to exist (render --output creates it).", file=sys.stderr)
            else:
                # The script is meant to be submitted: create the log directory its `#SBATCH --output` names, or
                # `sbatch job.sbatch` fails at once without a log.
                plan.log_path.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(script)
                args.output.chmod(0o755)
                print(f"wrote {args.output} (run dir {plan.run_dir}; its log goes to {plan.log_path})",
                      file=sys.stderr)
            return 0
        submission = submit_plan(plan, args.overrides)
    except LaunchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if submission.job_id is None:
        print(f"run dir: {submission.run_dir}")
        if submission.exit_code == REQUEUE_EXIT_CODE:
            print("pre-empted: a checkpoint was saved; run the same command with "
                  f"hydra.run.dir={submission.run_dir} to resume.")
        return submission.exit_code
    print(f"submitted job {submission.job_id}: {plan.job} on {plan.cluster['nodes']} node(s) x "
          f"{plan.tasks_per_node} process(es)")
    print(f"run dir: {submission.run_dir}")
    print(f"log:     {submission.log}")
    print(f"script:  {submission.script}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
