"""T5 span corruption in numpy, vectorised over a batch, deterministic per example.

A faithful port of T5's `random_spans_helper`, `random_spans_noise_mask`,
`noise_span_to_unique_sentinel` and `nonnoise_span_to_unique_sentinel` (t5/data/preprocessors.py),
with T5X feature names. Randomness comes from `pipeline.random_bits(seed, stream, example_index)`, so
an example's corruption depends only on (seed, example index), not on batching or sharding.
"""
from __future__ import annotations

import numpy as np

from lazy_neuron.data import pipeline

PAD_ID = 0
EOS_ID = 1


def _counts(length: int, noise_density: float, mean_noise_span_length: float):
  num_noise = int(round(length * noise_density))
  num_noise = min(max(num_noise, 1), length - 1)
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  return num_noise, num_spans


def random_spans_helper(inputs_length: int, noise_density: float, mean_noise_span_length: float,
                        extra_tokens_per_span_inputs: int = 1, extra_tokens_per_span_targets: int = 1):
  """T5's helper: the raw `tokens_length` whose corrupted inputs (+EOS) fill `inputs_length`.

  Returns (tokens_length, targets_length); inputs (with EOS) are at most `inputs_length`.
  """
  def lengths(tokens_length):
    num_noise = int(round(tokens_length * noise_density))
    num_nonnoise = tokens_length - num_noise
    num_spans = int(round(num_noise / mean_noise_span_length))
    return (num_nonnoise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  inputs_length, targets_length = lengths(tokens_length)
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def corrupted_lengths(tokens_length: int, noise_density: float, mean_noise_span_length: float):
  """The exact (inputs, targets) lengths, EOS included, of a corrupted window of `tokens_length`."""
  num_noise, num_spans = _counts(max(tokens_length, 2), noise_density, mean_noise_span_length)
  return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1



def lengths_from_config(cfg) -> tuple[int, int, int]:
  """(raw tokens per window, inputs_length, targets_length) of a span-corruption data config:
  windows sized by T5's random_spans_helper so inputs fill `inputs_length` without truncation."""
  nd, ms = cfg["noise_density"], cfg["mean_noise_span_length"]
  tokens_length, _ = random_spans_helper(cfg["inputs_length"], nd, ms)
  needed = corrupted_lengths(tokens_length, nd, ms)[1]
  return tokens_length, int(cfg["inputs_length"]), int(cfg["targets_length"] or needed)

def _random_segmentation(num_items, num_segments, seed, stream, index):
  """[B, num_segments] positive lengths summing to num_items, uniformly at random (as T5)."""
  b = len(index)
  if num_segments == 1:
    return np.full((b, 1), num_items, dtype=np.int64)
  keys = pipeline.random_bits(seed, stream, index, num_items - 1)
  cuts = np.sort(np.argsort(keys, axis=1, kind="stable")[:, :num_segments - 1] + 1, axis=1)
  bounds = np.concatenate([np.zeros((b, 1), np.int64), cuts, np.full((b, 1), num_items)], axis=1)
  return np.diff(bounds, axis=1)


def random_spans_noise_mask(length: int, noise_density: float, mean_noise_span_length: float,
                            seed: int, index: np.ndarray) -> np.ndarray:
  """bool [B, length]: True on noise tokens; starts with a non-noise span (T5, no random roll)."""
  index = np.asarray(index).reshape(-1)
  orig_length, length = length, max(length, 2)
  num_noise, num_spans = _counts(length, noise_density, mean_noise_span_length)
  noise_lengths = _random_segmentation(num_noise, num_spans, seed, 1, index)
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, seed, 2, index)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=2).reshape(len(index), 2 * num_spans)
  starts = np.cumsum(interleaved, axis=1)[:, :-1]
  indicator = np.zeros((len(index), length), np.int64)
  np.put_along_axis(indicator, starts, 1, axis=1)
  is_noise = np.cumsum(indicator, axis=1) % 2 == 1
  return is_noise[:, :orig_length]


def _span_to_sentinel(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
  """Replaces each span of True in `mask` by one sentinel (vocab_size-1, -2, ...); same count per row."""
  prev = np.concatenate([np.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
  first = mask & ~prev
  sentinel = vocab_size - np.cumsum(first, axis=1)
  out = np.where(first, sentinel, tokens)
  keep = ~mask | first
  return out[keep].reshape(tokens.shape[0], -1)


def span_corruption(tokens: np.ndarray, index: np.ndarray, *, seed: int, vocab_size: int,
                    noise_density: float, mean_noise_span_length: float, inputs_length: int,
                    targets_length: int) -> dict[str, np.ndarray]:
  """T5X features from raw token windows `tokens` [B, L] (no EOS, no padding)."""
  b, length = tokens.shape
  mask = random_spans_noise_mask(length, noise_density, mean_noise_span_length, seed, index)
  inputs = _span_to_sentinel(tokens, mask, vocab_size)
  targets = _span_to_sentinel(tokens, ~mask, vocab_size)
  eos = np.full((b, 1), EOS_ID, tokens.dtype)
  inputs = np.concatenate([inputs, eos], axis=1)
  targets = np.concatenate([targets, eos], axis=1)
  if inputs.shape[1] > inputs_length or targets.shape[1] > targets_length:
    raise ValueError(f"corrupted lengths {inputs.shape[1]}/{targets.shape[1]} exceed "
                     f"{inputs_length}/{targets_length}")
  enc = np.zeros((b, inputs_length), np.int32)
  enc[:, :inputs.shape[1]] = inputs
  dec = np.zeros((b, targets_length), np.int32)
  dec[:, :targets.shape[1]] = targets
  dec_in = np.zeros_like(dec)
  dec_in[:, 1:] = dec[:, :-1]
  return {
      "encoder_input_tokens": enc,
      "decoder_target_tokens": dec,
      "decoder_input_tokens": dec_in,
      "decoder_loss_weights": (dec != PAD_ID).astype(np.float32),
  }


def reconstruct(inputs: np.ndarray, targets: np.ndarray, vocab_size: int, num_sentinels: int):
  """Inverse of span corruption for one example (for tests): the original token list."""
  def strip(x):
    x = [int(t) for t in x if t != PAD_ID]
    return x[:-1] if x and x[-1] == EOS_ID else x

  is_sentinel = lambda t: t >= vocab_size - num_sentinels
  spans, current = {}, None
  for t in strip(targets):
    if is_sentinel(t):
      current = t
      spans[current] = []
    elif current is not None:
      spans[current].append(t)
  out = []
  for t in strip(inputs):
    out.extend(spans.get(t, []) if is_sentinel(t) else [t])
  return out
