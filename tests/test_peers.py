"""`lazy-neuron bench peers` and its PyTorch side: the 'torch missing' path, usage errors, the
comparison arithmetic, and a tiny run on CPU (our side; the peer too where torch is installed)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from lazy_neuron import flops
from lazy_neuron.bench import peers, torch_peer

import hostile

PROG = "lazy-neuron bench peers"
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def _no_run(*a, **k):
  pytest.fail("bench peers started a process before checking its input")


def test_missing_packages_names_only_the_missing_ones():
  assert peers.missing_packages(("json", "no_such_package_lazy_neuron")) == [
      "no_such_package_lazy_neuron"]


@pytest.mark.parametrize("model, library", [("vit_b16", "timm"), ("t5_base", "transformers")])
def test_without_torch_it_says_so_in_one_line_before_running_anything(model, library, tmp_path,
                                                                      capsys, monkeypatch):
  monkeypatch.setattr(peers, "missing_packages", lambda pkgs: [p for p in pkgs if p == "torch"])
  monkeypatch.setattr(peers, "_run", _no_run)
  snap = hostile.snapshot(tmp_path)
  line = hostile.refuses(peers.main, [PROG, f"--model={model}", f"--out={tmp_path}/p.json"],
                         capsys, snap)
  assert (f"bench peers --model={model} needs torch and {library} (pip install torch {library}): "
          "torch not installed") in line, line


@pytest.mark.parametrize("flags, message", [
    (["--model=resnet"], "--model='resnet' is not valid; give vit_b16, t5_base, a comma-separated"),
    (["--model=vit_b16,resnet", "--peer=none"], "--model='vit_b16,resnet' is not valid"),
    (["--model=all", "--peer=none", "--config.model.pool=gap"], "uses a class token"),
    (["--model=vit_b16", "--peer=none", "--steps=0"], "--steps=0 is not valid"),
    (["--model=vit_b16", "--peer=none", "--batch-size=0"], "--batch-size=0 is not valid"),
    (["--model=vit_b16", "--peer=jax"], "argument --peer: invalid choice: 'jax'"),
    (["--model=vit_b16", "--peer=none", "--variants=bogus"], "--variants entry 'bogus'"),
    (["--model=vit_b16", "--peer=none", "--config.model.nme=1"], "unknown config key"),
    (["--model=vit_b16", "--peer=none", "--config.model.pool=gap"], "uses a class token"),
    (["--model=t5_base", "--peer=none", "--steps=1", "--steps=2"], "flag --steps is given twice"),
])
def test_bad_input_is_one_line_before_running_anything(flags, message, capsys, monkeypatch):
  monkeypatch.setattr(peers, "_run", _no_run)
  assert message in hostile.refuses(peers.main, [PROG, *flags], capsys)


def test_all_models_run_one_after_the_other_each_to_its_own_json(tmp_path, capsys, monkeypatch):
  hw = {"device_kind": "NVIDIA H200", "num_devices": 1}
  calls = []

  def fake_side(what, out_json, cmd):
    calls.append(cmd)
    if "our side" in what:
      return {"hardware": hw, "git": None, "rows": [
          {"variant": "dense", "step_ms": 50.0, "examples_per_s": 160.0, "tokens_per_s": 3840.0,
           "first_step_s": 3.0, "compile_s": 2.0, "peak_bytes_per_device": 2**30}]}
    return {"hardware": hw, "step_ms": 100.0, "examples_per_s": 80.0, "tokens_per_s": 1920.0,
            "first_step_s": 9.0, "peak_bytes_per_device": 2**30}

  monkeypatch.setattr(peers, "missing_packages", lambda pkgs: [])
  monkeypatch.setattr(peers, "_run_side", fake_side)
  rc = peers.main([PROG, "--model=all", "--size=tiny", f"--out={tmp_path}/p.json",
                   f"--profile={tmp_path}/prof"])
  assert rc == 0
  for model in ("vit_b16", "t5_base"):
    result = json.loads((tmp_path / f"p_{model}.json").read_text())
    assert result["model"] == model and result["comparison"][0]["speedup"] == 2.0
  assert not (tmp_path / "p.json").exists()
  ours_cmds = [c for c in calls if "bench" in c]
  assert [c for c in ours_cmds[0] if c.startswith("--profile=")] == [
      f"--profile={tmp_path}/prof/vit_b16"]
  assert any("t5_c4.py" in c for c in ours_cmds[1])
  assert "summary (lazy_neuron dense vs its peer): vit_b16 2.00x, t5_base 2.00x" in (
      capsys.readouterr().out)


def test_an_unwritable_out_is_refused_before_running_anything(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(peers, "_run", _no_run)
  (tmp_path / "f").write_text("")
  snap = hostile.snapshot(tmp_path)
  line = hostile.refuses(peers.main, [PROG, "--model=t5_base", "--peer=none",
                                      f"--out={tmp_path}/f/p.json"], capsys, snap)
  assert "--out=" in line and "is a file, so no file can be made below it" in line


def test_compare_gives_the_speedup_and_the_same_flops_mfu_for_both_sides():
  hw = {"device_kind": "NVIDIA H200", "num_devices": 1}
  ours = {"hardware": hw, "rows": [
      {"variant": "dense", "step_ms": 100.0, "examples_per_s": 2560.0, "first_step_s": 30.0,
       "compile_s": 25.0, "peak_bytes_per_device": 2**30}]}
  peer = {"hardware": hw, "step_ms": 75.0, "examples_per_s": 3413.3, "first_step_s": 90.0,
          "peak_bytes_per_device": 2**31}
  f = 10**13  # FLOPs per step
  ours_row, peer_row = peers.compare(ours, peer, f, tokens=False)
  assert ours_row["speedup"] == pytest.approx(0.75) and peer_row["speedup"] == 1.0
  assert ours_row["tflops_per_s"] == pytest.approx(100.0)  # 1e13 FLOP in 0.1 s
  assert ours_row["mfu"] == pytest.approx(100.0 / 989.4)
  assert peer_row["mfu"] == pytest.approx(f / 0.075 / 1e12 / 989.4)


def test_the_torch_side_imports_no_lazy_neuron_dependencies():
  """The GPU image may lack ml-collections, clu, grain: torch_peer must not need them (nor jax)."""
  code = ("import sys, lazy_neuron.bench.torch_peer; "
          "bad = [m for m in ('jax', 'ml_collections', 'clu', 'grain', 'flax', 'lazy_neuron.flags')"
          " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(HAVE_TORCH, reason="torch is installed: its missing path cannot run")
def test_torch_peer_without_torch_is_one_line(tmp_path, capsys):
  assert torch_peer.main(["--model=vit", f"--out={tmp_path}/p.json"]) == 2
  err = capsys.readouterr().err
  assert err.splitlines() == [err.strip()] and "torch is not installed" in err
  assert not os.listdir(tmp_path)


def test_torch_peer_bad_flags_are_one_line(capsys):
  assert torch_peer.main(["--model=vit", "--out=x", "--steps=0"]) == 2
  assert torch_peer.main(["--model=bert", "--out=x"]) == 2
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 2 and all(e.startswith("lazy-neuron: error: ") for e in err), err


def test_tiny_run_on_cpu_times_our_side_and_the_peer_where_installed(tmp_path, capsys):
  have_peer = HAVE_TORCH and importlib.util.find_spec("timm") is not None
  out = tmp_path / "peers.json"
  rc = peers.main([PROG, "--model=vit_b16", "--size=tiny", "--steps=1", "--warmup=0",
                   f"--peer={'torch' if have_peer else 'none'}", "--peer-device=cpu",
                   "--peer-compile=false", f"--out={out}"])
  assert rc == 0
  result = json.loads(out.read_text())
  # tiny ViT (width 128, depth 4, d_ff 1024, 4 heads, patch 4) on 16x16x3, 10 classes, batch 8
  sizes = dict(width=128, depth=4, mlp_dim=1024, num_heads=4, patch_size=4)
  assert result["flops"]["flops_per_step"] == flops.vit(sizes, 10, 8, (16, 16, 3)).model
  assert result["comparison"][0]["side"] == "lazy_neuron dense"
  assert result["ours"]["rows"][0]["batch_size"] == 8
  assert result["command"].startswith("lazy-neuron bench peers --model=vit_b16")
  assert (result["peer"] is not None) == have_peer
  if have_peer:
    assert result["comparison"][1]["side"] == "pytorch peer"
    assert result["comparison"][1]["speedup"] == 1.0
  assert "speed-up" in capsys.readouterr().out
