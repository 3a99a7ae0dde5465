"""Settings precedence (argument > config > environment > default) and every error message."""

from __future__ import annotations

import pytest

import tracelet
from tracelet.backends import base as backends
from tracelet.config import OPTIONS, ConfigError, resolve


def test_defaults_without_any_source():
    settings = resolve({}, {}, {})
    assert settings.backend == ("mlflow",)
    assert settings.project is None and settings.exp_name is None
    assert settings.track_lightning is True and settings.writer == "process"


def test_argument_beats_config_beats_environment_beats_default():
    env = {"TRACELET_PROJECT": "from-env", "TRACELET_EXPERIMENT_NAME": "env-run", "TRACELET_QUEUE_SIZE": "7"}
    config = {"project": "from-config", "exp_name": "config-run"}
    settings = resolve({"project": "from-arg"}, config, env)
    assert settings.project == "from-arg"
    assert settings.exp_name == "config-run"
    assert settings.queue_size == 7
    assert settings.stop_timeout == 30.0


@pytest.mark.parametrize(
    "value, expected",
    [
        ("mlflow", ("mlflow",)),
        ("mlflow, wandb", ("mlflow", "wandb")),
        (["MLflow", "wandb", "mlflow"], ("mlflow", "wandb")),
        ("pkg.mod:MyBackend", ("pkg.mod:MyBackend",)),
    ],
)
def test_backend_takes_a_name_a_comma_list_or_a_list(value, expected):
    assert resolve({"backend": value}, {}, {}).backend == expected


def test_environment_backend_list_is_comma_separated():
    assert resolve({}, {}, {"TRACELET_BACKEND": "mlflow,wandb"}).backend == ("mlflow", "wandb")


@pytest.mark.parametrize(
    "config, env, message",
    [
        (
            {"track_lightning": "maybe"},
            {},
            "invalid value 'maybe' for 'track_lightning' (from config['track_lightning'])",
        ),
        (
            {},
            {"TRACELET_STRICT": "2"},
            "for 'strict' (from environment variable TRACELET_STRICT): expected a boolean",
        ),
        ({"queue_size": 0}, {}, "for 'queue_size' (from config['queue_size']): expected a positive integer"),
        ({}, {"TRACELET_QUEUE_SIZE": "lots"}, "expected a positive integer"),
        ({"stop_timeout": -1}, {}, "expected a positive number of seconds"),
        ({"writer": "fork"}, {}, "expected one of: process, thread"),
        ({"backend": []}, {}, "expected at least one backend name"),
        ({"backend": 3}, {}, "expected a backend name"),
        ({"project": 5}, {}, "for 'project' (from config['project']): expected a string"),
    ],
)
def test_bad_values_name_the_setting_and_its_source(config, env, message):
    with pytest.raises(ConfigError) as error:
        resolve({}, config, env)
    assert message in str(error.value)


def test_unknown_config_key_suggests_the_close_one_and_lists_all():
    with pytest.raises(ConfigError) as error:
        resolve({}, {"trak_lightning": True}, {})
    text = str(error.value)
    assert "unknown config key 'trak_lightning'" in text
    assert "Did you mean 'track_lightning'?" in text
    assert all(option.key in text for option in OPTIONS)


@pytest.mark.fresh_store  # checks what is (not) created in the working directory
def test_start_logging_fails_fast_on_bad_config_without_starting_a_run(tmp_path):
    with pytest.raises(ConfigError):
        tracelet.start_logging(config={"queue_size": "x"})
    assert tracelet.get_active_experiment() is None
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_backend_lists_the_available_ones():
    with pytest.raises(ConfigError) as error:
        tracelet.start_logging(backend="neptune")
    assert "unknown backend 'neptune'" in str(error.value)
    assert "Available backends: clearml, journal, mlflow, wandb" in str(error.value)


@pytest.mark.parametrize(
    ("given", "source"),
    [
        ({"backend": "mlfow"}, "(from argument backend=)"),
        ({"config": {"backend": "mlfow"}}, "(from config['backend'])"),
        ({}, "(from environment variable TRACELET_BACKEND)"),
    ],
)
def test_an_unknown_backend_says_where_it_was_given_and_what_was_meant(given, source, monkeypatch):
    monkeypatch.setenv("TRACELET_BACKEND", "mlfow")
    with pytest.raises(ConfigError) as error:
        tracelet.start_logging(**given)
    assert f"unknown backend 'mlfow' {source}. Did you mean 'mlflow'?" in str(error.value)


def test_known_backend_without_its_sdk_names_the_extra_to_install(monkeypatch):
    missing = backends.BUILTINS["mlflow"]._replace(sdk_module="mlflow_sdk_that_is_not_installed")
    monkeypatch.setitem(backends.BUILTINS, "mlflow", missing)
    with pytest.raises(ConfigError) as error:
        tracelet.start_logging(backend="mlflow")
    assert "pip install 'tracelet[mlflow]'" in str(error.value)


def test_api_key_never_appears_in_repr_or_public_settings():
    settings = resolve({"api_key": "sk-secret-123"}, {}, {})
    assert "sk-secret-123" not in repr(settings)
    assert "api_key" not in settings.public()


@pytest.mark.parametrize("document", ["README.md", "docs/configuration.md"])
def test_configuration_tables_match_the_settings_the_code_accepts(document):
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / document).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `") and "TRACELET_" in line]
    documented = {(row.split("|")[1].strip(" `"), row.split("|")[2].strip(" `")) for row in rows}
    assert documented == {(option.key, option.env) for option in OPTIONS}
    defaults = {row.split("|")[1].strip(" `"): row.split("|")[3].strip(" `") for row in rows}

    def shown(value):
        if value is None:
            return {"none", "derived"}
        if isinstance(value, bool):
            return {str(value).lower()}
        if isinstance(value, tuple):
            return {",".join(value)}
        if isinstance(value, float) and value.is_integer():
            return {str(int(value))}
        return {str(value)}

    for option in OPTIONS:
        assert defaults[option.key] in shown(option.default), (
            option.key,
            defaults[option.key],
            option.default,
        )


@pytest.mark.parametrize("value", ["0.5", "soon", 0, True])
def test_metrics_interval_must_be_at_least_one_second(value):
    with pytest.raises(ConfigError) as error:
        resolve({}, {"metrics_interval": value}, {})
    assert (
        "for 'metrics_interval' (from config['metrics_interval']): expected a number of seconds, at least 1"
        in str(error.value)
    )
