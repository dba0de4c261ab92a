"""`make gpu-check`: the GPU tests and benchmarks in one command, with a markdown report and a JSON of its figures.

    make gpu-check                        # on a CUDA machine: under 8 minutes; OUT=... (default runs/gpu-check)
    make gpu-check DEVICE=cpu             # the same parts with tiny sizes on the CPU: a rehearsal, a few minutes
    python bench/gpu_check.py --device cuda --out runs/gpu-check --budget-s 470

Parts, in order, each a subprocess with its own time budget (a part that fails or runs out of time is reported and
the next one runs; the benchmarks rewrite their JSON after every phase, so a stopped part keeps what it measured):
1. packages: the Python packages the box lacks are installed from `--wheels` (`make gpu-wheels`) into
   runs/gpu-site (no network, the box's own environment untouched);
2. `pytest -m gpu tests/test_gpu.py` with OPENMAGVIT2_REQUIRE_GPU=1 (junit XML in OUT);
3. `bench/lfq.py`: ours vs the dense entropy at N = 2048, K = 18;
4. `bench/train_step.py` for the in256_base (openmagvit2_v1_256_base) and in256_large (openmagvit2_v3_256_large)
   recipes at batch 8: every precision / channels_last variant, the reference-equivalent step, the largest batch
   that fits, then torch.compile.
After every part, OUT/report.md and OUT/report.json are rewritten, so an interrupted run still leaves a report.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "runs" / "gpu-site"
# distribution -> module, for every package the project imports that the GPU box does not ship (see Makefile).
REQUIRED = {"hydra-core": "hydra", "omegaconf": "omegaconf", "antlr4-python3-runtime": "antlr4", "PyYAML": "yaml",
            "hydra-submitit-launcher": "hydra_plugins.hydra_submitit_launcher", "submitit": "submitit",
            "lpips": "lpips", "clean-fid": "cleanfid", "webdataset": "webdataset", "braceexpand": "braceexpand",
            "safetensors": "safetensors", "tqdm": "tqdm", "requests": "requests", "pytest": "pytest"}
TARGETS = {"speedup_vs_reference": 2.0, "max_batch_ratio": 4.0}


def sizes(device: str) -> dict:
    """Command-line arguments of each part: the recipe's sizes on the GPU, tiny ones on the CPU."""
    if device == "cuda":
        lfq = ["--device", "cuda", "--bits", "18", "--tokens", "2048", "--repeats", "10", "--dense-repeats", "3",
               "--max-dense-gib", "60"]
        step = ["--device", "cuda", "--image-size", "256", "--batch-size", "8", "--bits", "18", "--perceptual",
                "random", "--max-batch", "--max-batch-cap", "1024", "--compile", "--max-dense-gib", "60"]
        return {"lfq": lfq, "base": [*step, "--experiment", "in256_base"],
                "large": [*step, "--experiment", "in256_large"]}
    lfq = ["--device", "cpu", "--bits", "14", "--tokens", "256", "--repeats", "3", "--threads", "1"]
    step = ["--device", "cpu", "--image-size", "32", "--batch-size", "2", "--bits", "10", "--repeats", "2",
            "--warmup", "1", "--max-batch", "--max-batch-cap", "4", "--model", "tiny", "--threads", "1"]
    return {"lfq": lfq, "base": [*step, "--experiment", "in256_base"], "large": [*step, "--experiment", "in256_large"]}


# Time caps in seconds (CUDA: 470 s in all, under the 8 minutes of the issue; CPU: a few minutes on 2 busy cores).
CAPS = {"cuda": {"packages": 30, "pytest": 190, "lfq": 25, "base": 90, "large": 135},
        "cpu": {"packages": 45, "pytest": 300, "lfq": 60, "base": 120, "large": 120}}


# --- running parts -----------------------------------------------------------------------------------------------------

def run_part(name: str, command: list[str], env: dict, log_path: Path, timeout_s: float) -> dict:
    """Run `command`, streaming its output to the terminal (prefixed) and to `log_path`; kill it at `timeout_s`."""
    print(f"\n=== {name}: {' '.join(command)} (budget {timeout_s:.0f} s)", flush=True)
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", start_new_session=True)

        def pump() -> None:
            for line in process.stdout:
                log.write(line)
                log.flush()
                print(f"[{name}] {line}", end="", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        reader.join(timeout=10)
    wall_s = time.monotonic() - started
    status = "timed out" if timed_out else ("ok" if process.returncode == 0 else "failed")
    tail = log_path.read_text(errors="replace").splitlines()[-25:]
    print(f"=== {name}: {status} in {wall_s:.0f} s", flush=True)
    return {"status": status, "returncode": process.returncode, "wall_s": round(wall_s, 1),
            "command": " ".join(command), "log": log_path.name, "tail": tail if status != "ok" else []}


def missing_distributions() -> list[str]:
    missing = []
    for distribution, module in REQUIRED.items():
        try:
            importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            if not (SITE / module.split(".")[0]).exists() and not _importable(module):
                missing.append(distribution)
    return missing


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def wheel_distribution(path: Path) -> str:
    return path.name.split("-")[0].replace("_", "-").lower()


def install_packages(wheels: Path, log_path: Path) -> dict:
    """Install the wheels of the distributions this Python lacks into runs/gpu-site (no index, no dependencies:
    the folder holds the whole closure, see the Makefile)."""
    started = time.monotonic()
    missing = missing_distributions()
    if not missing:
        return {"status": "ok", "wall_s": 0.0, "installed": [], "note": "every required package is present"}
    present = {dist.metadata["Name"].replace("_", "-").lower() for dist in importlib.metadata.distributions()}
    files = sorted(p for p in wheels.glob("*.whl") if wheel_distribution(p) not in present) if wheels.is_dir() else []
    lacking = [d for d in missing if d.lower() not in {wheel_distribution(p) for p in files}]
    if lacking:
        return {"status": "failed", "wall_s": 0.0, "installed": [],
                "note": f"missing {lacking} and no wheel for them in {wheels}: run `make gpu-wheels` on a machine "
                        "with network and carry the folder along"}
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "-q",
               "--target", str(SITE), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True)
    output, how = done.stdout + done.stderr, "pip install --target"
    if done.returncode != 0 and "No module named pip" in output:
        import zipfile

        for path in files:  # a wheel is a zip of its importable files: unpacked on sys.path, it is installed
            with zipfile.ZipFile(path) as archive:
                archive.extractall(SITE)
        done, how = subprocess.CompletedProcess(command, 0), "unzipped (this Python has no pip)"
    log_path.write_text(output)
    status = "ok" if done.returncode == 0 else "failed"
    return {"status": status, "wall_s": round(time.monotonic() - started, 1),
            "installed": [p.name for p in files], "note": f"{len(files)} wheels into {SITE} ({how})",
            "tail": output.splitlines()[-15:] if status != "ok" else []}


# What the GPU box ships (torch, torchvision, einops, rich, scikit-image and their own dependencies).
ON_THE_BOX = {"torch", "torchvision", "numpy", "pillow", "scipy", "scikit-image", "rich", "einops", "markdown-it-py",
              "mdurl", "imageio", "tifffile", "networkx", "lazy-loader", "filelock", "fsspec", "jinja2", "sympy",
              "markupsafe", "mpmath", "setuptools"}


def check_wheels(wheels: Path) -> int:
    """`make gpu-wheels`' last step: every required distribution has a wheel, every wheel's requirements (for
    CPython 3.12 on Linux) are met by another wheel or by the box, and the folder's size."""
    import zipfile

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    versions = {}
    metadata = {}
    for path in wheels.glob("*.whl"):
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            text = archive.read(name).decode()
        fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith(" "))
        versions[canonicalize_name(fields["Name"])] = Version(fields["Version"])
        metadata[path.name] = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Requires-Dist: ")]
    environment = {"python_version": "3.12", "python_full_version": "3.12.0", "sys_platform": "linux",
                   "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
                   "platform_machine": "x86_64", "platform_python_implementation": "CPython", "extra": ""}
    problems = [f"no wheel for {d}" for d in REQUIRED if canonicalize_name(d) not in versions]
    box = {canonicalize_name(n) for n in ON_THE_BOX}
    for wheel, requirements in sorted(metadata.items()):
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            name = canonicalize_name(requirement.name)
            if name in box:
                continue
            if name not in versions:
                problems.append(f"{wheel} needs {requirement}: no wheel")
            elif not requirement.specifier.contains(versions[name], prereleases=True):
                problems.append(f"{wheel} needs {requirement}: the folder has {versions[name]}")
    size_mb = sum(p.stat().st_size for p in wheels.glob("*.whl")) / 1e6
    print(f"{wheels}: {len(versions)} wheels, {size_mb:.1f} MB; requirements for CPython 3.12 on Linux "
          + ("all met by the folder or the box" if not problems else "NOT met:\n  " + "\n  ".join(problems)))
    return 1 if problems else 0


# --- reading results ---------------------------------------------------------------------------------------------------

def read_junit(path: Path) -> list[dict]:
    if not path.exists():
        return []
    tests = []
    for case in ElementTree.parse(path).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or "").splitlines()[0][:200] if child.get("message") else ""
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      "message": message})
    return tests


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def verdicts(report: dict) -> list[str]:
    """The issue's targets, from whatever was measured."""
    lines = []
    for key in ("base", "large"):
        figures = report["figures"].get(key)
        if not figures or not figures.get("rows"):
            lines.append(f"{key}: not measured (see the part's log)")
            continue
        rows = {row["name"]: row for row in figures["rows"]}
        model = f"{figures.get('model', key)} ({figures.get('experiment', key)})"
        recipe = figures.get("recipe_precision", "bf16")
        ours = next((row for row in figures["rows"] if row["config"]["precision"] == recipe
                     and not row["config"]["channels_last"] and not row["config"]["compile"]
                     and row["config"]["entropy"] == "ours"), None)
        reference = next((row for row in figures["rows"] if row["name"].startswith("reference-equivalent")), None)
        if ours and reference:
            speedup = ours["img_per_s"] / reference["img_per_s"]
            best = max((row for row in figures["rows"] if row["config"]["entropy"] == "ours"),
                       key=lambda row: row["img_per_s"])
            lines.append(f"{model}: our step ({recipe}) {ours['img_per_s']:.1f} img/s vs reference-equivalent "
                         f"{reference['img_per_s']:.1f} img/s = {speedup:.2f}x (target >= "
                         f"{TARGETS['speedup_vs_reference']:g}x: {'met' if speedup >= 2 else 'NOT met'}); fastest of "
                         f"ours: {best['name']} {best['img_per_s']:.1f} img/s = "
                         f"{best['img_per_s'] / reference['img_per_s']:.2f}x")
        found = figures.get("max_batch", {})
        if "ratio" in found:
            capped = " (ours capped: a lower bound)" if found["ours"]["capped"] else ""
            lines.append(f"{model}: largest batch ours {found['ours']['batch']} vs reference "
                         f"{found['reference']['batch']} = {found['ratio']:.1f}x{capped} (target >= "
                         f"{TARGETS['max_batch_ratio']:g}x: {'met' if found['ratio'] >= 4 else 'NOT met'})")
        bf16, fp16 = rows.get("bf16 autocast"), rows.get("fp16 autocast + GradScaler")
        if bf16 and fp16:
            tests = {t["name"]: t["outcome"] for t in report.get("tests", [])}
            finite = all(outcome == "passed" for name, outcome in tests.items() if "bf16" in name) if tests else None
            fast = bf16["img_per_s"] >= fp16["img_per_s"]
            keep = fast and finite
            lines.append(f"{model}: bf16 {bf16['img_per_s']:.1f} img/s vs fp16 + GradScaler {fp16['img_per_s']:.1f}"
                         f" img/s, bf16 tests {'passed' if finite else 'not all passed' if finite is False else 'not run'}"
                         f": {'keep bf16 as the recipe default' if keep else 'bf16 does NOT qualify as the default'}")
    if report["device"] == "cpu":
        lines.insert(0, "CPU rehearsal (DEVICE=cpu): tiny sizes, no fp16 and a capped batch search, so these lines "
                        "test the script, they measure nothing")
    return lines


# --- the report --------------------------------------------------------------------------------------------------------

def cell(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def write_report(report: dict, out: Path) -> None:
    """report.json, then report.md; a bug in the markdown never loses the JSON or stops the remaining parts."""
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    try:
        (out / "report.md").write_text(markdown(report))
    except Exception as error:  # noqa: BLE001  (the run must go on; the JSON holds every figure)
        (out / "report.md").write_text(f"# GPU check\n\nreport.md could not be written ({error!r}); see report.json\n")
        print(f"warning: report.md failed: {error!r}", flush=True)


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({report['device']})", "",
             f"{report['started']}, {report['machine']}, Python {report['python']}, torch {report['torch']}; "
             f"wall time {report.get('wall_s', 0):.0f} s of a {report['budget_s']:.0f} s budget.", "",
             "| part | status | seconds |", "|---|---|---|"]
    for name, part in report["parts"].items():
        lines.append(f"| {name} | {part['status']} | {part.get('wall_s', 0):.0f} |")
    lines += ["", "## Targets", ""] + [f"- {line}" for line in verdicts(report)]
    if report.get("tests"):
        lines += ["", "## pytest -m gpu", "", "| test | outcome | seconds | message |", "|---|---|---|---|"]
        lines += [f"| {t['name']} | {t['outcome']} | {t['seconds']:.1f} | {t['message']} |" for t in report["tests"]]
    lfq = report["figures"].get("lfq")
    if lfq:
        lines += ["", f"## LFQ forward + backward, fp32 ({lfq['device']})", "",
                  "| K | N | dense ms | ours ms | speed-up | dense peak MiB | ours peak MiB | memory ratio | max abs diff |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in lfq["rows"]:
            if "dense_s" in row:
                lines.append(f"| {row['bits']} | {row['tokens']} | {row['dense_s'] * 1e3:.2f} | {row['ours_s'] * 1e3:.2f} "
                             f"| {row['dense_s'] / row['ours_s']:.1f}x | {row['dense_bytes'] / 2 ** 20:.1f} | "
                             f"{row['ours_bytes'] / 2 ** 20:.2f} | {row['dense_bytes'] / row['ours_bytes']:.0f}x | "
                             f"{row['max_abs_diff']:.1e} |")
            else:
                lines.append(f"| {row['bits']} | {row['tokens']} | skipped | {row['ours_s'] * 1e3:.2f} | - | - | "
                             f"{row['ours_bytes'] / 2 ** 20:.2f} | - | {row.get('skipped', '')} |")
    for key in ("base", "large"):
        figures = report["figures"].get(key)
        if not figures or not figures.get("rows"):
            continue
        lines += ["", f"## Training step, {figures['model']} ({figures['experiment']}), {figures['image_size']} px, "
                      f"batch {figures['batch_size']}, K = {figures['bits']}, perceptual {figures['perceptual']}", "",
                  "| variant | images/s | best ms | median ms | vs eager fp32 | vs reference | peak MiB | entropy ms |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in figures["rows"]:
            lines.append(f"| {row['name']} | {row['img_per_s']:.1f} | {row['best_ms']:.0f} | {row['median_ms']:.0f} | "
                         f"{row['vs_baseline']:.2f}x | {cell(row['speedup_vs_reference'], '.2f', 'x')} | "
                         f"{cell(row['peak_mib'], '.0f')} | {cell(row['entropy_ms'], '.1f')} |")
        found = figures.get("max_batch")
        if found:
            lines += ["", "| step | largest batch | probes |", "|---|---|---|"]
            for side in ("ours", "reference"):
                if side in found:
                    entry = found[side]
                    probes = ", ".join(f"{b}{'' if ok else ' OOM'}" for b, ok in entry["probes"])
                    lines.append(f"| {entry['label']} | {entry['batch']}{' (cap)' if entry['capped'] else ''} | "
                                 f"{probes} |")
        if figures.get("notes"):
            lines += [""] + [f"- {note}" for note in figures["notes"]]
        if not figures.get("complete"):
            lines += ["", f"(incomplete: phases done {figures.get('phases_done')})"]
    for name, part in report["parts"].items():
        if part["status"] != "ok":
            lines += ["", f"## {name}: {part['status']} (last lines of {part.get('log', 'its log')})", "", "```",
                      *(part.get("tail") or [part.get("note", "(no output)")]), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check")
    parser.add_argument("--wheels", type=Path, default=ROOT / "gpu-wheels")
    parser.add_argument("--budget-s", type=float, default=None, help="total time (default: the sum of the caps)")
    parser.add_argument("--parts", nargs="+", default=["packages", "pytest", "lfq", "base", "large"])
    parser.add_argument("--check-wheels", action="store_true", help="only check the wheels folder (make gpu-wheels)")
    args = parser.parse_args(argv)
    if args.check_wheels:
        return check_wheels(args.wheels)
    import torch

    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    out.mkdir(parents=True, exist_ok=True)
    caps = CAPS[args.device]
    budget_s = args.budget_s or sum(caps.values())
    deadline = time.monotonic() + budget_s
    started = time.monotonic()
    cuda = torch.cuda.is_available()
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" and cuda else args.device,
              "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{platform.node()} ({os.cpu_count()} CPUs)", "python": platform.python_version(),
              "torch": torch.__version__, "cuda_available": cuda, "budget_s": budget_s, "parts": {}, "figures": {},
              "tests": []}
    if args.device == "cuda" and cuda:
        report["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    if args.device == "cuda" and not cuda:
        print("warning: --device cuda but torch sees no CUDA GPU: every part will fail", flush=True)

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.device == "cuda":
        env["OPENMAGVIT2_REQUIRE_GPU"] = "1"
    else:
        env.update(OPENMAGVIT2_GPU_DEVICE="cpu", OMP_NUM_THREADS="1")
    arguments = sizes(args.device)
    python = [sys.executable, "-u"]
    commands = {
        "pytest": [*python, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-v", "-p", "no:cacheprovider",
                   f"--junitxml={out / 'pytest.xml'}", "-o", "junit_logging=no"],
        "lfq": [*python, "bench/lfq.py", *arguments["lfq"], "--json", str(out / "lfq.json")],
        "base": [*python, "bench/train_step.py", *arguments["base"], "--json", str(out / "train_step_base.json")],
        "large": [*python, "bench/train_step.py", *arguments["large"], "--json", str(out / "train_step_large.json")],
    }
    figures = {"lfq": "lfq.json", "base": "train_step_base.json", "large": "train_step_large.json"}
    for name in args.parts:
        remaining = deadline - time.monotonic()
        if remaining < 10:
            report["parts"][name] = {"status": "skipped: out of time", "wall_s": 0}
            continue
        if name == "packages":
            report["parts"][name] = install_packages(args.wheels, out / "packages.log")
            print(f"=== packages: {report['parts'][name]['status']}: {report['parts'][name]['note']}", flush=True)
        else:
            if name in figures:
                (out / figures[name]).unlink(missing_ok=True)
            report["parts"][name] = run_part(name, commands[name], env, out / f"{name}.log", min(caps[name], remaining))
            if name == "pytest":
                report["tests"] = read_junit(out / "pytest.xml") or tests_from_log(out / "pytest.log")
            elif name in figures:
                report["figures"][name] = read_json(out / figures[name])
        report["wall_s"] = time.monotonic() - started
        write_report(report, out)
    print(f"\nreport: {out / 'report.md'} ({report['wall_s']:.0f} s)", flush=True)
    print((out / "report.md").read_text(), flush=True)
    return 0 if all(part["status"] == "ok" for part in report["parts"].values()) else 1


def tests_from_log(path: Path) -> list[dict]:
    """pytest's verbose lines, for a run that was stopped before it wrote its junit XML."""
    tests = []
    if path.exists():
        for match in re.finditer(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", path.read_text(), flags=re.M):
            tests.append({"name": match.group(1).split("::")[-1], "outcome": match.group(2).lower(), "seconds": 0.0,
                          "message": "(from the log: the run was stopped)"})
    return tests


if __name__ == "__main__":
    sys.exit(main())
