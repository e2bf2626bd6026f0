"""Model cards rendered from a real run: real numbers, metadata that round-trips, no placeholders."""

import json

import pytest
from huggingface_hub import ModelCard

from conftest import run_pretrain, tiny_run
from hf_mixssl.sharing.cards import TEMPLATES, render_model_card, results_of


@pytest.fixture(scope="module")
def moco_run(tmp_path_factory, cifar10):
    out = tmp_path_factory.mktemp("card") / "moco_run"
    run_pretrain(tiny_run(out, cifar10, max_steps=2, knn_every=0, knn_train_samples=64, knn_test_samples=32,
                          unmix=True))
    return out


def test_run_writes_a_card_with_its_real_results(moco_run):
    evals = json.loads((moco_run / "eval_results.json").read_text())
    card = ModelCard.load(moco_run / "README.md")  # written at the end of the run
    results = card.data.eval_results
    assert [r.metric_value for r in results] == [round(100 * evals["knn_top1"], 2)]
    assert results[0].dataset_name == "cifar10" and results[0].dataset_split == "test"
    assert card.data.library_name == "transformers" and "moco-v2" in card.data.tags and "un-mix" in card.data.tags
    text = card.content
    assert "{{" not in text and "{%" not in text
    assert f"| {results[0].metric_name[:-4]} | {100 * evals['knn_top1']:.2f} |" in text
    assert "arxiv.org/abs/2003.04297" in text and "shen2022unmix" in text  # MoCo v2 + Un-Mix references
    assert "trust_remote_code=True" in text and "local-dir:" in text  # usage incl. the exported timm encoder
    import hf_mixssl  # noqa: F401
    from transformers import AutoModel

    model = AutoModel.from_pretrained(moco_run)
    assert f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M in total" in text


def test_card_follows_later_evaluations_and_repo_id(moco_run):
    path = moco_run / "eval_results.json"
    evals = json.loads(path.read_text())
    path.write_text(json.dumps({**evals, "backbone_linear_top1": 0.4321, "backbone_linear_top5": 0.9}))
    try:
        card = render_model_card(moco_run, repo_id="org/moco-tiny")
    finally:
        path.write_text(json.dumps(evals))
    names = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert names["quick linear-probe top-1, backbone features (%)"] == 43.21
    assert 'AutoModel.from_pretrained("org/moco-tiny")' in card.content and "hf-hub:org/moco-tiny-encoder" in card.content
    reloaded = ModelCard(str(card))
    assert reloaded.data.model_name == "moco-tiny"


def test_results_of_ignores_counts_and_names_features():
    rows = results_of({"global_step": 3, "knn_top1": 0.5, "knn_test_samples": 10, "cls_linear_top1": 0.25,
                       "top1": 0.7, "top1_online": 0.8, "method": "x"})
    assert [(k, v) for k, _, v in rows] == [("knn_top1", 50.0), ("cls_linear_top1", 25.0), ("top1", 70.0),
                                            ("top1_online", 80.0)]
    # fine-tuning scores are this model's too; random-init baselines are not
    rows = results_of({"backbone_finetune_top1": 0.6, "random_init_backbone_knn_top1": 0.2})
    assert [(k, label, v) for k, label, v in rows] == [("backbone_finetune_top1", "fine-tuned top-1, backbone features",
                                                        60.0)]


def test_every_method_has_a_template():
    from hf_mixssl.methods import get_method, list_methods

    assert {p.stem for p in TEMPLATES.glob("*.md")} == {get_method(m).card_template for m in list_methods()}
