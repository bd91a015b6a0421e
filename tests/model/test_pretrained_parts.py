"""The paper and released starts against the public checkpoints, key for key (issue 17).

- Full size, meta only: the committed manifests equal a fresh build from the public classes, and the
  key map of each pretrained profile covers them exactly (every project tensor one source, every
  source tensor used or ignored with a reason); broken manifests are caught.
- On disk, shrunken: real file layouts and key names, loaded through ``from_params`` from the local
  store, equal the same weights placed by hand, down to the restored image.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.public_parts import PADDING_ROWS, params_for, stage
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen3ForCausalLM

from prefrestore.core.config import load
from prefrestore.model import from_params
from prefrestore.model.ar import ArIntegrator, extend_vocabulary, qwen3_config
from prefrestore.model.config import ModelConfig
from prefrestore.model.connectors import Connector
from prefrestore.model.flow import FlowSchedule
from prefrestore.model.generator import build_transformer, build_vae
from prefrestore.model.headers import CheckpointError
from prefrestore.model.manifest import manifest_tensors, read_manifest, stale_manifests
from prefrestore.model.model import PrefRestoreModel
from prefrestore.model.params_count import extended_vocab_size
from prefrestore.model.parts import PARTS
from prefrestore.model.restore import restore
from prefrestore.model.tokenizer import SemanticTokenizer
from prefrestore.model.weight_map import assignments, coverage, project_tensors, start_for


def _manifest_files(cfg: ModelConfig) -> dict:
    return {p: manifest_tensors(read_manifest(p)) for p in start_for(cfg).parts}


def test_committed_manifests_equal_a_fresh_build_from_the_public_classes() -> None:
    assert stale_manifests(PARTS) == []


@pytest.mark.parametrize("profile", ["paper", "released"])
def test_full_size_key_map_covers_the_manifests_exactly(profile: str) -> None:
    cfg = load(profile).section("model", ModelConfig)
    plan = assignments(cfg)
    assert sorted(a.target for a in plan) == sorted(project_tensors(cfg))  # one assignment per project tensor
    reports = coverage(cfg, _manifest_files(cfg))
    for name, rep in reports.items():
        assert rep.ok, (name, rep.missing[:3], rep.unexpected[:3], rep.mismatched[:3])
    sources = [(s.part, s.key) for a in plan for s in a.sources]
    assert len(sources) == len(set(sources))  # no source tensor feeds two project tensors
    used = {p: sum(1 for part, _ in sources if part == p) for p in reports}
    for name, rep in reports.items():  # every tensor of a weights part is used or on the ignore list
        if rep.use == "weights":
            assert used[name] + rep.ignored == read_manifest(name)["num_tensors"], name
    fresh = {a.target.split(".")[0] for a in plan if a.kind == "fresh"}
    assert fresh == ({"diffusion_connector", "vae_connector"} if profile == "paper" else {"vae_connector"})


def test_coverage_reports_a_renamed_key_a_wrong_shape_and_an_extra_key() -> None:
    cfg = load("paper").section("model", ModelConfig)
    files = _manifest_files(cfg)
    sana = dict(files["sana-1.5-1.6b"])
    sana["proj_out.weightX"] = sana.pop("proj_out.weight")
    shape, dtype = sana["caption_norm.weight"]
    sana["caption_norm.weight"] = ((shape[0] + 1,), dtype)
    files["sana-1.5-1.6b"] = sana
    files["ta-tok"] = {**files["ta-tok"], "encoder.extra.weight": ((3,), "F32")}
    reports = coverage(cfg, files)
    assert reports["sana-1.5-1.6b"].missing == ["proj_out.weight"]
    assert reports["sana-1.5-1.6b"].unexpected == ["proj_out.weightX"]
    assert [m.split(":")[0] for m in reports["sana-1.5-1.6b"].mismatched] == ["caption_norm.weight"]
    assert reports["ta-tok"].unexpected == ["encoder.extra.weight"]
    assert not reports["sana-1.5-1.6b"].ok and reports["qwen3-0.6b"].ok


def _hand_placed(cfg: ModelConfig, store: Path, loaded: PrefRestoreModel) -> PrefRestoreModel:
    """The same weights put in place module by module, without the key map (the connectors are fresh by
    design, so they are copied from ``loaded``)."""
    ar_dir = store / ("Qwen3-0.6B" if cfg.init == "qwen3_parts" else "BLIP3o-NEXT-SFT-3B")
    tok = AutoTokenizer.from_pretrained(ar_dir, local_files_only=True)
    extend_vocabulary(tok, cfg.tokenizer.codebook_size, cfg.ar.num_scale_tokens)
    lm = Qwen3ForCausalLM(qwen3_config(cfg.ar, extended_vocab_size(cfg)))
    width = cfg.generator.caption_channels
    model = PrefRestoreModel(cfg, SemanticTokenizer(cfg.tokenizer),
                             ArIntegrator(cfg.ar, lm, tok, cfg.tokenizer.codebook_size, cfg.num_image_tokens),
                             Connector(cfg.ar.hidden_size, width), Connector(cfg.generator.inner_dim, width),
                             build_transformer(cfg.generator, cfg.vae.latent_channels, cfg.latent_size, 0),
                             build_vae(cfg.vae), "")
    sd = torch.load(store / "TA-Tok" / "ta_tok.pth", weights_only=True)["model"]["sd"]
    model.tokenizer.vision.load_state_dict({k.removeprefix("encoder."): v for k, v in sd.items()
                                            if k.startswith("encoder.") and not k.startswith("encoder.head.")})
    task = model.tokenizer.encode_task_layer
    task[0].load_state_dict({"weight": sd["encode_task_layer.0.weight"], "bias": sd["encode_task_layer.0.bias"]})
    task[2].load_state_dict({"weight": sd["bottleneck.in_linear.weight"], "bias": sd["bottleneck.in_linear.bias"]})
    with torch.no_grad():
        model.tokenizer.codebook.copy_(F.linear(sd["bottleneck.regularizer.embedding.weight"],
                                                sd["bottleneck.regularizer.embedding_proj.weight"],
                                                sd["bottleneck.regularizer.embedding_proj.bias"]))
    sana_dir = store / "SANA1.5_1.6B_1024px_diffusers"
    model.vae.load_state_dict(load_file(str(sana_dir / "vae" / "diffusion_pytorch_model.safetensors")))
    if cfg.init == "qwen3_parts":
        q = {k: v.float() for k, v in load_file(str(ar_dir / "model.safetensors")).items()}
        n = cfg.ar.text_vocab_size
        emb = q.pop("model.embed_tokens.weight")
        assert emb.shape[0] == n + PADDING_ROWS
        full = torch.cat([emb[:n], emb[:n].mean(0, keepdim=True).expand(lm.model.embed_tokens.num_embeddings - n, -1)])
        lm.model.load_state_dict({"embed_tokens.weight": full, **{k.removeprefix("model."): v for k, v in q.items()}})
        model.transformer.load_state_dict(load_file(str(sana_dir / "transformer" / "diffusion_pytorch_model.safetensors")))
        model.diffusion_connector.load_state_dict(loaded.diffusion_connector.state_dict())
    else:
        q: dict[str, torch.Tensor] = {}
        for shard in sorted(ar_dir.glob("model-*.safetensors")):
            q.update({k: v.float() for k, v in load_file(str(shard)).items()})
        lm.model.load_state_dict({k.removeprefix("model."): v for k, v in q.items()
                                  if k.startswith("model.") and k.split(".")[1] in ("embed_tokens", "layers", "norm")})
        model.transformer.load_state_dict({k.removeprefix("model.sana."): v for k, v in q.items()
                                           if k.startswith("model.sana.")})
        model.diffusion_connector.load_state_dict({k.removeprefix("model.diffusion_connector."): v for k, v in q.items()
                                                   if k.startswith("model.diffusion_connector.")})
    model.vae_connector.load_state_dict(loaded.vae_connector.state_dict())
    return model.eval()


@pytest.mark.parametrize("init", ["qwen3_parts", "blip3o_next"])
def test_pretrained_load_from_the_store_equals_hand_placed_weights(
        init: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(tmp_path))
    stage(tmp_path, init)
    params = params_for(init)
    model = from_params(params).eval()  # the code path of `bootstrap` for the paper / released profiles
    assert model.cfg.vae.scaling_factor == 0.5  # from vae/config.json, not params.yaml (null there)
    assert torch.allclose(model.diffusion_connector[3].weight, torch.full_like(model.diffusion_connector[3].weight,
                          5.5**0.5)) == (init == "qwen3_parts")  # fresh: sqrt(5.5); released: BLIP3o-NEXT's trained one
    hand = _hand_placed(model.cfg, tmp_path, model)
    ours, theirs = model.state_dict(), hand.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    schedule = params.section("flow", FlowSchedule)
    lq = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    kw = {"seed": 3, "steps": 2, "cfg_scale": 2.0, "schedule": schedule}
    out = restore(model, lq, None, **kw)
    assert torch.equal(out, restore(hand, lq, None, **kw))
    assert out.shape == lq.shape and out.std() > 0


def _write_truncated(path: Path, drop: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - drop])


def test_loader_refuses_a_truncated_or_renamed_file_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFRESTORE_MODEL_STORE", str(tmp_path))
    stage(tmp_path, "qwen3_parts")
    params = params_for("qwen3_parts")
    vae_file = tmp_path / "SANA1.5_1.6B_1024px_diffusers" / "vae" / "diffusion_pytorch_model.safetensors"
    _write_truncated(vae_file, 100)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors: truncated: key '.+' ends at") as e:
        from_params(params)
    assert "\n" not in str(e.value)
    stage(tmp_path, "qwen3_parts")  # restore, then rename one key in the TA-Tok file
    ckpt = torch.load(tmp_path / "TA-Tok" / "ta_tok.pth", weights_only=True)
    sd = ckpt["model"]["sd"]
    sd["bottleneck.in_proj.weight"] = sd.pop("bottleneck.in_linear.weight")
    torch.save(ckpt, tmp_path / "TA-Tok" / "ta_tok.pth")
    with pytest.raises(CheckpointError, match=r"ta_tok\.pth: missing key bottleneck\.in_linear\.weight"):
        from_params(params)


def test_manifest_records_sources_and_the_ta_tok_facts() -> None:
    m = read_manifest("ta-tok")
    assert m["code"]["repo"] == "csuhan/Tar" and len(m["code"]["commit"]) == 40
    assert m["tensors"]["bottleneck.regularizer.embedding.weight"][0] == [65536, 1536]
    assert m["tensors"]["encode_task_layer.0.weight"][0] == [1152, 1152]
    assert "encode_task_layer.2.weight" not in m["tensors"]  # TA-Tok's task layer is Linear + Tanh only
    assert "secondary" in m["config"]["bottleneck_dim"]["source"]  # a public copy, not csuhan's file
    next_m = read_manifest("blip3o-next-sft-3b")
    assert next_m["tensors"]["model.diffusion_connector.0.weight"][0] == [2304, 2048]
    assert "model.sana.caption_projection.linear_1.weight" in next_m["tensors"]
    assert json.loads(json.dumps(PARTS["qwen3-0.6b"].manifest())) == read_manifest("qwen3-0.6b")
