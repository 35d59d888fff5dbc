"""Model cards (card.py): validated on read, one-line refusals, torch-free, discovery that survives bad packages."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addiagnosis.errors import ModelError
from addiagnosis.models import card as cards
from addiagnosis.models import discovery
from addiagnosis.models.card import CARD, METHOD_CHOICES, METHODS, ModelCard, card_text, read_card
from addiagnosis.models.discovery import find_package, list_packages, scan_packages

LOGIC = Path(cards.__file__).resolve().parents[1]
SHA = "ab" * 32


def valid_card(name="good", **changes) -> dict:
    card = {"format": "addiagnosis-model/1", "name": name, "version": "1",
            "class_names": ["CN", "EMCI", "MCI", "LMCI", "AD"],
            "input_grid": {"shape": [80, 96, 80], "spacing": [2.0, 2.0, 2.0], "orientation": "RAS"},
            "preprocessing": {"kind": "physical", "centre": "fov"},
            "intended_use": "tests only", "training_data": "none",
            "weights": {"file": "weights.pt", "sha256": SHA, "format": "torch-state-dict"}}
    card.update(changes)
    return card


def make_pkg(root: Path, folder: str, card: dict | bytes | str | None = None, weights: bool = True) -> Path:
    """A package folder on disk; the weights are a stand-in file (discovery never reads them)."""
    d = root / folder
    d.mkdir(parents=True)
    data = valid_card(folder) if card is None else card
    if isinstance(data, dict):
        data = json.dumps(data)
    (d / CARD).write_bytes(data if isinstance(data, bytes) else data.encode())
    if weights:
        (d / "weights.pt").write_bytes(b"stand-in")
    return d


def one_line_error(exc: ModelError) -> str:
    text = str(exc)
    assert "\n" not in text and "\r" not in text and len(text) < 400, text
    return text


# ----------------------------------------------------------------------------------------- the schema
def test_import_is_torch_free():
    code = ("import sys, addiagnosis, addiagnosis.models.card as c, addiagnosis.models.discovery as d; "
            "d.scan_packages(); c.card_text(d.default_package().card)"
            " if (d.BUNDLED_DIR / 'addiagnosis-synthetic-demo').exists() else None; "
            "bad = [m for m in ('torch', 'numpy', 'nibabel', 'scipy') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=str(LOGIC))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_method_name_has_one_implementation():
    from addiagnosis.explain import rules
    from addiagnosis.research import synth, train

    # card.py names the methods (torch-free); explain.rules registers one composite per name, and no other
    assert set(rules.COMPOSITES) == set(METHODS) and len(METHODS) == len(set(METHODS))
    assert all(conv in rules.RULES and dense in rules.RULES for conv, dense in rules.COMPOSITES.values())
    assert cards.DEFAULT_METHOD in METHODS
    assert sorted(rules.REFERENCE_METHODS) == ["lrp-reference", "lrp-reference-alpha1.25beta0.25",
                                               "lrp-reference-alpha1beta0"]
    assert METHOD_CHOICES == ("auto", *METHODS)
    assert tuple(synth.CLASSES) == tuple(train.CLASSES) == cards.CLASSES == ("CN", "EMCI", "MCI", "LMCI", "AD")


def test_valid_card_typed_and_forward_compatible(tmp_path):
    data = valid_card(version=3, split={"unit": "subject"}, template_assets={"t1": "mni.nii.gz"},
                      explanation={"method": "lrp-from-the-future"}, synthetic=True, default=True,
                      metrics={"val": {"accuracy": 0.5}})
    pkg = make_pkg(tmp_path, "good", data)
    card = read_card(pkg)
    assert card.name == "good" and card.version == "3"
    assert card.class_names == ("CN", "EMCI", "MCI", "LMCI", "AD")
    assert card.input_grid.shape == (80, 96, 80) and card.input_grid.spacing == (2.0, 2.0, 2.0)
    assert card.preprocessing.kind == "physical" and card.preprocessing.spec["centre"] == "fov"
    assert card.weights.file == "weights.pt" and card.weights.sha256 == SHA
    assert card.synthetic and card.default and card.notices == [cards.SYNTHETIC_NOTICE]
    # unknown keys are kept, in the typed card and through mapping access (code that reads it as a dict)
    assert card.extra == {"split": {"unit": "subject"}, "template_assets": {"t1": "mni.nii.gz"}}
    assert card["template_assets"]["t1"] == "mni.nii.gz" and card.get("missing") is None
    assert card.to_dict() == json.loads((pkg / CARD).read_text())
    # a method this version does not know: the default method, not a failure
    assert card.recommended_method == cards.DEFAULT_METHOD
    assert read_card(make_pkg(tmp_path, "ref", valid_card(explanation={"method": "lrp-reference"}))
                     ).recommended_method == "lrp-reference"
    seedlike = ModelCard.from_dict(valid_card(input_grid={"shape": [160, 256, 256], "spacing": None}))
    assert seedlike.input_grid.spacing is None and seedlike.input_grid.orientation == ""


def test_card_text_summarises():
    text = card_text(valid_card(synthetic=True))
    lines = text.splitlines()
    assert lines[0] == "good 1"
    assert "classes: CN, EMCI, MCI, LMCI, AD" in lines
    assert "input grid: 80x96x80 voxels at 2 x 2 x 2 mm (RAS)" in lines
    assert "explanation: lrp-alpha1beta0 (recommended)" in lines
    assert lines[-1] == cards.SYNTHETIC_NOTICE
    with pytest.raises(ModelError):
        card_text({"name": "x"})


def _deep(n: int):
    v: object = 1
    for _ in range(n):
        v = {"k": v}
    return v


HOSTILE = {
    # case: (card JSON (a dict, or raw bytes/text), expected fragment of the one-line error)
    "top-level null": ("null", "must be a JSON object (got null)"),
    "top-level list": ("[1, 2]", "must be a JSON object (got a list)"),
    "top-level string": ('"card"', "must be a JSON object (got text)"),
    "empty file": ("", "not valid JSON"),
    "not JSON": ("{name: x}", "not valid JSON"),
    "non-UTF-8": (b'{"name": "caf\xe9"}', "not UTF-8"),
    "lone surrogate": ('{"name": "\\ud800"}', "not valid Unicode"),
    "duplicate key": ('{"name": "a", "name": "b"}', "appears twice"),
    "deeply nested JSON": ("[" * 100_000 + "]" * 100_000, "nested more than"),
    "deep extra key": (valid_card(extra=_deep(40)), "nested more than 32"),
    "name null": (valid_card(name=None), "'name' must be text (got null)"),
    "name number": (valid_card(name=5), "'name' must be text (got a number)"),
    "name traversal": (valid_card(name="../evil"), "invalid model name"),
    "name slash": (valid_card(name="a/b"), "invalid model name"),
    "name hidden": (valid_card(name=".x"), "invalid model name"),
    "name newline": (valid_card(name="a\nb"), "one line of text"),
    "no version": ({k: v for k, v in valid_card().items() if k != "version"}, "lacks 'version'"),
    "version object": (valid_card(version={"v": 1}), "'version' must be text (got an object)"),
    "classes null": (valid_card(class_names=None), "'class_names' must be a list"),
    "classes string": (valid_card(class_names="CN,AD"), "(got text)"),
    "one class": (valid_card(class_names=["AD"]), "2 to 1000"),
    "duplicate classes": (valid_card(class_names=["CN", "AD", "CN"]), "'CN' appears twice"),
    "duplicate classes by case": (valid_card(class_names=["CN", "AD", "ad"]), "'ad' appears twice"),
    "empty class": (valid_card(class_names=["CN", ""]), "non-empty"),
    "number class": (valid_card(class_names=["CN", 3]), "a list of text (got a number)"),
    "grid string": (valid_card(input_grid="80x96x80"), "'input_grid' must be an object (got text)"),
    "grid null": (valid_card(input_grid=None), "'input_grid' must be an object (got null)"),
    "shape 2d": (valid_card(input_grid={"shape": [80, 96]}), "'input_grid.shape' must be a list of 3"),
    "shape float": (valid_card(input_grid={"shape": [80.5, 96, 80]}), "input_grid.shape"),
    "shape bool": (valid_card(input_grid={"shape": [True, 96, 80]}), "(got true/false)"),
    "shape negative": (valid_card(input_grid={"shape": [-80, 96, 80]}), "integers from 1"),
    "shape huge": (valid_card(input_grid={"shape": [10**9, 96, 80]}), "integers from 1 to 4096"),
    "shape giant integer": ('{"input_grid": {"shape": [1' + "0" * 400 + ', 8, 8]}, '
                            + json.dumps(valid_card())[1:].replace('"input_grid"', '"_grid"'), "integers from 1"),
    "spacing infinite": (valid_card(input_grid={"shape": [8, 8, 8], "spacing": [1e999, 1, 1]}), "positive numbers"),
    "spacing zero": (valid_card(input_grid={"shape": [80, 96, 80], "spacing": [0, 2, 2]}), "positive numbers"),
    "spacing string": (valid_card(input_grid={"shape": [80, 96, 80], "spacing": "2"}), "(got text)"),
    "spacing NaN": (json.dumps(valid_card(input_grid={"shape": [8, 8, 8], "spacing": [float("nan"), 1, 1]})),
                    "positive numbers"),
    "preprocessing string": (valid_card(preprocessing="template"), "'preprocessing' must be an object"),
    "no preprocessing kind": (valid_card(preprocessing={}), "'preprocessing.kind' must be non-empty text"),
    "intended use null": (valid_card(intended_use=None), "'intended_use' must be text (got null)"),
    "intended use list": (valid_card(intended_use=["x"]), "(got a list)"),
    "no intended use": ({k: v for k, v in valid_card().items() if k != "intended_use"}, "lacks 'intended_use'"),
    "weights string": (valid_card(weights="weights.pt"), "'weights' must be an object (got text)"),
    "no weights": ({k: v for k, v in valid_card().items() if k != "weights"}, "lacks 'weights'"),
    "weights parent": (valid_card(weights={"file": "../x", "sha256": SHA}), "inside the package folder"),
    "weights absolute": (valid_card(weights={"file": "/etc/passwd", "sha256": SHA}), "inside the package"),
    "weights backslash": (valid_card(weights={"file": "..\\x", "sha256": SHA}), "inside the package"),
    "weights folder": (valid_card(weights={"file": ".", "sha256": SHA}), "inside the package"),
    "weights sha short": (valid_card(weights={"file": "weights.pt", "sha256": "abc"}), "64 hexadecimal"),
    "weights sha newline": (valid_card(weights={"file": "weights.pt", "sha256": SHA + "\n"}), "64 hexadecimal"),
    "weights sha null": (valid_card(weights={"file": "weights.pt", "sha256": None}), "(got null)"),
    "weights pickle format": (valid_card(weights={"file": "weights.pt", "sha256": SHA, "format": "pickle"}),
                              "is not 'torch-state-dict'"),
    "explanation string": (valid_card(explanation="lrp"), "'explanation' must be an object"),
    "explanation method number": (valid_card(explanation={"method": 3}), "'explanation.method' must be text"),
    "metrics string": (valid_card(metrics="good"), "'metrics' must be an object"),
    "synthetic string": (valid_card(synthetic="yes"), "'synthetic' must be true or false"),
    "newer format": (valid_card(format="addiagnosis-model/2"), "a newer ADDiagnosis may read it"),
    "other format": (valid_card(format="onnx"), "not an ADDiagnosis model card"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_card_is_refused_in_one_line(tmp_path, case):
    data, needle = HOSTILE[case]
    pkg = make_pkg(tmp_path, "pkg", data)
    with pytest.raises(ModelError) as err:
        read_card(pkg)
    text = one_line_error(err.value)
    assert needle in text, text
    assert text.startswith(str(pkg / CARD) + ": ")


def test_unreadable_and_oversized_cards(tmp_path):
    d = tmp_path / "dir-card"
    (d / CARD).mkdir(parents=True)  # a card.json that cannot be read as a file
    with pytest.raises(ModelError, match="unreadable model card"):
        read_card(d)
    d = tmp_path / "dangling"
    d.mkdir()
    (d / CARD).symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(ModelError, match="unreadable model card"):
        read_card(d)
    d = make_pkg(tmp_path, "big", b'{"x": "' + b"a" * (cards.MAX_CARD_BYTES + 10) + b'"}')
    with pytest.raises(ModelError, match="larger than 8 MB"):
        read_card(d)


def test_weights_symlink_out_of_the_package_is_refused(tmp_path):
    outside = tmp_path / "secret.pt"
    outside.write_bytes(b"x")
    pkg = make_pkg(tmp_path, "pkg", weights=False)
    (pkg / "weights.pt").symlink_to(outside)
    with pytest.raises(ModelError, match="points outside the package folder"):
        read_card(pkg)


# ------------------------------------------------------------------------------- property-based cards
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                      st.text(max_size=12))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
FIELDS = ["name", "version", "class_names", "input_grid", "preprocessing", "intended_use", "training_data",
          "weights", "explanation", "metrics", "synthetic", "default", "format", "notice"]


@st.composite
def card_documents(draw):
    """A valid card with random fields replaced, removed or nested values replaced; or random bytes/JSON."""
    what = draw(st.sampled_from(["mutated", "mutated", "mutated", "json", "bytes"]))
    if what == "bytes":
        return draw(st.binary(max_size=200))
    if what == "json":
        return json.dumps(draw(JSON_VALUE)).encode()
    card = valid_card()
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        action = draw(st.sampled_from(["replace", "delete", "inner"]))
        if action == "delete":
            card.pop(key, None)
        elif action == "inner" and isinstance(card.get(key), dict) and card[key]:
            inner = draw(st.sampled_from(sorted(card[key])))
            card[key] = {**card[key], inner: draw(JSON_VALUE)}
        elif action == "inner" and isinstance(card.get(key), list) and card[key]:
            i = draw(st.integers(0, len(card[key]) - 1))
            card[key] = [*card[key][:i], draw(JSON_VALUE), *card[key][i + 1:]]
        else:
            card[key] = draw(JSON_VALUE)
    return json.dumps(card, allow_nan=True).encode()


@pytest.fixture(scope="module")
def prop_pkg(tmp_path_factory):
    d = tmp_path_factory.mktemp("prop") / "pkg"
    d.mkdir()
    (d / "weights.pt").write_bytes(b"stand-in")
    return d


@settings(max_examples=50, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(doc=card_documents())
def test_random_cards_give_a_card_or_one_line_model_error(prop_pkg, doc):
    (prop_pkg / CARD).write_bytes(doc)
    try:
        card = read_card(prop_pkg)
    except ModelError as exc:
        one_line_error(exc)
        return
    # a card that passed is usable by everything that reads one
    assert isinstance(card, ModelCard) and len(card.class_names) >= 2
    assert card.recommended_method in METHODS
    assert card_text(card).startswith(card.name)
    again = ModelCard.from_dict(card.to_dict(), prop_pkg)
    assert json.dumps(again.to_dict()) == json.dumps(card.to_dict()) and again.class_names == card.class_names


# ----------------------------------------------------------------------------------------- discovery
@pytest.fixture()
def search(tmp_path, monkeypatch):
    """An isolated search path: two env folders, a user folder and a bundled folder."""
    roots = {k: tmp_path / k for k in ("env1", "env2", "home", "bundled")}
    for r in roots.values():
        r.mkdir()
    monkeypatch.setenv("ADDIAGNOSIS_MODEL_PATH", os.pathsep.join([str(roots["env1"]), str(roots["env2"])]))
    monkeypatch.setenv("ADDIAGNOSIS_HOME", str(roots["home"]))
    (roots["home"] / "models").mkdir()
    roots["user"] = roots["home"] / "models"
    monkeypatch.setattr(discovery, "BUNDLED_DIR", roots["bundled"])
    return roots


def test_bad_packages_are_skipped_with_one_warning_each(search, caplog):
    make_pkg(search["env1"], "a")
    make_pkg(search["env1"], "b-null", "null")
    make_pkg(search["env1"], "c-traversal", valid_card("c", weights={"file": "../a/weights.pt", "sha256": SHA}))
    make_pkg(search["env2"], "d-latin1", b'{"name": "\xe9"}')
    make_pkg(search["env2"], "e-no-weights", valid_card("e"), weights=False)
    make_pkg(search["user"], "f")
    (search["user"] / "g-dangling").mkdir()
    (search["user"] / "g-dangling" / CARD).symlink_to(search["user"] / "nowhere")
    (search["user"] / "not-a-package").mkdir()  # no card.json: not a package, no warning
    (search["user"] / ".a.tmp-123").mkdir()  # an interrupted import: hidden, ignored
    (search["user"] / "stray-file.txt").write_text("x")
    make_pkg(search["bundled"], "h", valid_card("h", default=True))
    with caplog.at_level(logging.WARNING, logger="addiagnosis"):
        found = list_packages()
    assert [p.name for p in found] == ["a", "f", "h"]
    assert [p.origin for p in found] == ["env", "user", "bundled"]
    warned = [r.getMessage() for r in caplog.records if r.name == "addiagnosis"]
    assert len(warned) == 5, warned
    for bad, needle in (("b-null", "got null"), ("c-traversal", "inside the package folder"),
                        ("d-latin1", "not UTF-8"), ("e-no-weights", "weights file is missing"),
                        ("g-dangling", "unreadable model card")):
        line = next(w for w in warned if f"/{bad}/" in w)
        assert line.startswith("addiagnosis: warning: skipping model package: ") and needle in line
        assert "\n" not in line
    assert discovery.default_package().name == "h"


def test_models_command_survives_bad_packages(search, tmp_path):
    make_pkg(search["env1"], "a")
    make_pkg(search["env1"], "b", '{"name": {"deep": [[[[["x"]]]]]}}')
    make_pkg(search["user"], "c", valid_card("c", input_grid="80x96x80"))
    code = (f"import sys; import addiagnosis.models.discovery as c; "
            f"c.BUNDLED_DIR = c.Path({str(search['bundled'])!r}); "
            "from addiagnosis.cli.main import main; sys.exit(main(['models']))")
    env = dict(os.environ, PYTHONPATH=str(LOGIC), ADDIAGNOSIS_MODEL_PATH=str(search["env1"]),
               ADDIAGNOSIS_HOME=str(search["home"]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all(x.startswith("addiagnosis: warning: skipping model package: ") for x in lines)
    assert "'name' must be text (got an object)" in proc.stderr and "'input_grid' must be an object" in proc.stderr
    assert proc.stdout.startswith("a 1: classes CN/EMCI/MCI/LMCI/AD") and "search order for --model NAME" in proc.stdout


def test_precedence_and_shadowing(search, capsys):
    from addiagnosis.cli.main import main

    bundled = make_pkg(search["bundled"], "demo", valid_card("demo", default=True))
    user = make_pkg(search["user"], "demo", valid_card("demo", version="user"))
    env2 = make_pkg(search["env2"], "demo-copy", valid_card("demo", version="env2"))
    make_pkg(search["env2"], "other", valid_card("other"))
    both = list_packages(include_shadowed=True)
    assert [(p.name, p.version, p.origin) for p in both] == [
        ("demo", "env2", "env"), ("other", "1", "env"), ("demo", "user", "user"), ("demo", "1", "bundled")]
    # --model NAME: the first on the search path; it shadows the later ones, which say by whom
    named = find_package("demo")
    assert named.path == env2 and named.shadows == (user, bundled)
    assert [p.shadowed_by for p in both if p.path in (user, bundled)] == [env2, env2]
    assert [p.name for p in list_packages()] == ["demo", "other"]
    # a plain diagnose: the bundled default, never a same-named package from the user folder or env path
    assert find_package(None).path == bundled and find_package("").origin == "bundled"
    # a folder path names exactly that package
    assert find_package(str(user)).path == user
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert (f"[env]\n    {env2}\n    shadows {user} (same name: --model demo picks the one above)\n"
            f"    shadows {bundled} (same name") in out
    assert f"demo 1: classes CN/EMCI/MCI/LMCI/AD, grid 80x96x80, preprocessing physical [default, bundled]\n" \
           f"    {bundled}\n    shadowed by {env2} (a plain diagnose still runs this one)" in out
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    default = [p for p in listed if p["default"]]
    assert len(default) == 1 and default[0]["path"] == str(bundled) and default[0]["shadowed_by"] == str(env2)
    assert listed[0]["shadows"] == [str(user), str(bundled)] and listed[0]["card"]["version"] == "env2"


def test_default_without_bundled_packages(search):
    with pytest.raises(ModelError, match="no model package installed"):
        find_package()
    make_pkg(search["user"], "u1")
    make_pkg(search["user"], "u2", valid_card("u2", default=True))
    assert find_package().name == "u2"
    with pytest.raises(ModelError, match=r"unknown model 'nope' \(installed: u1, u2\)"):
        find_package("nope")


def test_same_folder_twice_on_the_path_counts_once(search, monkeypatch):
    make_pkg(search["env1"], "a")
    monkeypatch.setenv("ADDIAGNOSIS_MODEL_PATH", os.pathsep.join([str(search["env1"])] * 2))
    found = list_packages(include_shadowed=True)
    assert [p.name for p in found] == ["a"] and found[0].shadows == ()


def test_a_name_is_not_taken_from_the_working_folder(search, tmp_path, monkeypatch):
    """``--model demo`` means the installed package, even if the working folder holds a 'demo' folder."""
    make_pkg(search["user"], "demo")
    local = tmp_path / "cwd"
    make_pkg(local, "demo", valid_card("demo", version="local"))
    monkeypatch.chdir(local)
    assert find_package("demo").version == "1"
    assert find_package("./demo").version == "local"
    with pytest.raises(ModelError, match="no such model package folder"):
        find_package("./nothing")
    (local / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty: not a model package \(no card.json\)"):
        find_package(str(local / "empty"))
    make_pkg(local, "only-here")
    assert find_package("only-here").path == Path("only-here")  # no package of that name: the folder


def test_scan_packages_never_raises_on_unlistable_folders(search, monkeypatch, caplog):
    make_pkg(search["user"], "ok")
    (search["env1"] / "x").mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == search["env1"]:
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    monkeypatch.setattr(discovery, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="addiagnosis"):
        assert [p.name for p in scan_packages()] == ["ok"]
    assert any("cannot list this folder (Permission denied)" in r.getMessage() for r in caplog.records)
