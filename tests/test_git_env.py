"""Git state and environment, from real temporary repositories into every backend's store;
secrets never stored."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import clearml_series, mlflow_run
from mlflow.tracking import MlflowClient

import tracelet
from tracelet.collectors.environment import describe, installed_distributions, redact_argv, requirements
from tracelet.collectors.git import collect, redact_url
from tracelet.secrets import is_secret_name, redact_params

SECRET = "s3cr3t-t0ken-4711"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch, store_at) -> Path:
    path = tmp_path / "repo"
    store_at(path / "mlflow.db")  # the runs' store, untracked: in no diff, and not "dirty"
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "dev@example.com")
    git(path, "config", "user.name", "Dev")
    (path / "train.py").write_text("print('v1')\n")
    git(path, "add", "train.py")
    git(path, "commit", "-q", "-m", "first")
    git(path, "remote", "add", "origin", f"https://alice:{SECRET}@example.com/org/repo.git")
    monkeypatch.chdir(path)
    monkeypatch.setenv("TRACELET_TRACK_GIT", "1")
    return path


def _mlflow_tags_and_artifacts(report) -> tuple[dict, list[str]]:
    run_id = report.backends["mlflow"].location.run_id
    client = MlflowClient(tracking_uri=report.backends["mlflow"].location.uri)
    artifacts = [a.path for a in client.list_artifacts(run_id)] + [
        a.path for a in client.list_artifacts(run_id, "git")
    ]
    return mlflow_run(run_id, report.backends["mlflow"].location.uri).data.tags, artifacts


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://alice:tok@example.com/org/repo.git", "https://example.com/org/repo.git"),
        ("https://ghp_abc123@github.com/org/repo.git", "https://github.com/org/repo.git"),
        ("https://example.com:8443/org/repo.git", "https://example.com:8443/org/repo.git"),
        ("ssh://git:pw@host:2222/repo", "ssh://host:2222/repo"),
        ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
    ],
)
def test_credentials_are_removed_from_remote_urls(url, expected):
    assert redact_url(url) == expected


def test_a_clean_repository(repo):
    info = collect(str(repo))
    assert info.commit == git(repo, "rev-parse", "HEAD") and info.branch == "main"
    assert info.dirty is False and info.diff == "" and info.remote == "https://example.com/org/repo.git"


def test_a_dirty_repository_records_the_diff_in_every_backend(repo):
    (repo / "train.py").write_text("print('v2')\n")
    report = tracelet.start_logging(backend=["mlflow", "wandb", "clearml"])
    report = tracelet.stop_logging()
    tags, artifacts = _mlflow_tags_and_artifacts(report)
    assert tags["mlflow.source.git.commit"] == git(repo, "rev-parse", "HEAD")
    assert tags["mlflow.source.git.branch"] == "main" and tags["git.dirty"] == "True"
    assert tags["mlflow.source.git.repoURL"] == "https://example.com/org/repo.git"
    assert "git/uncommitted.diff" in artifacts
    wandb_dir = Path(report.backends["wandb"].location.uri)
    assert "+print('v2')" in (wandb_dir / "files" / "git" / "uncommitted.diff").read_text()
    task = clearml_series(report.backends["clearml"].location.uri)[1]
    assert task["script"]["repository"] == "https://example.com/org/repo.git"
    assert task["script"]["branch"] == "main" and "+print('v2')" in task["script"]["diff"]


def test_a_detached_head_and_a_repository_without_commits(repo, tmp_path):
    git(repo, "checkout", "-q", git(repo, "rev-parse", "HEAD"))
    assert collect(str(repo)).branch is None
    report = tracelet.start_logging()
    report = tracelet.stop_logging()
    tags, _ = _mlflow_tags_and_artifacts(report)
    assert tags["git.branch"] == "(detached HEAD)" and "mlflow.source.git.branch" not in tags

    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    info = collect(str(empty))
    assert info.commit is None and info.branch is not None and info.diff == ""


def test_not_a_repository_records_no_git_and_does_not_fail(tmp_path, monkeypatch, store_at):
    outside = tmp_path / "plain"
    store_at(outside / "mlflow.db")
    monkeypatch.chdir(outside)
    monkeypatch.setenv("TRACELET_TRACK_GIT", "1")
    assert collect(str(outside)) is None
    tracelet.start_logging()
    report = tracelet.stop_logging()
    tags, _ = _mlflow_tags_and_artifacts(report)
    assert not any(k.startswith(("git.", "mlflow.source.git")) for k in tags)


def test_outside_a_repository_gitpython_is_not_even_imported(tmp_path):
    code = "import sys; from tracelet.collectors.git import collect; "
    code += "print(collect(sys.argv[1]), 'git' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["None", "False"]


def test_the_package_list_is_what_importlib_metadata_reads():
    expected = set()
    for dist in importlib.metadata.distributions():
        if dist.metadata and dist.metadata["Name"]:
            expected.add(f"{dist.metadata['Name']}=={dist.version}")
    installed = installed_distributions()
    assert set(requirements(installed).splitlines()) == expected
    assert describe([], installed=installed)["env.torch"] == importlib.metadata.version("torch")


def test_environment_tags_and_package_list(monkeypatch):
    monkeypatch.setenv("TRACELET_TRACK_ENV", "1")
    tracelet.start_logging()
    report = tracelet.stop_logging()
    tags, _artifacts = _mlflow_tags_and_artifacts(report)
    assert tags["env.python"] == ".".join(map(str, sys.version_info[:3]))
    assert {"env.platform", "env.hostname", "env.command", "env.torch", "env.lightning"} <= set(tags)
    run_id = report.backends["mlflow"].location.run_id
    client = MlflowClient(tracking_uri=report.backends["mlflow"].location.uri)
    assert [a.path for a in client.list_artifacts(run_id, "environment")] == ["environment/requirements.txt"]
    text = Path(client.download_artifacts(run_id, "environment/requirements.txt", "dl")).read_text()
    assert "mlflow==" in text and "wrapt==" in text


def test_command_line_secrets_and_secret_params_are_redacted():
    argv = ["train.py", "--api-key", "sk-1", "--token=sk-2", "--lr", "0.1", f"https://u:{SECRET}@h/x"]
    assert redact_argv(argv) == ["train.py", "--api-key", "***", "--token=***", "--lr", "0.1", "https://h/x"]
    assert redact_params({"lr": 1, "wandb_api_key": "k", "db": {"password": "p", "host": "h"}}) == {
        "lr": 1,
        "wandb_api_key": "***",
        "db": {"password": "***", "host": "h"},
    }


def test_no_planted_secret_reaches_any_stored_byte(repo, tmp_path):
    script = repo / "job.py"
    script.write_text(
        textwrap.dedent(f"""
        import tracelet
        exp = tracelet.start_logging(backend=["mlflow", "wandb", "clearml"], api_key="{SECRET}-apikey")
        exp.log_params({{"lr": 0.1, "hf_token": "{SECRET}-param"}})
        tracelet.stop_logging()
    """)
    )
    env = {**__import__("os").environ, "TRACELET_TRACK_ENV": "1"}
    out = subprocess.run(
        [sys.executable, str(script), "--password", f"{SECRET}-argv"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert SECRET not in out.stdout + out.stderr
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and ".git" not in p.parts and p.name != "job.py"]
    assert any(p.name == "mlflow.db" for p in stored) and any(p.suffix == ".wandb" for p in stored)
    leaks = [str(p) for p in stored if SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_argparse_values_become_args_params_with_secrets_redacted(monkeypatch):
    import argparse

    original = vars(argparse.ArgumentParser)["parse_known_args"]
    monkeypatch.setenv("TRACELET_TRACK_ENV", "1")
    tracelet.start_logging(backend="fake_backends:Recording")
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--wandb-api-key")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("train").add_argument("--epochs", type=int, default=3)
    parser.parse_args(["--lr", "0.5", "--wandb-api-key", "sk-xyz", "train", "--epochs", "7"])
    tracelet.stop_logging()
    from fake_backends import recorded

    params = [line[1] for line in recorded() if line[0] == "Params"]
    assert params == [{"args": {"lr": 0.5, "wandb_api_key": "***", "command": "train", "epochs": 7}}]
    assert vars(argparse.ArgumentParser)["parse_known_args"] is original


@pytest.mark.parametrize(
    "name",
    [
        "wandb_api_key",
        "HF_TOKEN",
        "apiKey",
        "db_password",
        "mytoken",
        "AWS_SECRET_ACCESS_KEY",
        "x.credentials",
    ],
)
def test_secret_looking_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["max_tokens", "tokenizer", "keypoints", "author", "monkey", "num_keys", "secretary"]
)
def test_names_that_only_contain_a_secret_word_are_kept(name):
    assert not is_secret_name(name)
