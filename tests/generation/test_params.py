"""SamplingParams refuses each bad value with one LoraLabError naming the setting."""
from __future__ import annotations

import pytest

from loralab.errors import LoraLabError
from loralab.generation import SamplingParams


@pytest.mark.parametrize("settings, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer of at least 1"),
    ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"min_new_tokens": -1}, "min_new_tokens"),
    ({"min_new_tokens": 9, "max_new_tokens": 8}, "min_new_tokens \\(9\\) is above max_new_tokens"),
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0}, "top_p must be in \\(0, 1\\]"),
    ({"top_p": 1.01}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"no_repeat_ngram_size": -2}, "no_repeat_ngram_size"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**63}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"stop": ["ok", ""]}, "stop must be a list of non-empty strings"),
    ({"stop": [3]}, "stop"),
    ({"num_beams": 0}, "num_beams"),
    ({"num_beams": 2, "temperature": 0.5}, "beam search \\(num_beams=2\\) is greedy only"),
    ({"length_penalty": float("inf")}, "length_penalty"),
    ({"frequency_penalty": float("nan")}, "frequency_penalty must be a finite number \\(0 is off\\)"),
    ({"presence_penalty": "1"}, "presence_penalty must be a finite number"),
    ({"logprobs": -1}, "logprobs must be unset or an integer of at least 0"),
    ({"logprobs": True}, "logprobs must be unset or an integer"),
    ({"num_beams": 2, "frequency_penalty": 0.5}, "frequency_penalty is not available with beam search"),
    ({"num_beams": 2, "presence_penalty": -0.5}, "presence_penalty is not available with beam search"),
    ({"num_beams": 2, "logprobs": 0}, "logprobs is not available with beam search \\(num_beams=2\\)"),
])
def test_bad_values_are_refused_with_one_line(settings, message):
    with pytest.raises(LoraLabError, match=message) as caught:
        SamplingParams(**settings)
    assert "\n" not in str(caught.value)


def test_defaults_stop_normalisation_and_dicts():
    default = SamplingParams()
    assert default.greedy and default.max_new_tokens == 64 and default.stop == () and default.non_default() == {}
    params = SamplingParams(temperature=0.7, stop="\n", seed=3)
    assert params.stop == ("\n",) and not params.greedy
    assert params.non_default() == {"temperature": 0.7, "stop": ["\n"], "seed": 3}
    assert SamplingParams(**{**params.to_dict(), "stop": tuple(params.stop)}) == params
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(num_beams=4, length_penalty=0.8).greedy
