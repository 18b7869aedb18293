"""Scores derived from the per-round metrics: detection quality and the run summary."""

from __future__ import annotations

from typing import Any

import numpy as np


def detection_scores(flagged: list[int], attackers: list[int], clients: list[int]) -> dict[str, float]:
    """Precision, recall and false-positive rate of a defence's flagged ids against ground truth.

    Scores that are undefined this round (no flags, no attackers, no benign clients) are left out.
    """
    flagged_set, attacker_set = set(flagged), set(attackers)
    benign = set(clients) - attacker_set
    hits = len(flagged_set & attacker_set)
    scores: dict[str, float] = {}
    if flagged_set:
        scores["precision"] = hits / len(flagged_set)
    if attacker_set:
        scores["recall"] = hits / len(attacker_set)
    if benign:
        scores["fpr"] = len(flagged_set - attacker_set) / len(benign)
    return scores


def attacker_relative_weight(rounds: list[dict[str, Any]]) -> float | None:
    """How much weight a down-weighting defence gave the attackers, relative to the round's average client.

    A rule that excludes nobody but weights clients (FoolsGold, FLTrust, RFA, centered clipping,
    norm clipping) records ``weights`` per round. Each weight is divided by the round's mean
    weight, so 1 means "treated like an average client", 0 "excluded", above 1 "favoured";
    the score is the mean of that over every attacker reply of every such round (None when no
    round has both weights and attackers). The weights are the rule's own: norm clipping and RFA
    fold in each client's share of the examples (an attacker with more data than average scores
    above its clip factor), centered clipping, FLTrust and FoolsGold weigh clients equally.
    """
    relative: list[float] = []
    for record in rounds:
        weights = record.get("weights") or {}
        attackers = [str(pid) for pid in record.get("attackers", []) if str(pid) in weights]
        mean_weight = sum(weights.values()) / len(weights) if weights else 0.0
        if attackers and mean_weight > 0:
            relative.extend(weights[pid] / mean_weight for pid in attackers)
    return float(np.mean(relative)) if relative else None


def persistence(asr_by_round: dict[int, float], last_attack_round: int, threshold: float = 0.5) -> dict[str, Any]:
    """ASR 10 and 30 rounds after a backdoor's last attack round, and rounds until it falls below ``threshold``."""
    result: dict[str, Any] = {"last_attack_round": last_attack_round}
    for offset in (10, 30):
        if last_attack_round + offset in asr_by_round:
            result[f"asr_plus_{offset}"] = asr_by_round[last_attack_round + offset]
    after = sorted(r for r in asr_by_round if r > last_attack_round)
    below = [r for r in after if asr_by_round[r] < threshold]
    if below:
        result["rounds_until_below_50"] = below[0] - last_attack_round
    elif after:
        result["rounds_until_below_50_at_least"] = after[-1] - last_attack_round
    return result


def update_norm_medians(rounds: list[dict[str, Any]]) -> dict[str, float]:
    """Median L2 norm of the benign clients' updates and of the attackers' (each over all their rounds)."""
    benign: list[float] = []
    attacker: list[float] = []
    for record in rounds:
        attackers = {str(pid) for pid in record.get("attackers", [])}
        for pid, norm in record.get("update_norms", {}).items():
            (attacker if pid in attackers else benign).append(norm)
    medians = {}
    if benign:
        medians["benign_median"] = float(np.median(benign))
    if attacker:
        medians["attacker_median"] = float(np.median(attacker))
    return medians


def local_asr_of(rounds: list[dict[str, Any]], backdoor_name: str) -> list[float]:
    """Every recorded local ASR of ``backdoor_name`` (each implanting attacker's trained model on
    its own data), in round order then partition-id order."""
    return [
        rates[backdoor_name]
        for record in rounds
        for _, rates in sorted(record.get("local_asr", {}).items(), key=lambda item: int(item[0]))
        if backdoor_name in rates
    ]


def scored_clients(clients: list[int], failures: list[dict[str, Any]]) -> list[int]:
    """The round's clients whose replies reached the defence: sampled, minus failed or dropped ones."""
    left_out = {failure.get("partition_id") for failure in failures}
    return [pid for pid in clients if pid not in left_out]


def build_summary(rounds: list[dict[str, Any]], headline: tuple[str, str], plan=None) -> dict[str, Any]:
    """Final and best values, persistence per backdoor, detection totals, attackers' relative weight, wall time."""
    if not rounds:
        return {"rounds_completed": 0}
    metric, mode = headline
    final = rounds[-1]
    summary: dict[str, Any] = {
        "rounds_completed": final["round"],
        "final": {
            key: value
            for key, value in final.items()
            if key not in ("clients", "attackers", "flagged", "failures", "update_norms", "local_asr")
        },
        "seconds_total": sum(r.get("seconds", 0.0) for r in rounds),
    }
    scored = [r for r in rounds if isinstance(r.get(metric), (int, float))]
    if scored:
        pick = max if mode == "max" else min
        best = pick(scored, key=lambda r: r[metric])
        summary["best"] = {"metric": metric, "value": best[metric], "round": best["round"]}
    if plan is not None and plan.attackers:
        per_backdoor = {}
        for backdoor in plan.backdoors():
            series = {r["round"]: r["asr"][backdoor.name] for r in rounds if backdoor.name in r.get("asr", {})}
            schedule = plan.schedule_of(backdoor.name)
            entry: dict[str, Any] = {"final_asr": series.get(final["round"]), "max_asr": max(series.values(), default=None)}
            if schedule is not None:
                # Persistence counts from the last round an attacker of this backdoor actually trained
                # (with sampled participation it may be before the schedule's end), else the schedule's.
                implanting = set(plan.attackers_of(backdoor.name))
                trained = [r["round"] for r in rounds if implanting & set(r.get("attackers", []))]
                entry.update(persistence(series, max(trained) if trained else schedule.last_round()))
            local = local_asr_of(rounds, backdoor.name)
            if local:
                entry["local_asr_mean"] = float(np.mean(local))
                entry["local_asr_last"] = local[-1]
            if getattr(backdoor, "part_of", ""):
                entry["part_of"] = backdoor.part_of
            per_backdoor[backdoor.name] = entry
        summary["backdoors"] = per_backdoor
    norms = update_norm_medians(rounds)
    if norms:
        summary["update_norms"] = norms
    detection_rounds = [r for r in rounds if "flagged" in r]
    if detection_rounds:
        flagged = [(pid, r["round"]) for r in detection_rounds for pid in r["flagged"]]
        attackers = [(pid, r["round"]) for r in detection_rounds for pid in r.get("attackers", [])]
        clients = [(pid, r["round"]) for r in detection_rounds for pid in scored_clients(r.get("clients", []), r.get("failures", []))]
        summary["detection"] = detection_scores(flagged, attackers, clients)
    relative_weight = attacker_relative_weight(rounds)
    if relative_weight is not None:
        summary["attacker_relative_weight"] = relative_weight
    return summary
