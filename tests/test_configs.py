"""configs/*.py load by path alone (no sys.path edits, shared pieces from lazy_neuron.experiment),
and t5_c4 runs T5's rsqrt schedule."""
import glob
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lazy_neuron import config_lib, optim
from lazy_neuron.errors import UserError

CONFIGS = sorted(glob.glob("configs/*.py"))


def test_configs_exist_and_import_nothing_from_their_folder():
  assert {os.path.basename(p) for p in CONFIGS} >= {
      "t5_offline.py", "t5_c4.py", "vit_digits.py", "vit_imagenet.py", "mixer_digits.py",
      "mlp_gaussian.py"}
  for path in CONFIGS:
    text = open(path).read()
    assert "sys.path" not in text and "from common" not in text, path


def test_every_config_loads_by_path_from_another_folder(tmp_path, repo_root):
  # A fresh interpreter whose working directory and sys.path do not contain configs/.
  code = ("import sys; from lazy_neuron import config_lib\n"
          "for spec in sys.argv[1:]:\n"
          "  c = config_lib.load_config_file(spec)\n"
          "  assert c.total_steps > 0 and c.model.name, spec\n"
          "print('ok', len(sys.argv) - 1)\n")
  specs = [os.path.join(repo_root, p) + arg for p in CONFIGS for arg in ("", ":runlocal")]
  env = dict(os.environ, PYTHONPATH=repo_root)
  proc = subprocess.run([sys.executable, "-c", code, *specs], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == f"ok {len(specs)}"


@pytest.mark.parametrize("spec", ["configs/vit_digits.py", "configs/vit_imagenet.py",
                                  "configs/mixer_digits.py"])
def test_vision_configs_share_one_optimizer_recipe(spec):
  opt = config_lib.load_config_file(spec).optimizer
  assert (opt.name, opt.learning_rate, opt.schedule, opt.weight_decay, opt.grad_clip_norm) == (
      "adamw", 1e-3, "cosine", 1e-4, 1.0)


def test_t5_c4_uses_t5s_rsqrt_schedule_on_int_steps():
  config = config_lib.load_config_file("configs/t5_c4.py")
  opt = config.optimizer
  assert (opt.name, opt.schedule, opt.learning_rate, opt.warmup_steps) == (
      "adafactor", "rsqrt", 1e-2, 10_000)
  optim.validate(opt, config.total_steps)
  _, schedule = optim.make_optimizer(opt, config.total_steps)
  for step, lr in ((0, 1e-2), (9_999, 1e-2), (39_999, 5e-3), (2**19 - 1, 1e-2 * (10_000 / 2**19) ** 0.5)):
    np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(jnp.int32(step))), lr, rtol=1e-5)


def test_an_optional_field_takes_none_back_from_the_command_line(repo_root):
  """`bench train --variants=dense` sets topk=None on a config that has a Top-k value; a required
  field still refuses None."""
  spec = os.path.join(repo_root, "configs/paper/vit_fmnist.py:scale=smoke,topk=32")
  assert config_lib.load_config(spec).model.topk == 32
  assert config_lib.load_config(spec, ["config.model.topk=None"]).model.topk is None
  with pytest.raises(UserError, match=r"config.batch_size='None' is not a valid int"):
    config_lib.load_config(spec, ["config.batch_size=None"])
