"""Every built-in plugin (strategy, attack, trigger, workload) has a test of its own.

The shared checks (tests/test_strategies.py, test_attacks.py, test_triggers.py) iterate the
registries, so a new plugin runs through them as soon as it registers. This file asks for
more: some test written for it. A plugin counts as tested when a test function that is not
a shared check names it, in its body or in its ``parametrize`` decorator (directly or
through a module-level table the decorator names):

- by its registered name as a string, e.g. ``build("krum")`` or ``parametrize("name", ["flame"])``
  (a string names every kind registered under it: the attack and the trigger "dba" share one);
- or by its class, or anything else defined in the class's module, imported from flowerbed,
  e.g. ``FrequencyTrigger(...)`` or ``foolsgold_weights(...)``.

Not counted: module-level tables the shared checks read (e.g. ``REPORTS``), and any test
that iterates a registry (it calls ``.names()`` or uses a module-level name built from it).
A test naming more than half of a kind's plugins is a hand-written list of them, i.e. a
shared check too, and does not count for that kind.

Only built-in plugins are checked: the registered classes defined under ``flowerbed``
(tests that register a user's plugin, e.g. the docs examples, do not change the result).
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path

from flowerbed.platform.registry import ATTACKS, STRATEGIES, TRIGGERS, WORKLOADS, Registry, load_plugins

TESTS = Path(__file__).resolve().parent
REGISTRIES: dict[str, Registry] = {"strategy": STRATEGIES, "attack": ATTACKS, "trigger": TRIGGERS, "workload": WORKLOADS}



def builtin_plugins() -> dict[tuple[str, str], object]:
    """(kind, name) -> registered class, for the plugins defined in flowerbed itself."""
    load_plugins()
    plugins = {}
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            obj = registry.get(name)
            if getattr(obj, "__module__", "").startswith("flowerbed."):
                plugins[(kind, name)] = obj
    return plugins


@dataclass
class Mentions:
    """What one specific (not shared) test function names: string constants and objects it refers to."""

    test: str
    strings: set[str] = field(default_factory=set)
    objects: list[object] = field(default_factory=list)

    def names(self, name: str, plugin: object) -> bool:
        """Whether the test names the plugin registered as ``name``: the string, its class, or its module's code."""
        module = getattr(plugin, "__module__", None)
        return name in self.strings or any(
            found is plugin or getattr(found, "__module__", None) == module or getattr(found, "__name__", None) == module
            for found in self.objects
        )


def imported_names(tree: ast.Module) -> dict[str, tuple[str, str | None]]:
    """Local name -> (module, attribute or None for the module itself), from the imports of flowerbed
    (plugins live there; other modules, e.g. a test's user plugins, are never imported here)."""
    imports: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                imports[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imports[alias.asname] = (alias.name, None)
                else:
                    top = alias.name.split(".")[0]
                    imports[top] = (top, None)
    return {name: source for name, source in imports.items() if source[0].split(".")[0] == "flowerbed"}


def resolve(node: ast.expr, imports: dict[str, tuple[str, str | None]]) -> object | None:
    """The object an imported ``Name`` or ``Name.attr.attr`` refers to (None if it is not imported or fails)."""
    chain: list[str] = []
    while isinstance(node, ast.Attribute):
        chain.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in imports:
        return None
    module, attribute = imports[node.id]
    try:
        obj = importlib.import_module(module)
        for part in ([attribute] if attribute else []) + chain:
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - a name that does not resolve names nothing
        return None
    return obj


def iterates_a_registry(nodes: list[ast.AST], registry_derived: set[str]) -> bool:
    """Whether ``nodes`` call ``<anything>.names()`` or use a module-level name built from such a call."""
    for node in (sub for root in nodes for sub in ast.walk(root)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "names":
            return True
        if isinstance(node, ast.Name) and node.id in registry_derived:
            return True
    return False


def specific_tests(source: str, filename: str = "<test>") -> list[Mentions]:
    """What each test function of ``source`` that is not a shared check names (see the module docstring)."""
    tree = ast.parse(source, filename)
    imports = imported_names(tree)
    assigned: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigned[node.target.id] = node.value
    registry_derived: set[str] = set()
    while True:  # names built from .names(), directly or through one another
        more = {name for name, value in assigned.items() if iterates_a_registry([value], registry_derived)}
        if more <= registry_derived:
            break
        registry_derived |= more
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.name.startswith("test"):
            continue
        own: list[ast.AST] = [*node.decorator_list, *node.body]
        if iterates_a_registry(own, registry_derived):
            continue
        tables = [
            assigned[sub.id]
            for decorator in node.decorator_list
            for sub in ast.walk(decorator)
            if isinstance(sub, ast.Name) and sub.id in assigned
        ]
        mentions = Mentions(f"{filename}::{node.name}")
        for sub in (sub for root in own + tables for sub in ast.walk(root)):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                mentions.strings.add(sub.value)
            elif isinstance(sub, (ast.Name, ast.Attribute)):
                obj = resolve(sub, imports)
                if obj is not None:
                    mentions.objects.append(obj)
        found.append(mentions)
    return found


def naming_tests(plugins: dict[tuple[str, str], object], tests: list[Mentions]) -> dict[tuple[str, str], list[str]]:
    """(kind, name) -> the specific tests that name the plugin (empty list: none)."""
    kind_sizes = {kind: sum(1 for k, _ in plugins if k == kind) for kind in REGISTRIES}
    covered: dict[tuple[str, str], list[str]] = {key: [] for key in plugins}
    for test in tests:
        named = [key for key, obj in plugins.items() if test.names(key[1], obj)]
        for kind, size in kind_sizes.items():
            of_kind = [key for key in named if key[0] == kind]
            if size > 2 and len(of_kind) > size / 2:  # a hand-written list of the kind's plugins
                continue
            for key in of_kind:
                covered[key].append(test.test)
    return covered


def all_specific_tests() -> list[Mentions]:
    tests = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.resolve() != Path(__file__).resolve():
            tests += specific_tests(path.read_text(), str(path.relative_to(TESTS)))
    return tests


def test_every_builtin_plugin_has_a_test_of_its_own():
    """Each registered strategy, attack, trigger and workload of flowerbed is named by a test written for it."""
    plugins = builtin_plugins()
    for kind in REGISTRIES:
        assert any(k == kind for k, _ in plugins), f"no built-in {kind} is registered"
    covered = naming_tests(plugins, all_specific_tests())
    untested = sorted(key for key, tests in covered.items() if not tests)
    assert not untested, (
        f"built-in plugins without a test of their own: {untested}. The shared checks already run them;"
        " also write a test that names each one (its registered name as a string, its class or other code of its module)"
    )


def test_only_specific_tests_count():
    """The rule itself: a shared check, a table it reads and a hand-written list count for nobody."""
    source = '''
import pytest
from flowerbed.platform.registry import STRATEGIES
from flowerbed.strategies.anomaly_detection.foolsgold import foolsgold_weights
from flowerbed.strategies.core.updates import clip_factors
from flowerbed.strategies.robust_aggregation import krum as krum_module
from flowerbed.strategies.robust_aggregation import rfa
from flowerbed.strategies.robust_aggregation.median import Median

NAMES = STRATEGIES.names()
SHARED = [name for name in NAMES if name != "fltrust"]
PARAMS = {"bulyan": {"num-malicious": 1}}
TWINS = [("rlr", 1)]
EVERY = ["fedavg", "krum", "multi-krum", "bulyan", "median", "trimmed-mean", "dp-fixed-clipping", "norm-clipping",
         "flame", "foolsgold", "fltrust", "rlr", "rfa", "centered-clipping", "deepsight", "freqfed"]

@pytest.mark.parametrize("name", SHARED)
def test_shared(name):
    params = PARAMS.get(name, {"tau": 1} if name == "centered-clipping" else None)

def test_shared_loop():
    for name in STRATEGIES.names():
        assert name != "foolsgold"

@pytest.mark.parametrize("name", EVERY)
def test_hand_list(name):
    pass

def test_flame():
    assert STRATEGIES.get("flame")

@pytest.mark.parametrize(("name", "x"), TWINS)
def test_twins(name, x):
    pass

def test_classes_and_their_modules_code():
    Median, krum_module.Krum, foolsgold_weights, rfa, clip_factors  # clip_factors: shared code, names nobody
'''
    plugins = builtin_plugins()
    covered = naming_tests(plugins, specific_tests(source))
    named = sorted(name for (kind, name), tests in covered.items() if tests)
    assert named == ["flame", "foolsgold", "krum", "median", "rfa", "rlr"]
