from pathlib import Path

import pytest

from gmai_pipeline.profiles import PROFILES, MissingVariableError, load_resource_config


def test_variables_expand_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "llm.yaml").write_text(
        "base_url: ${MY_URL:-http://localhost:8000/v1}\nkey_env: ${MY_KEY}\nn:\n  - ${N:-2}\n"
    )
    monkeypatch.delenv("MY_URL", raising=False)
    monkeypatch.setenv("MY_KEY", "from-env")
    cfg = load_resource_config("llm", "p", root=tmp_path)
    assert cfg == {"base_url": "http://localhost:8000/v1", "key_env": "from-env", "n": ["2"]}
    monkeypatch.setenv("MY_URL", "http://vllm:8000/v1")
    assert load_resource_config("llm", "p", root=tmp_path)["base_url"] == "http://vllm:8000/v1"


def test_missing_profile_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        load_resource_config("llm", "nope", root=tmp_path)


def test_missing_resource_file_is_empty(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    assert load_resource_config("storage", "p", root=tmp_path) == {}


@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_profiles_exist_and_parse(profile: str) -> None:
    for resource in ("llm", "gpu_cluster"):
        assert isinstance(load_resource_config(resource, profile), dict)


def test_required_variable_fails_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "training.yaml").write_text(
        "base_model: ${MODEL_DIR:?a model folder}\nx: ${EMPTY:-d}\n"
    )
    monkeypatch.delenv("MODEL_DIR", raising=False)
    monkeypatch.setenv("EMPTY", "")
    with pytest.raises(MissingVariableError, match=r"training.yaml: set MODEL_DIR \(a model folder\)"):
        load_resource_config("training", "p", root=tmp_path)
    monkeypatch.setenv("MODEL_DIR", "/models/m")
    assert load_resource_config("training", "p", root=tmp_path) == {"base_model": "/models/m", "x": "d"}


def test_redact_masks_url_credentials_keys_and_secret_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from gmai_pipeline.redact import has_credentials, redact, redact_url

    monkeypatch.setenv("GMAI_CELERY_BROKER_URL", "redis://:brokerpass77@redis:6379/0")
    text = (
        "POST http://alice:hunter2hunter@vllm.internal:8000/v1/chat/completions failed; "
        "key sk-proj-abcdefgh12345678; broker redis://:brokerpass77@redis:6379/0; Bearer tok_0123456789"
    )
    out = redact(text)
    for secret in ("hunter2hunter", "alice", "sk-proj-abcdefgh12345678", "brokerpass77", "tok_0123456789"):
        assert secret not in out
    assert "vllm.internal:8000/v1/chat/completions" in out  # still says where it went
    assert (
        redact_url("http://u:p@h:81/v1") == "http://***@h:81/v1"
        and redact_url("http://h/v1") == "http://h/v1"
    )
    assert has_credentials("https://u:p@h/v1") and not has_credentials("http://127.0.0.1:8000/v1")


def test_literal_credentials_in_a_profile_are_refused(tmp_path: Path) -> None:
    from gmai_pipeline.defs.generation import LLMResource

    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "llm.yaml").write_text(
        "backend: openai\nmodel: gpt-4o-2024-08-06\nbase_url: http://u:pw123@h/v1\n"
    )
    with pytest.raises(
        ValueError, match=r"llm.yaml: base_url carries credentials \(http://\*\*\*@h/v1\)"
    ) as err:
        LLMResource.from_profile("p", root=tmp_path)
    assert "pw123" not in str(err.value)
