"""lazy_neuron.distributed: where multi-host settings come from, and what initialize() does with them.

`resolve` is pure; `initialize` is tested with jax.distributed.initialize replaced by a recorder, since
the real one can run only once per process and other tests share this one.
"""
import jax
import pytest

from lazy_neuron import distributed
from lazy_neuron.errors import UserError

SLURM = {"SLURM_JOB_ID": "12345", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
         "SLURM_STEP_NODELIST": "gpu[07-08,10],gpu-x1", "SLURM_JOB_NODELIST": "other[1-9]",
         "SLURM_STEP_TASKS_PER_NODE": "1(x4)"}


@pytest.mark.parametrize("nodelist, expected", [
    ("node01", ["node01"]),
    ("node01,host2", ["node01", "host2"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("node[001,007-009],gpu1", ["node001", "node007", "node008", "node009", "gpu1"]),
    ("a[8-11]", ["a8", "a9", "a10", "a11"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    (" n[1] ", ["n1"]),
])
def test_expand_nodelist(nodelist, expected):
  assert distributed.expand_nodelist(nodelist) == expected


@pytest.mark.parametrize("nodelist", ["node[04-01]", "node[a-b]", "node[1-2", "", "node]1["])
def test_expand_nodelist_rejects_malformed(nodelist):
  with pytest.raises(UserError, match="node list"):
    distributed.expand_nodelist(nodelist)


def test_single_process_by_default():
  info = distributed.resolve(env={}, on_tpu=False)
  assert info.mode == "single" and not info.is_multi_process
  assert (info.num_processes, info.process_id, info.coordinator_address) == (1, 0, None)


def test_flags():
  info = distributed.resolve("10.0.0.1:1234", 4, 3, env={}, on_tpu=False)
  assert (info.mode, info.coordinator_address, info.num_processes, info.process_id) == \
      ("explicit", "10.0.0.1:1234", 4, 3)
  assert "process 3 of 4" in info.describe()


def test_env_vars_and_string_values():
  env = {"LAZY_NEURON_COORDINATOR_ADDRESS": "host-a:8476", "LAZY_NEURON_NUM_PROCESSES": "2",
         "LAZY_NEURON_PROCESS_ID": "1", "LAZY_NEURON_LOCAL_DEVICE_IDS": "0,1"}
  info = distributed.resolve(env=env, on_tpu=False)
  assert (info.mode, info.coordinator_address, info.num_processes, info.process_id,
          info.local_device_ids) == ("explicit", "host-a:8476", 2, 1, (0, 1))
  assert "LAZY_NEURON_NUM_PROCESSES" in info.source


def test_precedence_flags_over_env_over_slurm_over_tpu():
  env = {**SLURM, "LAZY_NEURON_COORDINATOR_ADDRESS": "envhost:1", "LAZY_NEURON_NUM_PROCESSES": "8",
         "LAZY_NEURON_PROCESS_ID": "5", "TPU_WORKER_ID": "0"}
  # Flags win field by field; the rest comes from LAZY_NEURON_*.
  info = distributed.resolve(coordinator_address="flaghost:2", env=env, on_tpu=True)
  assert (info.mode, info.coordinator_address, info.num_processes, info.process_id) == \
      ("explicit", "flaghost:2", 8, 5)
  # LAZY_NEURON_* over SLURM.
  info = distributed.resolve(env=env, on_tpu=True)
  assert (info.coordinator_address, info.num_processes, info.process_id) == ("envhost:1", 8, 5)
  # SLURM over TPU.
  slurm_tpu = {**SLURM, "TPU_WORKER_ID": "0"}
  assert distributed.resolve(env=slurm_tpu, on_tpu=True).mode == "slurm"
  # TPU over single.
  assert distributed.resolve(env={"TPU_WORKER_ID": "0"}).mode == "tpu"
  assert distributed.resolve(env={}, on_tpu=True).mode == "tpu"


def test_slurm():
  info = distributed.resolve(env=SLURM, on_tpu=False)
  assert info.mode == "slurm"
  # First host of the *step* node list; port from the job id, as every task computes it alike.
  assert info.coordinator_address == f"gpu07:{61440 + 12345 % 4096}"
  assert (info.num_processes, info.process_id, info.local_device_ids) == (4, 2, None)


def test_slurm_port_override_and_job_nodelist_fallback():
  env = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
  env["LAZY_NEURON_COORDINATOR_PORT"] = "7777"
  assert distributed.resolve(env=env, on_tpu=False).coordinator_address == "other1:7777"


def test_slurm_one_task_per_gpu_takes_its_local_gpu():
  env = {**SLURM, "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_NTASKS": "8", "SLURM_LOCALID": "3"}
  assert distributed.resolve(env=env, on_tpu=False).local_device_ids == (3,)
  # ...unless SLURM already gave each task a single visible GPU.
  env["CUDA_VISIBLE_DEVICES"] = "3"
  assert distributed.resolve(env=env, on_tpu=False).local_device_ids is None


def test_slurm_fills_fields_that_flags_leave_open():
  info = distributed.resolve(coordinator_address="10.1.1.1:999", env=SLURM, on_tpu=False)
  assert (info.mode, info.coordinator_address, info.num_processes, info.process_id) == \
      ("explicit", "10.1.1.1:999", 4, 2)


def test_slurm_single_task_or_outside_srun_is_single_process():
  assert distributed.resolve(env={**SLURM, "SLURM_NTASKS": "1"}, on_tpu=False).mode == "single"
  outside_step = {k: v for k, v in SLURM.items() if "NODELIST" not in k}
  assert distributed.resolve(env=outside_step, on_tpu=False).mode == "single"


def test_one_process_needs_no_coordinator():
  info = distributed.resolve(num_processes=1, env={}, on_tpu=False)
  assert info.mode == "single"
  info = distributed.resolve(num_processes=1, process_id=0, env={}, on_tpu=True)
  assert info.mode == "single"


@pytest.mark.parametrize("kwargs, match", [
    (dict(coordinator_address="nohost", num_processes=2, process_id=0), "--coordinator_address='nohost'"),
    (dict(coordinator_address="h:0", num_processes=2, process_id=0), "HOST:PORT"),
    (dict(coordinator_address="h:70000", num_processes=2, process_id=0), "1..65535"),
    (dict(coordinator_address="bad host:1", num_processes=2, process_id=0), "not valid"),
    (dict(coordinator_address=":1234", num_processes=2, process_id=0), "not valid"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), "--num_processes=0"),
    (dict(coordinator_address="h:1", num_processes=-3, process_id=0), ">= 1"),
    (dict(coordinator_address="h:1", num_processes=4, process_id=4), r"--process_id=4 .* 0\.\.3"),
    (dict(coordinator_address="h:1", num_processes=4, process_id=-1), "--process_id=-1"),
    (dict(coordinator_address="h:1", num_processes="four", process_id=0), "expected an integer"),
    (dict(num_processes=2), "--coordinator_address, --process_id missing"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=0, local_device_ids="a,b"),
     "expected an integer"),
])
def test_bad_values_raise_user_error(kwargs, match):
  with pytest.raises(UserError, match=match) as e:
    distributed.resolve(env={}, on_tpu=False, **kwargs)
  assert "\n" not in str(e.value)


def test_bad_env_values_name_the_variable():
  env = {"LAZY_NEURON_COORDINATOR_ADDRESS": "h:1", "LAZY_NEURON_NUM_PROCESSES": "2",
         "LAZY_NEURON_PROCESS_ID": "7"}
  with pytest.raises(UserError, match="LAZY_NEURON_PROCESS_ID=7"):
    distributed.resolve(env=env, on_tpu=False)
  with pytest.raises(UserError, match="SLURM_PROCID"):
    distributed.resolve(env={**SLURM, "SLURM_PROCID": "x"}, on_tpu=False)


def test_ipv6_and_hostnames_are_valid_addresses():
  for address in ("[fe80::1]:8476", "node-01.cluster.local:1", "10.0.0.1:65535"):
    assert distributed.validate_address(address) == address


def test_on_cloud_tpu(tmp_path):
  assert not distributed.on_cloud_tpu({}, pci_root=str(tmp_path))
  assert distributed.on_cloud_tpu({"TPU_WORKER_HOSTNAMES": "a,b"}, pci_root=str(tmp_path))
  assert distributed.on_cloud_tpu({"MEGASCALE_COORDINATOR_ADDRESS": "x"}, pci_root=str(tmp_path))
  (tmp_path / "0000:00:04.0").mkdir()
  (tmp_path / "0000:00:04.0" / "vendor").write_text("0x10de\n")  # an NVIDIA GPU
  assert not distributed.on_cloud_tpu({}, pci_root=str(tmp_path))
  (tmp_path / "0000:00:05.0").mkdir()
  (tmp_path / "0000:00:05.0" / "vendor").write_text("0x1ae0\n")  # a Google TPU chip
  assert distributed.on_cloud_tpu({}, pci_root=str(tmp_path))
  assert not distributed.on_cloud_tpu({"TPU_SKIP_MDS_QUERY": "1"}, pci_root=str(tmp_path))


@pytest.fixture
def recorder(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed, "_INFO", None)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw)))
  for key in list(distributed.os.environ):
    if key.startswith(("SLURM_", "LAZY_NEURON_", "TPU_", "MEGASCALE_", "CLOUD_TPU")):
      monkeypatch.delenv(key)
  monkeypatch.setattr(distributed, "on_cloud_tpu", lambda env=None: False)
  return calls


def test_initialize_explicit_passes_the_settings_and_is_idempotent(recorder):
  info = distributed.initialize("h:1234", 2, 1, [0, 1])
  assert recorder == [((), dict(coordinator_address="h:1234", num_processes=2, process_id=1,
                                local_device_ids=[0, 1]))]
  assert distributed.initialize("other:1", 9, 8) is info  # second call: first result, no new init
  assert len(recorder) == 1


def test_initialize_slurm_from_environment(recorder, monkeypatch):
  for key, value in SLURM.items():
    monkeypatch.setenv(key, value)
  info = distributed.initialize()
  assert info.mode == "slurm"
  assert recorder[0][1]["coordinator_address"].startswith("gpu07:")
  assert recorder[0][1]["process_id"] == 2


def test_initialize_tpu_calls_without_arguments(recorder, monkeypatch):
  monkeypatch.setattr(distributed, "on_cloud_tpu", lambda env=None: True)
  monkeypatch.setattr(distributed, "_libtpu_installed", lambda: True)
  assert distributed.initialize().mode == "tpu"
  assert recorder == [((), {})]


def test_initialize_single_process_does_nothing(recorder):
  assert distributed.initialize().mode == "single"
  assert recorder == []


def test_initialize_bad_flags_fail_before_jax(recorder):
  with pytest.raises(UserError):
    distributed.initialize("h:1", 2, 5)
  assert recorder == [] and distributed._INFO is None


def test_is_main_process():
  assert distributed.is_main_process() is (jax.process_index() == 0)
