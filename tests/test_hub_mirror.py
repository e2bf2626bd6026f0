"""`from_pretrained("org/name")` for real, through a local Hub mirror: olah on 127.0.0.1 (offline mode) serving
git repos, with `HF_ENDPOINT` pointing at it. The push side writes those git repos through `push_run`, with a
stand-in for HfApi's write methods (no local server offers the upload API)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from conftest import run_pretrain, tiny_run
from hf_mixssl.sharing.hub import push_run


class GitMirrorApi:
    """HfApi's write methods, backed by git repos in olah's mirrors path (``models/<org>/<name>``)."""

    def __init__(self, mirrors: Path) -> None:
        self.mirrors = mirrors

    def _repo(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def _git(self, repo: Path, *args: str) -> None:
        subprocess.run(["git", "-c", "user.email=ci@localhost", "-c", "user.name=ci", *args], cwd=repo, check=True,
                       capture_output=True)

    def create_repo(self, repo_id, **kw):
        repo = self._repo(repo_id)
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            self._git(repo, "init", "-q", "-b", "main")

    def create_branch(self, repo_id, **kw):
        raise AssertionError("not used in these tests")

    def upload_folder(self, *, repo_id, folder_path, commit_message, **kw):
        repo = self._repo(repo_id)
        for f in Path(folder_path).iterdir():
            shutil.copy2(f, repo / f.name)
        self._git(repo, "add", "-A")
        self._git(repo, "commit", "-q", "-m", commit_message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """Start olah (offline, serving ``mirrors/``); yields ``(endpoint, mirrors_dir)``."""
    if shutil.which("olah-cli") is None:
        pytest.fail("olah is not installed: pip install -e '.[dev]'")
    root = tmp_path_factory.mktemp("olah")
    mirrors = root / "mirrors"
    (mirrors / "models").mkdir(parents=True)
    port = _free_port()
    (root / "config.toml").write_text(textwrap.dedent(f"""
        [basic]
        host = "127.0.0.1"
        port = {port}
        repos-path = "{root / 'repos'}"
        mirrors-path = ["{mirrors}"]

        [accessibility]
        offline = true
    """))
    log = open(root / "olah.log", "w")
    proc = subprocess.Popen(["olah-cli", "-c", str(root / "config.toml")], cwd=root, stdout=log,
                            stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/api/models/none/none/revision/main", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # the server answers
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"olah did not start: {(root / 'olah.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield endpoint, mirrors
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


def _load_through_mirror(endpoint: str, tmp: Path, code: str, *, without_hf_mixssl: bool) -> str:
    prelude = "import sys\n" + ('sys.modules["hf_mixssl"] = None\n' if without_hf_mixssl else "import hf_mixssl\n")
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_pushed_runs_load_by_repo_id(tmp_path, cifar10, mirror):
    import hf_mixssl  # noqa: F401
    from transformers import AutoModel

    from hf_mixssl import AutoMixConfig, AutoMixModel

    endpoint, mirrors = mirror
    run = tmp_path / "moco"
    run_pretrain(tiny_run(run, cifar10, max_steps=2, knn_every=0, knn_train_samples=64, knn_test_samples=32))
    api = GitMirrorApi(mirrors)
    push_run(run, "org/moco-tiny", encoder_repo_id="org/moco-tiny-encoder", api=api)
    torch.manual_seed(0)
    automix = tmp_path / "automix"
    AutoMixModel(AutoMixConfig(backbone="test_resnet", num_labels=5, image_size=32)).eval().save_pretrained(automix)
    push_run(automix, "org/automix-tiny", api=api)

    x = torch.randn(2, 3, 32, 32)
    moco = AutoModel.from_pretrained(run).eval()
    torch.save({"x": x, "features": moco.extract_features(x), "encoder": moco.get_encoder().eval()(x),
                "logits": AutoModel.from_pretrained(automix).eval()(x).logits}, tmp_path / "expected.pt")
    check = f"""
        import torch
        from transformers import AutoModel, AutoModelForImageClassification
        e = torch.load({str(tmp_path / 'expected.pt')!r})
        kw = {{"trust_remote_code": True}} if sys.modules["hf_mixssl"] is None else {{}}
        moco = AutoModel.from_pretrained("org/moco-tiny", **kw).eval()
        assert torch.allclose(moco.extract_features(e["x"]), e["features"], atol=1e-5)
        clf = AutoModelForImageClassification.from_pretrained("org/automix-tiny", **kw).eval()
        assert torch.allclose(clf(e["x"]).logits, e["logits"], atol=1e-5)
        print("LOADED", type(moco).__module__, type(clf).__name__)
    """
    with_pkg = _load_through_mirror(endpoint, tmp_path, check, without_hf_mixssl=False)
    assert "LOADED hf_mixssl.models.modeling_moco AutoMixModel" in with_pkg
    without = _load_through_mirror(endpoint, tmp_path, check, without_hf_mixssl=True)
    assert "LOADED transformers_modules" in without

    encoder = _load_through_mirror(endpoint, tmp_path, f"""
        import timm, torch
        from transformers import AutoModel
        e = torch.load({str(tmp_path / 'expected.pt')!r})
        enc = timm.create_model("hf-hub:org/moco-tiny-encoder", pretrained=True).eval()
        assert torch.allclose(enc(e["x"]), e["encoder"], atol=1e-5)
        wrapped = AutoModel.from_pretrained("org/moco-tiny-encoder").eval()
        print("ENCODER", type(wrapped).__name__)
    """, without_hf_mixssl=True)
    assert "ENCODER TimmWrapperModel" in encoder
    card = (mirrors / "models" / "org" / "moco-tiny" / "README.md").read_text()
    knn = json.loads((run / "eval_results.json").read_text())["knn_top1"]
    assert f"| {100 * knn:.2f} |" in card and 'from_pretrained("org/moco-tiny")' in card
