"""Test-session setup: 8 simulated CPU devices, configured before anything imports jax."""

import os

_DEVICE_FLAG = '--xla_force_host_platform_device_count=8'
_flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
          if not f.startswith('--xla_force_host_platform_device_count')]
os.environ['XLA_FLAGS'] = ' '.join(_flags + [_DEVICE_FLAG])
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
