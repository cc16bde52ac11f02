"""Bodies signed as PICPIK's official SDK signers do (Python, Go, JavaScript: their language's default
float spelling, docs/API.md "Signature") verify through the real gateway; a signature that mixes
spellings does not. The spellings of app/signature.py are also checked against the real languages
where their interpreters are installed (node, go)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from app.signature import go_sdk_float, javascript_sdk_float
from support.api import KEYS, PUB
from support.signer import SPELLINGS, picpik_signature, signing_text, spell_float

FLOAT_BODIES = {
    "1e-05": {"Strength": 1e-05},
    "1e-7": {"Strength": 1e-7},
    "1e+21": {"Big": 1e21},
    "1e16": {"Big": 1e16},
    "0.3": {"ReferStrength": 0.3},
    "100.0": {"Width": 100.0},
    "-2.5e-10": {"Offset": -2.5e-10},
    "1234567.5": {"Offset": 1234567.5},
    "1e23": {"Big": 1e23},
    "nested": {"Image2Image": {"ReferStrength": 1e-05, "Extra": [0.3, {"Deep": [1e-7, -2.5e-10]}]},
               "SubModelList": [{"ModelCode": "x", "InferenceParams": {"LoraWeight": 1e21}}, [1234567.5]]},
    "mixed": {"A": 1e-05, "B": 1e-7, "C": 1e21, "D": 1e16, "E": 0.3, "F": 100.0, "G": -2.5e-10,
              "H": 1234567.5, "I": 1e23, "J": 7, "K": True, "L": None, "M": "1e-05"},
}
# floats that at least one SDK writes otherwise than the published rule
DIFFERING = {"1e-05", "1e-7", "1e+21", "-2.5e-10", "1234567.5", "1e23", "nested", "mixed"}


def _body(extra: dict) -> dict:
    return {"Action": "ListModels", "PublicKey": PUB["pk-alice"], "request_uuid": str(uuid.uuid4()), **extra}


def test_the_cases_exercise_spellings_other_than_the_published_one():
    # guard of the test below: these bodies sign differently under at least one SDK spelling
    for case, extra in FLOAT_BODIES.items():
        body = _body(extra)
        texts = {signing_text(body, "k", name) for name in SPELLINGS}
        assert (len(texts) > 1) == (case in DIFFERING), case
    assert len({signing_text(FLOAT_BODIES["mixed"], "k", name) for name in SPELLINGS}) == len(SPELLINGS)


@pytest.mark.parametrize("case", sorted(FLOAT_BODIES))
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_the_gateway_accepts_each_spelling(api, spelling, case):
    body = _body(FLOAT_BODIES[case])
    r = api({**body, "Signature": picpik_signature(body, KEYS["pk-alice"], spelling)})
    assert r["RetCode"] == 0, r


@pytest.mark.parametrize("spelling", SPELLINGS[1:])
def test_the_gateway_refuses_an_sdk_spelling_under_another_key(api, spelling):
    body = _body(FLOAT_BODIES["mixed"])
    r = api({**body, "Signature": picpik_signature(body, KEYS["pk-bob"], spelling)})
    assert r["RetCode"] == 171, r


@pytest.mark.parametrize("other", SPELLINGS[1:])
def test_the_gateway_refuses_half_one_spelling_half_another(api, other):
    body = _body({"Tiny": 1e-7, "Nested": {"Tinier": -2.5e-10, "Huge": [1e21, 1e23]}})

    def half(x: float) -> str:  # the first float as an SDK writes it, the others as the published rule
        return spell_float(other if x == 1e-7 else "published", x)

    def other_half(x: float) -> str:
        return spell_float("published" if x == 1e-7 else other, x)

    for mix in (half, other_half):
        text = signing_text(body, KEYS["pk-alice"], mix)
        assert all(text != signing_text(body, KEYS["pk-alice"], name) for name in SPELLINGS)  # guard
        r = api({**body, "Signature": picpik_signature(body, KEYS["pk-alice"], mix)})
        assert r["RetCode"] == 171, (mix.__name__, r)


# --- the spellings against the real languages ----------------------------------------------------

REAL_VALUES = [1e-05, 1e-7, 1e21, 1e16, 0.3, 100.0, -2.5e-10, 1234567.5, 999999.5, 1e20, 1e23, -0.0, 0.000001,
               1.2345678901234568e20, 5e-324, 1.7976931348623157e308, 2.0**63, -(2.0**63), 9.3e18, 0.1 + 0.2]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_spelling_is_node_string_of_the_number():
    script = "for (const s of JSON.parse(process.argv[1])) console.log(String(Number(s)))"
    out = subprocess.run(["node", "-e", script, json.dumps([repr(v) for v in REAL_VALUES])],
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert [javascript_sdk_float(v) for v in REAL_VALUES] == out


GO_PROGRAM = """package main

import ("encoding/json"; "fmt"; "os"; "strconv")

func main() {
	var reprs []string
	json.Unmarshal([]byte(os.Args[1]), &reprs)
	for _, r := range reprs {
		v, _ := strconv.ParseFloat(r, 64)
		if float64(int(v)) == v { fmt.Printf("%v\\n", int(v)) } else { fmt.Printf("%v\\n", v) }
	}
}
"""


@pytest.mark.skipif(shutil.which("go") is None, reason="go is not installed")
def test_go_spelling_is_fmt_v_after_the_int_conversion(tmp_path):
    # the Go signer's rule: a float equal to its int conversion is printed as that int, else with %v.
    # Go's int(2**63) is platform-defined (amd64: the gateway's spelling; arm64 saturates): left out.
    values = [v for v in REAL_VALUES if v != 2.0**63]
    (tmp_path / "main.go").write_text(GO_PROGRAM)
    out = subprocess.run(["go", "run", "main.go", json.dumps([repr(v) for v in values])], cwd=tmp_path,
                         env={**os.environ, "GOCACHE": str(tmp_path / "cache"), "GO111MODULE": "off"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [go_sdk_float(v) for v in values]
