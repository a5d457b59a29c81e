"""Shared helpers of the vos_det benchmarks: arguments, interleaved timing, tables, JSON.

Every benchmark compares its variants in ONE process run, interleaving the repetitions
(A, B, A, B, ... with the order rotated each round), so that the load of a shared machine
hits every variant alike; it reports the median of each and the ratio of the medians.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

BENCHMARKS_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"

if str(REPO_ROOT) not in sys.path:
    # Lets the scripts run from a checkout without `pip install -e .` as well.
    sys.path.insert(0, str(REPO_ROOT))


def argument_parser(name: str, description: str, repeats: int, quick_repeats: int):
    """The arguments every benchmark takes: --device, --repeats, --quick, --output, --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    parser.add_argument(
        "--repeats", type=int, default=None,
        help=f"timed repetitions of each variant (default {repeats}; {quick_repeats} with --quick)",
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed repetitions of each variant first")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats: a smoke run")
    parser.add_argument(
        "--output", default=None, help=f"JSON file to write (default benchmarks/results/{name}.json)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of inputs and weights")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.set_defaults(_name=name, _repeats=repeats, _quick_repeats=quick_repeats)
    return parser


def finish_args(args):
    """Fill the defaults that depend on --quick, check --device, set threads and seed."""
    if args.repeats is None:
        args.repeats = args._quick_repeats if args.quick else args._repeats
    if args.warmup is None:
        args.warmup = 1
    if args.output is None:
        suffix = "_quick" if args.quick else ""
        args.output = str(RESULTS_DIR / f"{args._name}{suffix}.json")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def machine_info(device) -> dict:
    """CPU model, core count, load, torch version, device and date, for the JSON and header."""
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "hostname": platform.node(),
    }
    try:
        import detectron2

        info["detectron2"] = detectron2.__version__
    except ImportError:
        info["detectron2"] = None
    if str(device).startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def print_header(title: str, info: dict, args):
    print(f"== {title} ==")
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    print(
        f"{info['date']} | CPU {info['cpu']} x{info['cpu_count']} (torch threads {info['torch_threads']}, "
        f"load {info['load_average_1_5_15']}) | torch {info['torch']} | device {info['device']}{gpu}"
    )
    print(f"repeats {args.repeats} (interleaved), warmup {args.warmup}, quick={args.quick}")


def interleaved(variants: dict, repeats: int, warmup: int = 1, device="cpu", setup=None, every=None,
                progress: str = ""):
    """Time each callable of ``variants`` ``repeats`` times, interleaving the variants.

    Round r runs every variant once, the order rotated by r, so slow phases of a shared
    machine fall on all variants alike. ``every`` = {name: k} runs an expensive variant only
    in every k-th round (spread over the whole run). ``setup(name)``, if given, runs untimed
    before each call (e.g. to invalidate a cache). A non-empty ``progress`` prints it with
    the round number to stderr after each round. Returns {name: [seconds, ...]}.
    """
    names = list(variants)
    every = every or {}
    for _ in range(warmup):
        for name in names:
            if setup is not None:
                setup(name)
            variants[name]()
    synchronize(device)
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if round_index % every.get(name, 1):
                continue
            if setup is not None:
                setup(name)
            synchronize(device)
            start = time.perf_counter()
            variants[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
        if progress:
            print(f"  {progress}: round {round_index + 1}/{repeats}", file=sys.stderr, flush=True)
    return times


def summary(seconds) -> dict:
    """Median, min, max (seconds) and count of a list of timings."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "n": len(seconds),
        "all_s": list(seconds),
    }


def ms(seconds) -> str:
    """Seconds as a short millisecond string."""
    value = seconds * 1e3
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(rows, headers, title=None) -> str:
    """Print (and return) a GitHub-style table."""
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    if title:
        print(f"\n{title}")
    print(text)
    return text


def verdict(value, target, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    sign = ">=" if higher_is_better else "<="
    return f"{'MET' if met else 'NOT MET'} ({value:.3g} vs target {sign} {target:g})"


def write_json(path, payload, indent=2):
    """Write ``payload`` to ``path`` as JSON (``indent`` as json.dumps'; 0: one value per
    line, unindented, for large files that git should still diff line by line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=indent, default=str) + "\n")
    print(f"\nwrote {path}")


def peak_rss_kb() -> int:
    """Peak resident set size of this process (VmHWM), in kB; 0 where /proc is missing."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmHWM:\s+(\d+)", text)
    return int(match.group(1)) if match else 0


def current_rss_kb() -> int:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+)", text)
    return int(match.group(1)) if match else 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def return_freed_memory_to_os() -> bool:
    """Make glibc serve allocations >= 64 KiB by mmap and unmap them on free (fixed threshold).

    RSS then follows the live tensors instead of keeping freed heap pages, so a VmHWM
    delta is a measure of peak live memory. Costs page faults: use it only for memory
    measurements, after the timings. False where glibc's mallopt is not available.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024))
    except (OSError, AttributeError):
        return False


def trim_heap() -> bool:
    """glibc malloc_trim(0): give the free heap pages back to the OS, so that reusing them
    shows up in RSS again. False where not available."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0)) or True
    except (OSError, AttributeError):
        return False


# --- models ---------------------------------------------------------------------------------

PAPER_VOS = {
    "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.VOS.SAMPLE_NUMBER": 1000,
    "MODEL.VOS.SAMPLE_FROM": 10000,
    "MODEL.VOS.SELECT": 1,
    "MODEL.VOS.LOSS_WEIGHT": 0.1,
    "MODEL.VOS.STARTING_ITER": 0,
}


def load_config(name, overrides: dict, device, vos_enabled=True):
    """A frozen cfg of :func:`vos_det.config.load_config`: the file (bare names resolved under
    configs/) with ``{KEY: value}`` overrides, on ``device``, without weights; with
    ``vos_enabled`` False the vanilla detector (no VOS, energy score)."""
    from vos_det.config import load_config as load_vos_config

    pairs = {"MODEL.DEVICE": str(device), "MODEL.WEIGHTS": "", **overrides}
    if not vos_enabled:
        pairs.update({"MODEL.VOS.ENABLED": False, "MODEL.OOD.SCORE": "energy"})
    return load_vos_config(name, [str(item) for pair in pairs.items() for item in pair])


def parse_seeds(parser, text):
    """The integers of a comma-separated ``--seeds`` value (a parser error otherwise)."""
    try:
        return [int(seed) for seed in text.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {text!r}")


def training_env(threads=None):
    """A copy of the environment for training subprocesses, with ``threads`` torch threads if given."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_child(command, name):
    """Run a benchmark's child process (``command``, from the repository root) and return the
    JSON of its last ``RESULT {...}`` line; exits with its stderr when it failed."""
    completed = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"child {name} failed (rc {completed.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def run_logged(command, log_path, env):
    """Run ``command`` from the repository root with its output appended to ``log_path``.

    Raises:
        RuntimeError: the command failed; the message holds the last 30 lines of the log.
    """
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    if returncode:
        with open(log_path) as log:
            tail = "".join(log.readlines()[-30:])
        raise RuntimeError(f"{command[1]} failed (exit {returncode}), log {log_path}:\n{tail}")


def train_in_child(config, overrides, seed, output_dir, env, log_name="train.log", done_file="model_final.pth") -> bool:
    """Train one (method, seed) with ``tools/train_net.py`` in a child process, unless
    ``output_dir`` already holds ``done_file``.

    Args:
        config (str): the config file (name or path).
        overrides (list[str]): the method's ``KEY VALUE`` tokens; ``SEED`` and ``OUTPUT_DIR``
            come after them.
        seed (int): SEED.
        output_dir (str): OUTPUT_DIR, created if needed.
        env (dict): the child's environment (:func:`training_env`).
        log_name (str): the log in ``output_dir`` the child's output is appended to.
        done_file (str): the file whose presence means the training is done.

    Returns:
        bool: whether it trained.

    Raises:
        RuntimeError: the training failed (:func:`run_logged`).
    """
    if os.path.exists(os.path.join(output_dir, done_file)):
        return False
    os.makedirs(output_dir, exist_ok=True)
    run_logged(
        [sys.executable, "tools/train_net.py", "--config", config, *overrides,
         "SEED", str(seed), "OUTPUT_DIR", output_dir],
        os.path.join(output_dir, log_name),
        env,
    )
    return True


def build_pair(cfg_vos, cfg_other, seed):
    """Build the VOS model and a second model with the same seed and the shared weights."""
    from detectron2.modeling import build_model

    torch.manual_seed(seed)
    vos_model = build_model(cfg_vos)
    torch.manual_seed(seed)
    other = build_model(cfg_other)
    missing, unexpected = other.load_state_dict(vos_model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"the second model has weights the VOS model lacks: {missing}")
    return vos_model, other, unexpected


def synthetic_batch(num_images, image_size, num_classes, generator, device="cpu", start_class=0):
    """Random images whose gt boxes together cover ``num_classes`` classes (as tests do)."""
    from detectron2.structures import Boxes, Instances

    batch = []
    classes = (torch.arange(num_classes) + start_class) % num_classes
    # Image i gets the classes i, i + num_images, ...; an image left without one gets one.
    per_image = [
        classes[i::num_images] if i < num_classes else classes[i % num_classes :][:1]
        for i in range(num_images)
    ]
    for image_classes in per_image:
        instances = Instances((image_size, image_size))
        count = len(image_classes)
        corners = torch.randint(0, image_size // 2, (count, 2), generator=generator).float()
        sizes = torch.randint(max(8, image_size // 8), image_size // 2, (count, 2), generator=generator).float()
        instances.gt_boxes = Boxes(torch.cat([corners, corners + sizes], dim=1))
        instances.gt_classes = image_classes.clone()
        image = torch.randint(0, 256, (3, image_size, image_size), generator=generator).float()
        batch.append(
            {"image": image.to(device), "instances": instances.to(device), "height": image_size, "width": image_size}
        )
    return batch


def prefill_queues(queues, generator=None, spread: float = 1.0):
    """Fill every class queue to capacity with random features (class-shifted Gaussians).

    Features are non-negative like the post-ReLU box-head features the model enqueues.
    """
    num_classes, capacity, dim = queues.features.shape
    device = queues.features.device
    for k in range(num_classes):
        features = torch.randn(capacity, dim, generator=generator).abs() * spread + 0.01 * k
        queues.enqueue(features.to(device), torch.full((capacity,), k, device=device), gather=False)
