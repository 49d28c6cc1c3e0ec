"""Pretrained checkpoints in (lazy_neuron.pretrained, `lazy-neuron import`).

The fixtures under tests/fixtures/pretrained/ are tiny random models written by transformers / timm
themselves, with those libraries' logits and forward-hook activation counts
(scripts/make_pretrained_fixtures.py; versions in versions.json).
"""
import json
import os
import shutil

import jax
import numpy as np
import pytest

from lazy_neuron import cli, pretrained
from lazy_neuron import results as results_lib
from lazy_neuron.errors import UserError
from lazy_neuron.pretrained import tensors

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained")
# name -> path under FIXTURES
KINDS = {"t5_v1_0": "t5_v1_0", "t5_v1_1": "t5_v1_1", "timm_vit": "timm_vit", "hf_vit": "hf_vit",
         "big_vision_vit": "big_vision_vit.npz"}
BATCH_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "image")


@pytest.fixture(scope="module")
def loaded():
  return {name: pretrained.load(os.path.join(FIXTURES, path)) for name, path in KINDS.items()}


def _ref(name):
  return np.load(os.path.join(FIXTURES, f"{name}_ref.npz"))


@pytest.mark.parametrize("name", list(KINDS))
def test_logits_and_hook_sparsity_equal_the_source_library(name, loaded):
  model, ref = loaded[name], _ref(name)
  batch = {k: ref[k] for k in BATCH_KEYS if k in ref.files}
  logits, metrics = model.apply(batch)
  logits, want = np.asarray(logits), ref["logits"]
  if "decoder_target_tokens" in batch:
    # The 370-id vocabulary is padded to 384 (a multiple of 128): the real ids' logits are the
    # library's, on the real target positions.
    assert logits.shape[-1] == 384 and want.shape[-1] == 370
    real = batch["decoder_target_tokens"] > 0
    logits, want = logits[..., :370][real], want[real]
  # f32 forward passes of a few hundred multiply-adds per output: well inside 1e-4 relative.
  err = np.max(np.abs(logits - want)) / np.max(np.abs(want))
  assert err <= 1e-4, err
  layers = sorted({k.split("/")[1] + "/" + k.split("/")[2] for k in ref.files
                   if k.startswith("hook/")})
  assert layers and all(f"sparsity/eval/{l}/nonzero_frac" in metrics for l in layers)
  d_ff = model.config.model.mlp_dim
  for layer in layers:
    h = lambda key: int(ref[f"hook/{layer}/{key}"])
    entries = h("tokens") * d_ff
    nonzero = round(metrics[f"sparsity/eval/{layer}/nonzero_frac"] * entries)
    # Equal, up to the entries within 1e-5 of zero (whose sign may follow the summation order).
    assert abs(nonzero - h("nonzero")) <= h("borderline"), (layer, nonzero, h("nonzero"))
    if model.config.model.activation != "relu":  # the magnitude-threshold curve (CATS / TEAL)
      for t in pretrained.MAGNITUDE_THRESHOLDS:
        below = round(metrics[f"sparsity/eval/{layer}/frac_abs_le_{t:g}"] * entries)
        assert abs(below - h(f"below_{t:g}")) <= h(f"border_{t:g}"), (layer, t)


def test_formats_and_sizes_come_from_the_weights(loaded):
  kinds = {name: m.kind for name, m in loaded.items()}
  assert kinds == {"t5_v1_0": "hf_t5", "t5_v1_1": "hf_t5", "timm_vit": "timm_vit",
                   "hf_vit": "hf_vit", "big_vision_vit": "big_vision_vit"}
  v10, v11 = loaded["t5_v1_0"].config.model, loaded["t5_v1_1"].config.model
  assert (v10.mlp_gated, v10.logits_via_embedding, v10.activation) == (False, True, "relu")
  assert (v11.mlp_gated, v11.logits_via_embedding, v11.activation) == (True, False, "gelu_tanh")
  assert "wi_0" in loaded["t5_v1_1"].params["encoder"]["layer_00"]["mlp"]
  vit = loaded["hf_vit"].config.model
  assert (vit.width, vit.depth, vit.mlp_dim, vit.num_heads, vit.patch_size,
          vit.layer_norm_eps) == (32, 2, 64, 4, 4, 1e-12)
  # Vocabulary padding rows are zeros (never a real id).
  emb = np.asarray(loaded["t5_v1_0"].params["shared_embedding"]["embedding"])
  assert emb.shape == (384, 16) and not emb[370:].any() and emb[:370].any()


# ------------------------------------------------------------------------------------- T5X
def _t5x_target(hf: dict) -> dict:
  """A Hugging Face T5's weights in t5x's `t5.network` layout (names relative to "target"; flax
  kernels [in, out] = torch weights transposed; relative bias [heads, buckets])."""
  t = lambda name: np.ascontiguousarray(hf[name].T)
  out = {"token_embedder/embedding": hf["shared.weight"]}
  for stack in ("encoder", "decoder"):
    out[f"{stack}/relpos_bias/rel_embedding"] = t(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    out[f"{stack}/{stack}_norm/scale"] = hf[f"{stack}.final_layer_norm.weight"]
    parts = ([("pre_attention_layer_norm", "attention")] if stack == "encoder" else
             [("pre_self_attention_layer_norm", "self_attention"),
              ("pre_cross_attention_layer_norm", "encoder_decoder_attention")])
    for i in range(2):
      for j, (norm, att) in enumerate(parts):
        hf_att = f"{stack}.block.{i}.layer.{j}." + ("EncDecAttention" if j else "SelfAttention")
        out[f"{stack}/layers_{i}/{norm}/scale"] = hf[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"]
        for kind, short in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
          out[f"{stack}/layers_{i}/{att}/{kind}/kernel"] = t(f"{hf_att}.{short}.weight")
      m = len(parts)
      out[f"{stack}/layers_{i}/pre_mlp_layer_norm/scale"] = hf[
          f"{stack}.block.{i}.layer.{m}.layer_norm.weight"]
      for w in ("wi", "wi_0", "wi_1", "wo"):
        if f"{stack}.block.{i}.layer.{m}.DenseReluDense.{w}.weight" in hf:
          out[f"{stack}/layers_{i}/mlp/{w}/kernel"] = t(
              f"{stack}.block.{i}.layer.{m}.DenseReluDense.{w}.weight")
  if "decoder.block.0.layer.2.DenseReluDense.wi_0.weight" in hf:  # v1.1: its own output matrix
    out["decoder/logits_dense/kernel"] = t("lm_head.weight" if "lm_head.weight" in hf
                                           else "shared.weight")
  return out


def _write_t5x(name: str, model_dir, step: int = 1000) -> str:
  """The HF fixture `name` as t5x's Checkpointer writes it: MODEL_DIR/checkpoint_<step>/ with a
  msgpack `checkpoint` = {"version": 3, "optimizer": {"target": ..., "state": {"step",
  "param_states"}}} whose parameters are TensorStore zarr specs (gzip, path relative to the
  folder: target.encoder.layers_0.mlp.wi.kernel) or, for the norm scales, arrays in the msgpack
  (what t5x writes for unpartitioned leaves). Returns the checkpoint folder."""
  import tensorstore as ts
  from flax import serialization
  from flax.traverse_util import unflatten_dict
  from safetensors.numpy import load_file
  hf = load_file(os.path.join(FIXTURES, KINDS[name], "model.safetensors"))
  folder = os.path.join(model_dir, f"checkpoint_{step}")
  os.makedirs(folder)
  target = {}
  for path, array in _t5x_target(hf).items():
    if path.endswith("norm/scale"):
      target[path] = array
      continue
    rel = ("target/" + path).replace("/", ".")
    spec = {"driver": "zarr", "dtype": "float32", "kvstore": {"driver": "file", "path": rel},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                         "chunks": [max(1, n // 2) for n in array.shape]}}  # several chunks
    store = ts.open({**spec, "kvstore": {"driver": "file", "path": os.path.join(folder, rel)}},
                    create=True, open=True).result()
    store.write(array).result()
    target[path] = ts.Spec(spec).to_json()
  state = {"step": np.int32(step),
           "param_states": {"encoder": {"encoder_norm": {"scale": {"v": np.zeros(16, np.float32)}}}}}
  contents = {"version": 3, "optimizer": {"target": unflatten_dict(target, sep="/"),
                                          "state": state}}
  with open(os.path.join(folder, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(contents))
  return folder


@pytest.fixture(scope="module")
def t5x_dirs(tmp_path_factory):
  return {name: _write_t5x(name, tmp_path_factory.mktemp(name)) for name in ("t5_v1_0", "t5_v1_1")}


@pytest.mark.parametrize("name", ["t5_v1_0", "t5_v1_1"])
def test_t5x_checkpoint_loads_the_same_model_as_its_hugging_face_twin(name, loaded, t5x_dirs):
  """The same weights written as a T5X checkpoint (msgpack + zarr, as t5x writes it) load into
  the same parameters, logits and sparsity as through the Hugging Face path, and so match
  transformers' logits; found from the checkpoint folder, its `checkpoint` file or the model
  folder above it (latest step)."""
  folder = t5x_dirs[name]
  model, twin = pretrained.load(os.path.dirname(folder)), loaded[name]
  assert model.kind == "t5x" and twin.kind == "hf_t5"
  assert {k: v for k, v in model.config.model.items()} == dict(twin.config.model)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(model.params)[0],
                          jax.tree.leaves(twin.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  ref = _ref(name)
  batch = {k: ref[k] for k in BATCH_KEYS if k in ref.files}
  (logits, metrics), (want, want_metrics) = model.apply(batch), twin.apply(batch)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=0,
                             atol=8 * np.finfo(np.float32).eps * float(np.max(np.abs(want))))
  assert metrics.keys() == want_metrics.keys()
  for key, value in want_metrics.items():  # exact counts over the same activations
    assert metrics[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
  assert pretrained.convert(os.path.join(folder, "checkpoint")).kind == "t5x"


@pytest.mark.parametrize("fmt", ["hf_t5", "t5x"])
def test_sharded_load_reads_each_shard_straight_into_its_device(fmt, t5x_dirs):
  """On 8 fake devices, tensor parallel: every MLP kernel is read region by region (never whole:
  from the memory-mapped safetensors, or the zarr chunks through tensorstore), and the sharded
  parameters equal the single-device load."""
  from lazy_neuron import steps as steps_lib
  from lazy_neuron.import_cmd import build_config
  src = os.path.join(FIXTURES, "t5_v1_1") if fmt == "hf_t5" else t5x_dirs["t5_v1_1"]
  conv = pretrained.convert(src)
  config, info = build_config(conv, None, ["config.mesh=[('data', 2), ('model', 4)]",
                                           "config.sharding_rules=tensor_parallel"])
  setup = steps_lib.build_setup(config, info=info)
  reads = []
  for path, leaf in conv.leaves.items():
    leaf.read = (lambda r, path=path: lambda b: (reads.append((path, b)), r(b))[1])(leaf.read)
  with jax.set_mesh(setup.mesh):
    params = tensors.materialize(conv.leaves, setup.abstract_state["params"],
                                 setup.state_shardings["params"], setup.model, src)
  wi = params["encoder"]["layer_00"]["mlp"]["wi_0"]["kernel"]
  assert len(wi.sharding.device_set) == 8
  assert {s.data.shape for s in wi.addressable_shards} == {(16, 8)}  # 32 columns over 4
  mlp_reads = [b for p, b in reads if p.endswith("mlp/wi_0/kernel")]
  assert mlp_reads and all(b[1][1] - b[1][0] == 8 for b in mlp_reads)
  want = pretrained.load(src).params
  for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))


def _cli(*args) -> int:
  return cli.main(["lazy-neuron", *map(str, args)])


# The whole chain on one T5 and one ViT kind; the other kinds import with the step-0 evaluation
# and report (the same eval / train code runs on every imported workdir).
FULL_CHAIN = ("t5_v1_1", "timm_vit")


@pytest.mark.parametrize("name", [*KINDS, "t5x"])
def test_import_eval_train_report_from_the_command_line(name, tmp_path, capsys, t5x_dirs):
  wd = tmp_path / "wd"
  full = name in FULL_CHAIN
  src = (os.path.dirname(t5x_dirs["t5_v1_1"]) if name == "t5x"
         else os.path.join(FIXTURES, KINDS[name]))
  assert _cli("import", f"--src={src}", f"--workdir={wd}",
              "--config.eval_batch_size=64", "--no-eval" if full else "--eval") == 0
  assert {"config.json", "config.py", "sharding_plan.txt", "pretrained.json",
          "checkpoints"} <= set(os.listdir(wd))
  if name == "t5x":
    assert json.loads((wd / "pretrained.json").read_text())["kind"] == "t5x"
  if full:
    assert _cli("eval", f"--workdir={wd}") == 0
  results = json.loads((wd / "eval_0.json").read_text())
  assert 0 < results["sparsity/eval/mean/nonzero_frac"] <= 1
  if name in ("t5_v1_1", "t5x"):  # non-ReLU: the magnitude-threshold curve is measured, rising
    curve = [results[f"sparsity/eval/mean/frac_abs_le_{t:g}"]
             for t in pretrained.MAGNITUDE_THRESHOLDS]
    assert curve == sorted(curve) and curve[-1] > curve[0]
  if full:
    assert _cli("train", f"--config={wd / 'config.py'}", f"--workdir={wd}",
                "--config.total_steps=1", "--config.eval_every_steps=0") == 0
    assert "resumed from" in capsys.readouterr().out
    assert sorted(os.listdir(wd / "checkpoints"))[-1] == "1"
  else:
    assert (wd / "metrics.jsonl").exists() and (wd / "sparsity" / "step_0.npz").exists()
  assert _cli("report", f"--out={tmp_path / 'report'}", wd) == 0
  assert (tmp_path / "report" / "index.html").exists()
  # Non-ReLU checkpoints: the report draws the magnitude-threshold curve (its summary the numbers).
  relu = json.loads((wd / "config.json").read_text())["model"]["activation"] == "relu"
  assert (tmp_path / "report" / "wd" / "magnitude_curve.png").exists() != relu
  summary = json.loads((tmp_path / "report" / "summary.json").read_text())["runs"][0]
  if not relu:
    curve = summary["magnitude"]
    assert curve["thresholds"] == list(pretrained.MAGNITUDE_THRESHOLDS)
    # (eval data after the step-0 evaluation; train data after `train`, which did not evaluate)
    assert curve["split"] == ("train" if full else "eval")
    final = results_lib.load_run(str(wd)).final(f"sparsity/{curve['split']}/mean/frac_abs_le_1")
    assert curve["mean"][-1] == pytest.approx(final)
    assert sorted(curve["layers"]) == sorted({k.split("/")[2] + "/" + k.split("/")[3]
                                              for k in results if "/layer_" in k})


def _bad_t5(tmp_path, edit=None, drop=None, files=None):
  src = tmp_path / "src"
  shutil.copytree(os.path.join(FIXTURES, "t5_v1_0"), src)
  if edit:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(edit)
    (src / "config.json").write_text(json.dumps(cfg))
  if drop:
    (src / drop).unlink()
  for name, text in (files or {}).items():
    (src / name).write_text(text)
  return src


BAD = {
    "unknown": (lambda t: (t / "src").mkdir() or (t / "src" / "weights.pt").write_text("x") and
                t / "src", "no config.json (found weights.pt)"),
    "unknown file": (lambda t: (t / "m.ckpt").write_text("x") and t / "m.ckpt",
                     "is a file lazy_neuron does not know"),
    "incomplete": (lambda t: _bad_t5(t, drop="model.safetensors"),
                   "config.json but no model.safetensors"),
    "missing shard": (lambda t: _bad_t5(t, files={"model.safetensors.index.json": json.dumps(
        {"weight_map": {"shared.weight": "model-00002-of-00002.safetensors"}})}),
        "lists 'model-00002-of-00002.safetensors', which is missing"),
    "pytorch_model.bin only": (lambda t: _bad_t5(t, drop="model.safetensors",
                                                 files={"pytorch_model.bin": "x"}),
                               "has only pytorch_model.bin"),
    "contradictory shapes": (lambda t: _bad_t5(t, edit={"d_model": 64}),
                             "config.json d_model=64 contradicts the weights, which give "
                             "d_model=16"),
    "unsupported architecture": (lambda t: _bad_t5(t, edit={"model_type": "bert",
                                                            "architectures": ["BertModel"]}),
                                 "model_type='bert'"),
    "unsupported activation": (lambda t: _bad_t5(t, edit={"dense_act_fn": "mish",
                                                          "feed_forward_proj": "mish"}),
                               "dense_act_fn='mish'"),
    "t5x not msgpack": (lambda t: (t / "src").mkdir() or (t / "src" / "checkpoint").write_text(
        "x") and t / "src", "is not a T5X checkpoint"),
    "t5x tensorflow": (lambda t: (t / "src").mkdir() or (t / "src" / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-1000000"') and t / "src",
        "is a TensorFlow (Mesh TensorFlow) checkpoint index"),
    "t5x incomplete": (lambda t: _bad_t5x(t, drop="target.encoder.layers_1.mlp.wo.kernel"),
                       "'target.encoder.layers_1.mlp.wo.kernel', which is missing"),
    "t5x activation": (lambda t: _bad_t5x(t, gin="network.T5Config.mlp_activations = "
                                                 "('mish', 'linear')\n"),
                       "mlp_activations ('mish', ...)"),
}


def _bad_t5x(tmp_path, drop=None, gin=None):
  folder = _write_t5x("t5_v1_0", tmp_path / "model")
  if drop:
    shutil.rmtree(os.path.join(folder, drop))
  if gin:
    (tmp_path / "model" / "config.gin").write_text(gin)
  return tmp_path / "model"



@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoints_are_one_line_exit_2_and_write_nothing(case, tmp_path, capsys):
  make, message = BAD[case]
  src = make(tmp_path)
  wd = tmp_path / "wd"
  assert _cli("import", f"--src={src}", f"--workdir={wd}") == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("lazy-neuron: error: "), err
  assert message in err[0], err[0]
  assert not wd.exists()


def test_a_hub_id_is_downloaded_with_huggingface_hub(monkeypatch):
  """`load("org/name")` (no such local path) fetches config, safetensors and tokenizer files with
  huggingface_hub's snapshot_download; without huggingface_hub, one line saying how to get it."""
  import sys
  import types
  calls = []
  hub = types.SimpleNamespace(snapshot_download=lambda repo, allow_patterns: calls.append(
      (repo, allow_patterns)) or os.path.join(FIXTURES, "t5_v1_0"))
  monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
  model = pretrained.load("google-t5/t5-small")
  assert calls == [("google-t5/t5-small", ["*.json", "*.safetensors", "*.model"])]
  assert model.kind == "hf_t5" and model.source.endswith("t5_v1_0")
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # not installed
  with pytest.raises(UserError, match="pip install huggingface_hub"):
    pretrained.load("google/flan-t5-small")
  with pytest.raises(UserError, match="does not exist"):  # a path, not a hub id
    pretrained.load("./no/such/checkpoint")


def test_notebook_is_generated_and_runs_on_a_fixture_checkpoint(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  import importlib.util
  root = os.path.join(os.path.dirname(__file__), "..", "notebooks")
  spec = importlib.util.spec_from_file_location("make_notebooks",
                                                os.path.join(root, "make_notebooks.py"))
  gen = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(gen)
  path = os.path.join(root, "pretrained_sparsity.ipynb")
  with open(path) as f:  # the committed notebook is the generator's (with the shared install cell)
    assert json.load(f) == gen.pretrained_sparsity()
  assert "model._" not in "".join("".join(c["source"]) for c in gen.pretrained_sparsity()["cells"])
  nb = nbformat.read(path, as_version=4)
  monkeypatch.setenv("LAZY_NEURON_CHECKPOINT", os.path.join(FIXTURES, "t5_v1_1"))
  nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "encoder/layer_00" in outputs and "mean nonzero:" in outputs
