"""Point 9 (and the YAML halves of points 5 and 11) of the hardening issue: one strict YAML loader.

Every configuration file goes through `gmai_pipeline.safe_yaml`; these tests load real catalog
entries, profiles and mixture files through the public loaders that use it.
"""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from gmai_pipeline import safe_yaml
from gmai_pipeline.catalog import CatalogError, load_catalog, load_source
from gmai_pipeline.profiles import load_resource_config
from gmai_pipeline.release.mixtures import load_mixtures

ENTRY = """\
name: {name}
title: Test dataset
license: CC-BY-4.0
modality: X-Ray
department: Pulmonary Medicine
task_type: 2d_cls
clinical_task: Disease Diagnosis
reader:
  kind: image_folder
labels:
  no: no finding
  yes: finding present
  on: switched on
external_llm_allowed: false
provenance:
  source: tests
"""


def _write(folder: Path, name: str, text: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_yaml_12_booleans_keep_label_keys_as_written(tmp_path: Path) -> None:
    source = load_source(_write(tmp_path, "ok_ds", ENTRY.format(name="ok_ds")))
    assert source.labels == {"no": "no finding", "yes": "finding present", "on": "switched on"}
    assert source.external_llm_allowed is False
    data = safe_yaml.loads("a: 0755\nb: 1:20\nc: 2020-01-31\nd: off\ne: TRUE\nf: 0x1f\ng: .nan\nh: ~\n")
    assert data["a"] == 755 and data["b"] == "1:20" and data["c"] == "2020-01-31" and data["d"] == "off"
    assert data["e"] is True and data["f"] == 31 and data["g"] != data["g"] and data["h"] is None


def test_duplicate_key_is_an_error_naming_file_key_and_lines(tmp_path: Path) -> None:
    text = ENTRY.format(name="dup_ds").replace(
        "external_llm_allowed: false\n", "external_llm_allowed: true\nexternal_llm_allowed: false\n"
    )
    path = _write(tmp_path / "cat", "dup_ds", text)
    _write(tmp_path / "cat", "ok_ds", ENTRY.format(name="ok_ds"))
    with pytest.raises(CatalogError) as err:
        load_catalog((tmp_path / "cat",))
    msg = str(err.value)
    assert str(path) in msg and "duplicate key 'external_llm_allowed'" in msg
    assert "first on line 14, again on line 15" in msg


def test_duplicate_keys_refused_in_profiles_and_mixtures(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "llm.yaml").write_text("backend: openai\nmodel: a\nmodel: b\n")
    with pytest.raises(safe_yaml.YamlError, match="llm.yaml.*duplicate key 'model'"):
        load_resource_config("llm", "p", root=tmp_path)
    mix = tmp_path / "mixtures.yaml"
    mix.write_text("seed: a\nseed: b\nstages: {}\n")
    with pytest.raises(safe_yaml.YamlError, match="mixtures.yaml.*duplicate key 'seed'"):
        load_mixtures(mix)


def test_latin1_catalog_file_names_the_file_and_the_byte(tmp_path: Path) -> None:
    text = ENTRY.format(name="latin_ds").replace("Test dataset", "Données").encode("latin-1")
    path = _write(tmp_path, "latin_ds", text)
    with pytest.raises(CatalogError) as err:
        load_source(path)
    assert str(path) in str(err.value) and "not UTF-8 (byte 0xe9" in str(err.value)


def test_alias_bomb_is_refused_before_expansion(tmp_path: Path) -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join(f"*{prev}" for _ in range(9)) + "]")
    bomb = ENTRY.format(name="bomb_ds").replace("provenance:", "\n".join(lines) + "\nprovenance:")
    path = _write(tmp_path, "bomb_ds", bomb)  # 9**9 = 387 million leaves if expanded
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CatalogError, match="bomb_ds.yaml: more than 200000 nodes once aliases are expanded"):
        load_source(path)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64, f"loading the alias bomb grew the peak RSS by {grown_mib:.0f} MiB"
    with pytest.raises(safe_yaml.YamlError, match="recursive alias"):
        safe_yaml.loads("a: &a [*a]", "r.yaml")


def test_python_tags_stay_refused() -> None:
    with pytest.raises(safe_yaml.YamlError, match="could not determine a constructor"):
        safe_yaml.loads("!!python/object/apply:os.system ['true']", "t.yaml")
