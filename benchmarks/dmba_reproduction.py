"""DMBA reproduction at CPU scale, with its ablations.

Liu et al., "Act in Collusion: A Persistent Distributed Multi-Target Backdoor in
Federated Learning" (arXiv:2411.03926) claim that colluding attackers with
dispersed multi-channel frequency triggers and backdoor replay implant several
backdoors that *persist* after the attack stops, without notable loss of main-task
accuracy. Checked here on the embedded ``digits-rgb32`` data: with 3 attackers and
3 target classes, every backdoor's ASR must still be >= 93% 30 rounds after the
attack ends, and clean accuracy within 2 points of the same federation without
attackers. All arms share the federation, the seed and the pre-trained model:

- ``no-attack``: the reference federation (its final model is also scored with
  the DMBA triggers, as the false-trigger rate of a clean model);
- ``dmba``: ``experiments/dmba-reproduction.toml``;
- ``dmba-shared-channel``: every trigger on the red channel (``trigger.dmba.channels=0``;
  positions stay disjoint), instead of one channel per attacker;
- ``dmba-no-replay``: ``attack.dmba.replay=none``;
- ``single-target``: ``experiments/single-target-baseline.toml``, three independent
  BadNets-style attackers (checkerboard patches in different corners, no replay),
  same targets, schedule, attacker training and update scaling;
- ``dmba-alone-<k>`` (one per attacker): interference. The DMBA federation with no
  replay where only attacker k poisons (the others are forced *control* attackers,
  poison fraction 0: same training and participation, no trigger), so backdoor k's
  ASR alone is compared with its ASR beside the other backdoors.

Pre-training is run once: the no-attack arm's first ``start-round - 1`` rounds. Each
attack arm's run folder is seeded with those rounds (``metrics.jsonl``,
``checkpoint.pt``) and its own ``config.json``, then resumed (``resume=<folder>``).
Run from scratch, an attack arm would repeat exactly these rounds: no attacker is
active before ``start-round``, and sampling and training are seeded per round and
client. The no-attack arm then resumes its own folder to the last round.

Prints one markdown report (comparison table, trigger table with PSNR/SSIM and
cross-trigger confusion) and writes it to ``--out``. Runs go to ``--runs-dir``,
``--parallel`` of them at a time (``flowerbed run`` subprocesses).

    OMP_NUM_THREADS=1 python benchmarks/dmba_reproduction.py --out dmba-results.md
    OMP_NUM_THREADS=1 python benchmarks/dmba_reproduction.py --out alone.md --arms dmba-alone-0,dmba-alone-1,dmba-alone-2
    python benchmarks/dmba_reproduction.py --out all.md --report-only no-attack=RUN_DIR dmba=RUN_DIR ...
    OMP_NUM_THREADS=1 python benchmarks/dmba_reproduction.py --quick --out quick.md   # a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowerbed.cli import parse_assignment, read_experiment
from flowerbed.platform.config import RunConfig, parse_run_config
from flowerbed.platform.recorder import CHECKPOINT, CONFIG, METRICS, read_metrics
from flowerbed.platform.roles import build_attack_plan
from flowerbed.workloads.image_classification.data.base import to_float
from flowerbed.workloads.image_classification.workload import ImageClassification

ROOT = Path(__file__).resolve().parents[1]
DMBA_EXPERIMENT = ROOT / "experiments" / "dmba-reproduction.toml"
BASELINE_EXPERIMENT = ROOT / "experiments" / "single-target-baseline.toml"
PERSISTENCE_THRESHOLD = 0.93  # every backdoor's ASR 30 rounds after the attack ends
CLEAN_GAP_POINTS = 2.0  # clean accuracy within this many points of the no-attack run

# --quick: the same arms on a much shorter schedule (a smoke run; it cannot test the claim).
QUICK = {
    "num-clients": 10,
    "data.train-size": 4000,
    "data.test-size": 500,
    "num-server-rounds": 8,
    "attack.start-round": 4,
    "attack.end-round": 5,
    "attack.dmba.poison-epochs": 2,
}


@dataclass
class Arm:
    slug: str
    title: str
    flat: dict[str, Any]

    @property
    def config(self) -> RunConfig:
        return parse_run_config(self.flat)


def build_arms(quick: bool, overrides: dict[str, Any], runs_dir: Path) -> list[Arm]:
    dmba = read_experiment(DMBA_EXPERIMENT)
    baseline = read_experiment(BASELINE_EXPERIMENT)
    scale = {k: v for k, v in dmba.items() if not k.startswith(("attack.", "trigger.", "experiment"))}
    differing = sorted(k for k in scale if baseline.get(k) != scale[k])
    if differing:
        raise SystemExit(f"{BASELINE_EXPERIMENT.name} and {DMBA_EXPERIMENT.name} differ in the federation keys {differing}")
    common = {**(QUICK if quick else {}), **overrides, "output-dir": str(runs_dir)}
    arms = [
        Arm("no-attack", "no attack", {**dmba, "attack.num-attackers": 0}),
        Arm("dmba", "DMBA (dispersed channels, replay)", dict(dmba)),
        Arm("dmba-shared-channel", "DMBA, all triggers on one channel (R)", {**dmba, "trigger.dmba.channels": "0"}),
        Arm("dmba-no-replay", "DMBA, no replay", {**dmba, "attack.dmba.replay": "none"}),
        Arm("single-target", "3 x single-target BadNets (corner patches)", dict(baseline)),
    ]
    # Interference: each backdoor alone. The same three forced attackers with the same
    # triggers and training, no replay, but only attacker k poisons (the others are control
    # attackers with poison fraction 0), so backdoor k's ASR here is its ASR without the others.
    count = int(dmba["attack.num-attackers"])
    fraction = str(dmba["attack.poison-fraction"])
    for k in range(count):
        fractions = ",".join(fraction if j == k else "0" for j in range(count))
        alone = {**dmba, "attack.dmba.replay": "none", "attack.poison-fraction": fractions}
        arms.append(Arm(f"dmba-alone-{k}", f"DMBA, backdoor {k} alone (no replay)", alone))
    for arm in arms:
        arm.flat.update(common)
        arm.flat["experiment"] = f"dmba-repro-{arm.slug}"
        _ = arm.config  # validate now, before anything runs
    return arms


# ----------------------------------------------------------------------------- running


def flowerbed_run(flat: dict[str, Any], log: Path) -> None:
    """``flowerbed run`` in a subprocess (one Flower simulation each); raise if it fails."""
    command = [sys.executable, "-m", "flowerbed.cli", "run", "--quiet"]
    for key, value in flat.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"run failed (exit {result.returncode}); see {log}")


def run_folder(runs_dir: Path, experiment: str) -> Path:
    folders = sorted(runs_dir.glob(f"{experiment}-*"), key=lambda p: p.stat().st_mtime)
    if not folders:
        raise RuntimeError(f"no run folder {experiment}-* in {runs_dir}")
    return folders[-1]


def seed_from_pretraining(pretrained: Path, arm: Arm, runs_dir: Path) -> Path:
    """A new run folder for ``arm`` holding the pre-training rounds, ready to resume."""
    folder = runs_dir / f"{arm.flat['experiment']}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True)
    (folder / CONFIG).write_text(json.dumps(arm.config.to_json_dict(), indent=2, sort_keys=True) + "\n")
    shutil.copy2(pretrained / METRICS, folder / METRICS)
    shutil.copy2(pretrained / CHECKPOINT, folder / CHECKPOINT)
    return folder


def run_all(arms: list[Arm], runs_dir: Path, parallel: int, reference: Arm) -> dict[str, Path]:
    """Pre-train once (``reference``'s first rounds), seed every attack arm from it, resume
    all ``arms``; slug -> run folder. If ``reference`` is not among ``arms``, its folder holds
    only the pre-training."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    starts = {s for arm in arms if arm.config.attack.num_attackers for s in arm.config.attack.start_round}
    pretraining_rounds = min(starts) - 1
    began = time.perf_counter()
    folders: dict[str, Path] = {}
    if pretraining_rounds >= 1:
        print(f"[dmba] pre-training {pretraining_rounds} clean rounds", file=sys.stderr, flush=True)
        flowerbed_run({**reference.flat, "num-server-rounds": pretraining_rounds}, runs_dir / f"{reference.slug}-pretraining.log")
        pretrained = run_folder(runs_dir, reference.flat["experiment"])
        folders[reference.slug] = pretrained
        for arm in arms:
            if arm is not reference:
                folders[arm.slug] = seed_from_pretraining(pretrained, arm, runs_dir)

    def launch(arm: Arm) -> None:
        flat = dict(arm.flat)
        if arm.slug in folders:
            flat["resume"] = str(folders[arm.slug])
        print(f"[dmba] running {arm.slug}", file=sys.stderr, flush=True)
        flowerbed_run(flat, runs_dir / f"{arm.slug}.log")
        folders.setdefault(arm.slug, run_folder(runs_dir, arm.flat["experiment"]))
        print(f"[dmba] done {arm.slug} ({time.perf_counter() - began:.0f} s since start)", file=sys.stderr, flush=True)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for future in [pool.submit(launch, arm) for arm in arms]:
            future.result()
    return {slug: folder for slug, folder in folders.items() if any(arm.slug == slug for arm in arms)}


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def trigger_report(arm: Arm, run_dir: Path, score_with: Arm | None = None) -> list[dict[str, Any]]:
    """Per backdoor: geometry, target, stealth (PSNR/SSIM on the test set) and, on the final model,
    the ASR and the share of triggered images sent to *another* attacker's target (confusion)."""
    source = score_with or arm
    config = source.config
    workload = ImageClassification(config)
    backdoors = build_attack_plan(config).backdoors()
    model = workload.build_model()
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    model.eval()
    images, labels = workload.dataset.test_images, workload.dataset.test_labels
    rows = []
    for backdoor in backdoors:
        keep = labels != backdoor.target
        clean = to_float(images[keep])
        triggered = backdoor.trigger.apply(clean)
        predictions = torch.cat([model(triggered[i : i + 500]).argmax(1) for i in range(0, len(triggered), 500)])
        others = [b.target for b in backdoors if b.target != backdoor.target]
        description = backdoor.trigger.describe()
        if "channel" in description:
            where = f"ch {'RGB'[description['channel']]} " + " ".join(f"({u},{v})" for u, v in description["positions"])
        else:
            where = f"patch at ({description['row']},{description['col']})"
        stealth = backdoor.trigger.stealth(clean)
        rows.append(
            {
                "name": backdoor.name,
                "target": backdoor.target,
                "where": where,
                "psnr": stealth["psnr"],
                "ssim": stealth["ssim"],
                "final_asr": (predictions == backdoor.target).float().mean().item(),
                "confusion": torch.isin(predictions, torch.tensor(others)).float().mean().item() if others else 0.0,
            }
        )
    return rows


def summarize(arm: Arm, run_dir: Path) -> dict[str, Any]:
    rounds = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    asr_by_round = {r["round"]: r.get("asr", {}) for r in rounds}
    backdoors = summary.get("backdoors", {})
    per_backdoor = {}
    for name, entry in backdoors.items():
        last = entry.get("last_attack_round")
        per_backdoor[name] = {
            "at_end": asr_by_round.get(last, {}).get(name),
            "plus_10": entry.get("asr_plus_10"),
            "plus_30": entry.get("asr_plus_30"),
            "below_50": entry.get("rounds_until_below_50"),
            "below_50_at_least": entry.get("rounds_until_below_50_at_least"),
        }
    return {
        "run_dir": run_dir,
        "clean_acc": rounds[-1]["clean_acc"],
        "rounds": rounds[-1]["round"],
        "backdoors": per_backdoor,
        "failures": sum(len(r.get("failures", [])) for r in rounds),
        "seconds": summary.get("seconds_total", 0.0),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _joined(values: list[float | None]) -> str:
    return " / ".join(_pct(v) for v in values) if values else "-"


def markdown_report(arms: list[Arm], folders: dict[str, Path], quick: bool) -> str:
    results = {arm.slug: summarize(arm, folders[arm.slug]) for arm in arms}
    dmba_arm = next(arm for arm in arms if arm.slug == "dmba")
    triggers = {
        arm.slug: trigger_report(arm, folders[arm.slug], score_with=dmba_arm if arm.slug == "no-attack" else None)
        for arm in arms
    }
    reference_acc = results["no-attack"]["clean_acc"]  # main() makes sure the reference and dmba arms are there
    config = dmba_arm.config
    attack = config.attack
    lines = [
        "Scale: "
        f"{config.data.name} ({config.data.train_size} train / {config.data.test_size} test images), "
        f"{config.num_clients} clients ({config.partition.name}"
        + (f" α={config.partition.alpha}" if config.partition.name == "dirichlet" else "")
        + f"), {config.clients_per_round()} per round, model `{config.model.name}`, "
        f"{config.local_epochs} local epoch(s), SGD lr {config.lr} momentum {config.momentum}, batch {config.batch_size}; "
        f"{min(attack.start_round) - 1} clean pre-training rounds, attack rounds "
        f"{','.join(map(str, attack.start_round))}–{','.join(str(e or config.num_server_rounds) for e in attack.end_round)} "
        f"(per attacker), {config.num_server_rounds} rounds in all; seed {config.seed}.",
        "",
        "ASR columns list the backdoors in attacker order (targets "
        + ", ".join(str(t) for t in attack.targets)
        + "); \"end\" = at the backdoor's last attack round, \"+10\"/\"+30\" = that many rounds later. "
        "Clean accuracy = final round. Claim = every backdoor ≥ "
        f"{100 * PERSISTENCE_THRESHOLD:.0f}% at +30 and clean accuracy within {CLEAN_GAP_POINTS:.0f} points of no attack.",
        "",
        "| arm | clean acc % | Δ vs no attack | ASR % at end | ASR % +10 | ASR % +30 | rounds until ASR < 50% | claim | failed updates |",
        "|---|---:|---:|---|---|---|---|---|---:|",
    ]
    for arm in arms:
        result = results[arm.slug]
        delta = 100 * (result["clean_acc"] - reference_acc)
        if arm.slug == "no-attack":
            final = [row["final_asr"] for row in triggers[arm.slug]]
            cells = [arm.title, _pct(result["clean_acc"]), "0.0", f"DMBA triggers, final model: {_joined(final)}", "-", "-", "-", "-"]
        else:
            backdoors = list(result["backdoors"].values())
            plus_30 = [b["plus_30"] for b in backdoors]
            below = [
                str(b["below_50"]) if b["below_50"] is not None else f"> {b['below_50_at_least']}"
                for b in backdoors
            ]
            if arm.slug.startswith("dmba-alone-"):
                claim = "- (control)"
            elif any(v is None for v in plus_30):
                claim = "n/a (run too short)"
            else:
                met = min(plus_30) >= PERSISTENCE_THRESHOLD and abs(delta) <= CLEAN_GAP_POINTS
                claim = "**yes**" if met else "no"
            cells = [
                arm.title,
                _pct(result["clean_acc"]),
                f"{delta:+.1f}",
                _joined([b["at_end"] for b in backdoors]),
                _joined([b["plus_10"] for b in backdoors]),
                _joined(plus_30),
                " / ".join(below),
                claim,
            ]
        cells.append(str(result["failures"]) + (" ⚠" if result["failures"] else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Triggers (stealth on the test set; final-model ASR and confusion = share of triggered images "
        "sent to another attacker's target):",
        "",
        "| arm | backdoor | trigger | target | PSNR dB | SSIM | final ASR % | confusion % |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for arm in arms:
        for row in triggers[arm.slug]:
            label = f"{arm.slug} (clean model)" if arm.slug == "no-attack" else arm.slug
            lines.append(
                f"| {label} | {row['name']} | {row['where']} | {row['target']} | {row['psnr']:.1f} | "
                f"{row['ssim']:.3f} | {_pct(row['final_asr'])} | {_pct(row['confusion'])} |"
            )
    alone = {int(arm.slug.rsplit("-", 1)[1]): results[arm.slug] for arm in arms if arm.slug.startswith("dmba-alone-")}
    if alone:
        together = {slug: list(results[slug]["backdoors"].values()) for slug in ("dmba-no-replay", "dmba") if slug in results}
        lines += [
            "",
            "Interference (ASR % at the end of the attack / +30 rounds later): each backdoor alone (only its "
            "attacker poisons; the other two are forced control attackers with poison fraction 0), with the "
            "other two backdoors (no replay), and with the others and replay:",
            "",
            "| backdoor | target | alone | with the others, no replay | with the others + replay |",
            "|---|---:|---|---|---|",
        ]
        for k, result in sorted(alone.items()):
            own = list(result["backdoors"].values())[k]
            cells = [f"dmba-{k}", str(attack.targets[k] if len(attack.targets) > k else attack.targets[0])]
            cells.append(f"{_pct(own['at_end'])} / {_pct(own['plus_30'])}")
            for slug in ("dmba-no-replay", "dmba"):
                entry = together.get(slug, [None] * (k + 1))[k]
                cells.append("-" if entry is None else f"{_pct(entry['at_end'])} / {_pct(entry['plus_30'])}")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Run folders and wall time (s, sum of round times after pre-training is shared):", ""]
    for arm in arms:
        result = results[arm.slug]
        lines.append(f"- {arm.slug}: `{result['run_dir']}` ({result['seconds']:.0f} s)")
    if quick:
        lines += ["", "_--quick: a smoke run on a short schedule; it does not test the claim._"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write the tables to")
    parser.add_argument("--quick", action="store_true", help="a few-minute smoke version (short schedule, small data)")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "dmba-reproduction", help="where run folders go")
    parser.add_argument("--parallel", type=int, default=2, help="simulations at a time (each uses every core)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key in every arm")
    parser.add_argument("--arms", help="comma list of arms to run (default: all); pre-training is always run")
    parser.add_argument("--report-only", nargs="*", metavar="SLUG=RUN_DIR", help="re-make the report from finished runs")
    args = parser.parse_args()

    overrides = dict(parse_assignment(item) for item in args.set)
    arms = build_arms(args.quick, overrides, args.runs_dir.resolve())
    slugs = [arm.slug for arm in arms]
    if args.report_only is not None:
        folders = {slug: Path(path) for slug, path in (item.split("=", 1) for item in args.report_only)}
        unknown = sorted(set(folders) - set(slugs))
    else:
        chosen = args.arms.split(",") if args.arms else slugs
        unknown = sorted(set(chosen) - set(slugs))
        if not unknown:
            reference = arms[slugs.index("no-attack")]
            folders = run_all([arm for arm in arms if arm.slug in chosen], args.runs_dir.resolve(), args.parallel, reference)
    if unknown:
        raise SystemExit(f"unknown arm(s) {', '.join(unknown)}; the arms are {', '.join(slugs)}")
    missing = [slug for slug in ("no-attack", "dmba") if slug not in folders]
    if missing:
        raise SystemExit(f"the report needs the arms {', '.join(missing)} (give their run folders with --report-only)")
    report = markdown_report([arm for arm in arms if arm.slug in folders], folders, args.quick)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


if __name__ == "__main__":
    main()
