"""Per-round progress lines on the terminal (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console


class Progress:
    """Prints one line per round: round, headline metrics, backdoor ASRs, flagged ids, time."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(highlight=False, soft_wrap=True, markup=False)
        self.quiet = quiet

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"[flowerbed] {text}")

    def round(self, record: dict[str, Any], total: int) -> None:
        if self.quiet:
            return
        parts = [f"round {record['round']:>3}/{total}"]
        for key, value in record.items():
            if key in ("round", "clients", "attackers", "flagged", "detection", "failures", "seconds", "weights"):
                continue
            if isinstance(value, float):
                parts.append(f"{key} {value:.4f}")
            elif isinstance(value, dict) and key == "asr":
                parts.append("asr " + " ".join(f"{name}={asr:.2f}" for name, asr in value.items()))
        if "flagged" in record:
            parts.append(f"flagged {record['flagged']}")
        if record.get("failures"):
            parts.append(f"failures {len(record['failures'])}")
        parts.append(f"{record['seconds']:.1f}s")
        self.console.print("[flowerbed] " + " | ".join(parts))
