"""Order-preserving integer keys for floats, shared by every backend.

16-bit floats (bfloat16, float16) get int32 keys in [-2**15, 2**15); float32 gets int32 keys.
key(a) < key(b) iff a < b in IEEE total order, with every NaN mapped to one key just above +inf.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SUPPORTED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def key_bits(dtype) -> int:
  return 32 if jnp.dtype(dtype) == jnp.float32 else 16


def nan_key(dtype) -> int:
  """The key every NaN gets: one above the key of +inf."""
  dtype = jnp.dtype(dtype)
  inf_bits = int(np.array(np.inf, dtype).view(np.uint16 if dtype.itemsize == 2 else np.uint32))
  return inf_bits + 1  # +inf bits are positive, so key == bits


def neg_inf_key(dtype) -> int:
  """The key of -inf (the smallest key once NaNs are canonicalised), as a Python int."""
  dtype = jnp.dtype(dtype)
  nbits = 8 * dtype.itemsize
  b = int(np.array(-np.inf, dtype).view(np.int16 if nbits == 16 else np.int32))
  return b ^ ((b >> (nbits - 1)) & ((1 << (nbits - 1)) - 1))


def _key_from_signed_bits(b, bits: int):
  """b: int32 holding the (sign-extended) bit pattern. Involution: also maps keys back to bits."""
  return b ^ ((b >> (bits - 1)) & ((1 << (bits - 1)) - 1))


def float_to_key(x: jax.Array) -> jax.Array:
  """int32 key of each entry (NaN -> nan_key). Pure jnp; usable inside Pallas kernels too."""
  dtype = jnp.dtype(x.dtype)
  if dtype not in SUPPORTED_DTYPES:
    raise TypeError(f"dtype {dtype} not supported")
  if dtype == jnp.float32:
    b = lax.bitcast_convert_type(x, jnp.int32)
    bits = 32
  elif dtype == jnp.bfloat16:
    # bf16 -> f32 is exact and puts the bf16 bits on top; the arithmetic shift sign-extends them.
    b = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32) >> 16
    bits = 16
  else:
    b = lax.bitcast_convert_type(x, jnp.int16).astype(jnp.int32)
    bits = 16
  key = _key_from_signed_bits(b, bits)
  return jnp.where(jnp.isnan(x), jnp.int32(nan_key(dtype)), key)


def key_to_f32(key: jax.Array, dtype) -> jax.Array:
  """Float32 value of a key (for interpolation guesses); nan_key maps to NaN."""
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return lax.bitcast_convert_type(_key_from_signed_bits(key, 32), jnp.float32)
  b = _key_from_signed_bits(key, 16)
  if dtype == jnp.bfloat16:
    return lax.bitcast_convert_type(b << 16, jnp.float32)
  return lax.bitcast_convert_type(b.astype(jnp.int16), jnp.float16).astype(jnp.float32)


def keep_mask(x: jax.Array, t: jax.Array, cut: jax.Array) -> jax.Array:
  """keep = key > t | (key == t & column < cut), with t, cut of shape x.shape[:-1]."""
  key = float_to_key(x)
  col = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  t = t[..., None]
  return (key > t) | ((key == t) & (col < cut[..., None]))
