"""Pushing a run: the file list is exactly what loading needs, transient errors are retried, and a failed
upload leaves the run directory byte-identical. The Hub's write API is the only thing mocked (it cannot exist
here): a recording stand-in for ``HfApi`` at the boundary."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import HfHubHTTPError

try:  # huggingface_hub >= 2 speaks httpx2, 1.x httpx
    import httpx2 as httpx
except ImportError:
    import httpx

from conftest import REPO, check_loads_without_hf_mixssl, run_pretrain, tiny_run
from hf_mixssl.sharing.hub import PushError, push_run


class RecordingApi:
    """Stands in for HfApi's write methods: records calls and copies each uploaded folder."""

    def __init__(self, tmp: Path, fail_uploads: int = 0, status: int = 503) -> None:
        self.tmp, self.fail_uploads, self.status = tmp, fail_uploads, status
        self.calls: list[tuple] = []
        self.uploaded: dict[str, Path] = {}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, *, repo_id, folder_path, **kw):
        self.calls.append(("upload_folder", repo_id, kw))
        if self.fail_uploads:
            self.fail_uploads -= 1
            request = httpx.Request("POST", f"https://huggingface.co/api/models/{repo_id}/commit/main")
            raise HfHubHTTPError("Service Unavailable", response=httpx.Response(self.status, request=request))
        copy = self.tmp / "uploaded" / repo_id.replace("/", "__")
        shutil.copytree(folder_path, copy)
        self.uploaded[repo_id] = copy


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cifar10):
    out = tmp_path_factory.mktemp("push") / "run"
    run_pretrain(tiny_run(out, cifar10, max_steps=2, knn_every=0, knn_train_samples=64, knn_test_samples=32,
                          checkpointing_steps=1))
    return out


def test_pushed_files_are_exactly_what_loading_needs(tmp_path, run_dir):
    api = RecordingApi(tmp_path)
    before = digest(run_dir)
    push_run(run_dir, "org/moco-tiny", revision="v1", encoder_repo_id="org/moco-tiny-encoder", api=api,
             sleep=lambda s: None)
    assert digest(run_dir) == before  # the card is rendered into the staging dir, not the run
    model_files = {p.name for p in api.uploaded["org/moco-tiny"].iterdir()}
    code = {p.name for p in run_dir.glob("*.py")}
    assert model_files == {"config.json", "model.safetensors", "README.md", "eval_results.json",
                           "training_args.json", "preprocessor_config.json"} | code
    assert "modeling_moco.py" in code and not {"checkpoints", "train.log", "train_log.jsonl"} & model_files
    assert {p.name for p in api.uploaded["org/moco-tiny-encoder"].iterdir()} == {"config.json", "model.safetensors",
                                                                                "README.md"}
    assert ("create_branch", "org/moco-tiny", {"branch": "v1", "exist_ok": True}) in api.calls
    # what was uploaded loads without hf_mixssl (trust_remote_code), to the same features
    import hf_mixssl  # noqa: F401
    from transformers import AutoModel

    model = AutoModel.from_pretrained(run_dir).eval()
    x = torch.randn(2, 3, 32, 32)
    check_loads_without_hf_mixssl(api.uploaded["org/moco-tiny"], "AutoModel", x, model.extract_features(x),
                                  features=True)


def test_transient_errors_are_retried(tmp_path, run_dir):
    api = RecordingApi(tmp_path, fail_uploads=2)
    waits = []
    push_run(run_dir, "org/retry", api=api, sleep=waits.append)
    assert [c[0] for c in api.calls].count("upload_folder") == 3 and waits == [2.0, 4.0]


@pytest.mark.parametrize("status,attempts", [(503, 3), (401, 1)])
def test_failed_upload_leaves_the_run_byte_identical(tmp_path, run_dir, status, attempts):
    api = RecordingApi(tmp_path, fail_uploads=5, status=status)
    before = digest(run_dir)
    with pytest.raises(PushError, match="uploading .* to org/broken failed"):
        push_run(run_dir, "org/broken", api=api, sleep=lambda s: None)
    assert [c[0] for c in api.calls].count("upload_folder") == attempts
    assert digest(run_dir) == before


def test_script_reports_a_bad_run_dir(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "push_to_hub.py"), str(tmp_path), "--repo-id",
                           "org/x"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no config.json" in proc.stderr


def test_pretrain_push_to_hub_uses_the_same_path(tmp_path, cifar10, monkeypatch):
    import hf_mixssl.sharing.hub as hub

    api = RecordingApi(tmp_path)
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: api)
    result = run_pretrain(tiny_run(tmp_path / "run", cifar10, max_steps=1, push_to_hub=True,
                                   hub_model_id="org/pushed"))
    assert set(result["hub"]) == {"model", "encoder"} and set(api.uploaded) == {"org/pushed", "org/pushed-encoder"}
    assert hub.PushError  # the script maps a PushError to exit code 4, keeping the run
    with pytest.raises(ValueError, match="hub_model_id"):
        run_pretrain(tiny_run(tmp_path / "run2", cifar10, push_to_hub=True))
