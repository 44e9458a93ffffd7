"""Running guests from guests/ and reading their reports (TEST/INFO/RESULT lines)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pyxen.domain.builder import Module
from pyxen.domain.domain import DomainConfig, Outcome
from pyxen.toolstack.accel import machine_factory
from pyxen.toolstack.embedded import RunResult, run_image

ROOT = Path(__file__).resolve().parents[1]
GUESTS = ROOT / "guests"
BUILD = GUESTS / "build"
# How long a kit guest may run before a test gives up: generous, since a busy 2-core host
# (and kvm_pvm, which emulates guest ring 0) can make a guest 10x slower than usual.
GUEST_TIMEOUT = 300


def build_guests() -> None:
    done = subprocess.run(["make", "-s", "-C", str(GUESTS)], capture_output=True, text=True)
    assert done.returncode == 0, f"make -C guests failed:\n{done.stdout}{done.stderr}"


def image(name: str) -> Path:
    return BUILD / f"{name}.elf"


@dataclass
class Report:
    """What a kit guest printed, parsed."""

    console: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    info: dict[str, list[str]] = field(default_factory=dict)
    result: tuple[int, int] | None = None

    @classmethod
    def parse(cls, console: bytes) -> Report:
        text = console.decode(errors="replace")
        report = cls(text)
        for line in text.splitlines():
            word, _, rest = line.partition(" ")
            if word == "TEST":
                name, _, verdict = rest.partition(" ")
                if verdict.startswith("PASS"):
                    report.passed.append(name)
                else:
                    report.failed[name] = verdict.removeprefix("FAIL").strip()
            elif word == "INFO":
                key, _, value = rest.partition(" ")
                report.info.setdefault(key, []).append(value)
            elif word == "RESULT":
                passed, failed = rest.split()
                report.result = (int(passed), int(failed))
        return report

    def value(self, key: str) -> str:
        assert key in self.info, f"guest printed no INFO {key}"
        return self.info[key][0]

    def assert_check_passed(self, full: str, outcome: object) -> None:
        """Check `full` passed, and the domain (which ended as `outcome`) powered off."""
        assert full not in self.failed, f"{full}: {self.failed[full]}"
        assert full in self.passed, f"the guest did not report {full}; it ended {outcome}:\n" \
            f"{self.console[-1500:]}"
        assert outcome is Outcome.POWEROFF, f"{full} passed, but the domain ended {outcome}"

    def assert_all_passed(self) -> None:
        assert not self.failed, "guest tests failed:\n" + "\n".join(
            f"  {name}: {why}" for name, why in self.failed.items())
        assert self.result is not None, f"no RESULT line; console was:\n{self.console[-2000:]}"
        assert self.result == (len(self.passed), 0), f"RESULT {self.result} vs {len(self.passed)} PASS lines"
        assert self.passed, "the guest ran no test"


def run_guest(name: str, cmdline: str = "", timeout: float = GUEST_TIMEOUT,
              modules: list[Module] | None = None, accel: str = "auto",
              **config: object) -> tuple[RunResult, Report]:
    """Boot guests/build/NAME.elf in this process on backend `accel`; its outcome and report."""
    cfg = DomainConfig(name=name, cmdline=cmdline, **config)  # type: ignore[arg-type]
    outcome = run_image(image(name), cfg, modules=modules, timeout=timeout,
                        machine_factory=machine_factory(accel)[0])
    return outcome, Report.parse(outcome.console)
