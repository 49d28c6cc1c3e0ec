"""lazy_neuron.distributed: where multi-host settings come from, and what initialize() does with them.

`resolve` is pure; `initialize` is tested with jax.distributed.initialize replaced by a recorder, since
the real one can run only once per process and other tests share this one. Reading a cluster's
settings (SLURM node lists, TPU metadata) is jax's own detection and is not tested here.
"""
import jax
import pytest

from lazy_neuron import distributed
from lazy_neuron.errors import UserError

# One task of a 4-task srun step, one task per node (as launch/gpu.py runs it).
SLURM = {"SLURM_JOB_ID": "12345", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
         "SLURM_STEP_NODELIST": "gpu[07-08,10],gpu-x1", "SLURM_STEP_NUM_NODES": "4",
         "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
# One task per GPU: 8 tasks on 2 nodes, each seeing the node's 4 GPUs.
SLURM_PER_GPU = {**SLURM, "SLURM_NTASKS": "8", "SLURM_STEP_NUM_NODES": "2", "SLURM_LOCALID": "3"}
OMPI = {"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911", "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "0"}


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


def test_precedence_flags_over_env_over_cluster():
  env = {**SLURM, "LAZY_NEURON_COORDINATOR_ADDRESS": "envhost:1", "LAZY_NEURON_NUM_PROCESSES": "8",
         "LAZY_NEURON_PROCESS_ID": "5", "TPU_WORKER_ID": "0"}
  # Flags win field by field; the rest comes from LAZY_NEURON_*.
  info = distributed.resolve(coordinator_address="flaghost:2", env=env, on_tpu=True)
  assert (info.mode, info.coordinator_address, info.num_processes, info.process_id) == \
      ("explicit", "flaghost:2", 8, 5)
  # LAZY_NEURON_* over the cluster's own settings.
  info = distributed.resolve(env=env, on_tpu=True)
  assert (info.coordinator_address, info.num_processes, info.process_id) == ("envhost:1", 8, 5)


@pytest.mark.parametrize("env, on_tpu, cluster", [
    (SLURM, False, "slurm"),
    ({**SLURM, "TPU_WORKER_ID": "0"}, None, "slurm"),
    (OMPI, False, "ompi"),
    ({"TPU_WORKER_ID": "0"}, None, "tpu"),
    ({}, True, "tpu"),
    ({**SLURM, "SLURM_NTASKS": "1"}, False, None),  # one task: nothing to start
    ({k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}, False, None),  # not in srun
    ({**OMPI, "OMPI_COMM_WORLD_SIZE": "1"}, False, None),
    ({}, False, None),
])
def test_cluster_detection(env, on_tpu, cluster):
  info = distributed.resolve(env=env, on_tpu=on_tpu)
  assert info.cluster == cluster
  assert info.mode == ("single" if cluster is None else "cluster")
  if cluster is not None:  # jax reads the cluster's settings itself
    assert (info.coordinator_address, info.num_processes, info.process_id) == (None, None, None)


def test_cluster_fills_fields_that_flags_leave_open():
  info = distributed.resolve(coordinator_address="10.1.1.1:999", env=SLURM, on_tpu=False)
  assert (info.mode, info.coordinator_address, info.num_processes, info.process_id) == \
      ("explicit", "10.1.1.1:999", None, None)


@pytest.mark.parametrize("env, ids", [
    (SLURM, (0, 1, 2, 3)),  # alone on its node: all of its GPUs, not only that of local rank 0
    ({**SLURM, "CUDA_VISIBLE_DEVICES": "", "SLURM_GPUS_ON_NODE": "8"}, tuple(range(8))),
    ({**SLURM, "SLURM_STEP_NUM_NODES": "2", "SLURM_NTASKS_PER_NODE": "1"}, (0, 1, 2, 3)),
    (SLURM_PER_GPU, None),  # one task per GPU: jax's default (the GPU of its local rank)
    ({**SLURM_PER_GPU, "CUDA_VISIBLE_DEVICES": "3"}, (0,)),  # SLURM bound one GPU to the task
    ({**OMPI, "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "CUDA_VISIBLE_DEVICES": "0,1"}, (0, 1)),
    ({**OMPI, "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0,1"}, None),
    ({**SLURM, "LAZY_NEURON_LOCAL_DEVICE_IDS": "5"}, (5,)),  # given: used as is
])
def test_local_devices_of_a_cluster_task(env, ids):
  assert distributed.resolve(env=env, on_tpu=False).local_device_ids == ids


def test_one_process_needs_no_coordinator():
  info = distributed.resolve(num_processes=1, env={}, on_tpu=False)
  assert info.mode == "single"
  info = distributed.resolve(num_processes=1, process_id=0, env={}, on_tpu=True)
  assert info.mode == "single"


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="nohost", num_processes=2, process_id=0),
     "--coordinator_address='nohost' is not valid; use HOST:PORT with a port in 1..65535"),
    (dict(coordinator_address="h:0", num_processes=2, process_id=0), "--coordinator_address='h:0' is not valid"),
    (dict(coordinator_address="h:70000", num_processes=2, process_id=0), "--coordinator_address='h:70000' is not valid"),
    (dict(coordinator_address="bad host:1", num_processes=2, process_id=0), "--coordinator_address='bad host:1' is not valid"),
    (dict(coordinator_address=":1234", num_processes=2, process_id=0), "--coordinator_address=':1234' is not valid"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0),
     "--num_processes=0 is not valid; use an integer >= 1"),
    (dict(coordinator_address="h:1", num_processes=-3, process_id=0), "--num_processes=-3 is not valid"),
    (dict(coordinator_address="h:1", num_processes=4, process_id=4),
     "--process_id=4 is not valid; use an integer >= 0 and <= 3"),
    (dict(coordinator_address="h:1", num_processes=4, process_id=-1), "--process_id=-1 is not valid"),
    (dict(coordinator_address="h:1", num_processes="four", process_id=0),
     "--num_processes='four' is not valid; use an integer"),
    (dict(coordinator_address="h:1", num_processes=True, process_id=0),
     "--num_processes=True is not valid; use an integer"),
    (dict(num_processes=2), "--num_processes=2 is not valid; multi-process settings are incomplete: "
                            "--coordinator_address, --process_id missing"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=0, local_device_ids="a,b"),
     "--local_device_ids='a' is not valid; use an integer"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=0, local_device_ids=","),
     "--local_device_ids=',' is not valid; use non-negative device ids"),
])
def test_bad_values_raise_user_error(kwargs, message):
  with pytest.raises(UserError) as e:
    distributed.resolve(env={}, on_tpu=False, **kwargs)
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


def test_bad_env_values_name_the_variable():
  env = {"LAZY_NEURON_COORDINATOR_ADDRESS": "h:1", "LAZY_NEURON_NUM_PROCESSES": "2",
         "LAZY_NEURON_PROCESS_ID": "7"}
  with pytest.raises(UserError, match="^LAZY_NEURON_PROCESS_ID=7 is not valid"):
    distributed.resolve(env=env, on_tpu=False)
  with pytest.raises(UserError, match="^LAZY_NEURON_COORDINATOR_PORT='x' is not valid"):
    distributed.resolve(env={**SLURM, "LAZY_NEURON_COORDINATOR_PORT": "x"}, on_tpu=False)
  with pytest.raises(UserError, match="^SLURM_NTASKS='many' is not valid; use an integer"):
    distributed.resolve(env={**SLURM, "SLURM_NTASKS": "many"}, on_tpu=False)


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
    if key.startswith(("SLURM_", "LAZY_NEURON_", "TPU_", "MEGASCALE_", "CLOUD_TPU", "OMPI_",
                       "JAX_COORDINATOR", "CUDA_VISIBLE")):
      monkeypatch.delenv(key)
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)  # initialize may set it: undone after
  monkeypatch.setattr(distributed, "on_cloud_tpu", lambda env=None: False)
  return calls


def test_initialize_explicit_passes_the_settings_and_is_idempotent(recorder):
  info = distributed.initialize("h:1234", 2, 1, [0, 1])
  assert recorder == [((), dict(coordinator_address="h:1234", num_processes=2, process_id=1,
                                local_device_ids=[0, 1]))]
  assert distributed.initialize("other:1", 9, 8) is info  # second call: first result, no new init
  assert len(recorder) == 1


def test_initialize_in_a_cluster_leaves_the_settings_to_jax(recorder, monkeypatch):
  for key, value in SLURM_PER_GPU.items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv("LAZY_NEURON_COORDINATOR_PORT", "7777")
  info = distributed.initialize()
  assert (info.mode, info.cluster) == ("cluster", "slurm")
  assert recorder == [((), {})]
  assert distributed.os.environ["JAX_COORDINATOR_PORT"] == "7777"  # what jax's detection reads


def test_initialize_one_task_per_node_sees_all_its_gpus(recorder, monkeypatch):
  for key, value in SLURM.items():
    monkeypatch.setenv(key, value)
  distributed.initialize()
  assert recorder == [((), dict(local_device_ids=[0, 1, 2, 3]))]


def test_initialize_flags_in_a_cluster_pass_only_what_is_given(recorder, monkeypatch):
  for key, value in SLURM_PER_GPU.items():
    monkeypatch.setenv(key, value)
  distributed.initialize(coordinator_address="10.0.0.1:99")
  assert recorder == [((), dict(coordinator_address="10.0.0.1:99"))]


def test_initialize_tpu_calls_without_arguments(recorder, monkeypatch):
  monkeypatch.setattr(distributed, "on_cloud_tpu", lambda env=None: True)
  monkeypatch.setattr(distributed, "_libtpu_installed", lambda: True)
  assert distributed.initialize().cluster == "tpu"
  assert recorder == [((), {})]


def test_initialize_tpu_without_libtpu_runs_one_process(recorder, monkeypatch):
  monkeypatch.setattr(distributed, "on_cloud_tpu", lambda env=None: True)
  monkeypatch.setattr(distributed, "_libtpu_installed", lambda: False)
  assert distributed.initialize().mode == "single"
  assert recorder == []


def test_initialize_single_process_does_nothing(recorder):
  assert distributed.initialize().mode == "single"
  assert recorder == []


def test_initialize_bad_flags_fail_before_jax(recorder):
  with pytest.raises(UserError):
    distributed.initialize("h:1", 2, 5)
  assert recorder == [] and distributed._INFO is None


def test_is_main_process():
  assert distributed.is_main_process() is (jax.process_index() == 0)
