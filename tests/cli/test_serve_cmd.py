"""`loralab serve` asks OpenMP for passive waiting before torch loads (docs/serving.md, "Threads on a shared
machine"): set when unset, a policy the user set is kept, and in a fresh process torch is not imported before."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loralab.cli.serve_cmd import passive_openmp

REPO = Path(__file__).resolve().parents[2]

# A fresh `loralab serve` whose server is a stub: it reports the policy and whether torch was loaded before it.
STUB = """
import json, os, sys, types
seen = {}
def check_early():
    seen["torch_before_run"] = "torch" in sys.modules
server = types.ModuleType("loralab.serving.server")
def serve(settings, log_level="info"):
    print(json.dumps({**seen, "policy": os.environ.get("OMP_WAIT_POLICY")}))
    return 0
server.serve = serve
sys.modules["loralab.serving.server"] = server
import loralab.cli.serve_cmd as cmd
run = cmd.run
def wrapped(args):
    check_early()
    return run(args)
cmd.run = wrapped
from loralab.cli.main import main
sys.exit(main(["serve", "--model", "smollm2-135m-instruct", "--device", "cpu"]))
"""


def test_passive_waiting_is_set_unless_a_policy_is_given():
    env = {}
    assert passive_openmp(env) and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert not passive_openmp(env) and env == {"OMP_WAIT_POLICY": "ACTIVE"}


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_serve_sets_it_before_torch_is_imported(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    done = subprocess.run([sys.executable, "-c", STUB], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"torch_before_run": False, "policy": expected}
