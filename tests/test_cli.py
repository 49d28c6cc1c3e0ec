"""Every command parses flags the same way: one `lazy-neuron: error: ...` line and exit code 2 for an
unknown flag, a repeated flag or a missing value; `--flag value` works like `--flag=value`. Also
the two subcommand dispatchers (`lazy-neuron`, `lazy-neuron bench`), which share one function."""
import pytest

from lazy_neuron import bench, cli, report
from lazy_neuron.bench import input as bench_input
from lazy_neuron.bench import topk as bench_topk
from lazy_neuron.data import convert, tokenizer

# name -> (main, its other flags (valid), the flag under test, a valid value of it,
#          a refused value of it, a fragment of the error line that value gives).
COMMANDS = {
    "report": (report.main, ["{tmp}/no_such_run"], "--out", "{tmp}/out", "{tmp}/out2",
               "no_such_run"),  # --out read, so the next check (the workdir) speaks
    "tokenizer": (tokenizer.main, ["--corpus={tmp}/a.txt", "--out={tmp}/t.model", "--vocab-size=64"],
                  "--max-bytes", "100", "0", "--max-bytes=0 is not valid"),
    "convert": (convert.main, ["--dataset=x", "--data_dir={tmp}/src", "--out_dir={tmp}/dst"],
                "--workers", "2", "0", "--workers=0 is not valid"),
    "bench topk": (bench_topk.main, [], "--T", "8", "0", "--T=0 is not valid"),
    "bench input": (bench_input.main, ["--dir={tmp}/bench"], "--make-records", "300", "10",
                    "--make-records=10 is not valid"),
}


def _cases():
  for name, (_, _, flag, good, bad, message) in COMMANDS.items():
    yield name, "unknown flag", [f"{flag}={good}", "--no-such-flag=1"], \
        "unrecognized arguments: --no-such-flag=1"
    yield name, "repeated flag", [f"{flag}={good}", f"{flag}={good}"], f"flag {flag} is given twice"
    yield name, "missing value", [flag], "expected one argument"
    yield name, "spaced value", [flag, bad], message


def _one_error_line(capsys) -> str:
  captured = capsys.readouterr()
  lines = captured.err.splitlines()
  assert len(lines) == 1 and lines[0].startswith("lazy-neuron: error: "), captured.err
  return lines[0]


@pytest.mark.parametrize("name, case, flags, message", list(_cases()))
def test_every_command_refuses_bad_flags_in_one_line(name, case, flags, message, tmp_path, capsys):
  main, others = COMMANDS[name][:2]
  argv = [f"lazy-neuron {name}"] + [a.format(tmp=tmp_path) for a in others + flags]
  assert main(argv) == 2
  line = _one_error_line(capsys)
  assert message.format(tmp=tmp_path) in line, line
  assert not (tmp_path / "out").exists() and not (tmp_path / "dst").exists()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_prints_help_and_exits_0(name, capsys):
  with pytest.raises(SystemExit) as exit_:
    COMMANDS[name][0]([f"lazy-neuron {name}", "--help"])
  assert exit_.value.code == 0
  assert capsys.readouterr().out.startswith(f"usage: lazy-neuron {name} ")


def test_dispatchers_pass_the_program_name_and_refuse_unknown_names(tmp_path, capsys):
  # Through both dispatchers, the command's errors name the full program.
  argv = ["lazy-neuron", "convert", "--dataset=x", f"--data_dir={tmp_path}", f"--out_dir={tmp_path}/o",
          "--workers", "0"]
  assert cli.main(argv) == 2
  assert "--workers=0 is not valid" in _one_error_line(capsys)
  assert cli.main(["lazy-neuron", "bench", "topk", "--T=1", "--T=2"]) == 2
  assert "see lazy-neuron bench topk --help" in _one_error_line(capsys)
  for main, prog, what in ((cli.main, "lazy-neuron", "command"),
                           (bench.main, "lazy-neuron bench", "benchmark")):
    assert main([prog, "nope"]) == 2
    assert f"{what}='nope' is not valid; choose one of" in _one_error_line(capsys)
    assert main([prog]) == 2
    assert f"no {what} given" in _one_error_line(capsys)
    assert main([prog, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} <{what}> [flags]") and "  train " in out


def test_bench_topk_lists_are_checked():
  with pytest.raises(Exception, match=r"--D='1024,x' is not valid"):
    bench_topk._parse_flags(["lazy-neuron bench topk", "--D=1024,x"])
  args = bench_topk._parse_flags(["lazy-neuron bench topk", "--D", "64,128", "--k=8",
                                  "--dtypes=bfloat16", "--baselines=", "--backend=jnp"])
  assert (args.D, args.k, args.dtypes, args.baselines, args.backend) == (
      [64, 128], [8], ["bfloat16"], [], "jnp")
