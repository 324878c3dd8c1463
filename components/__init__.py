"""TorchX components of recjobs: `torchx run components/train.py:train ...` (see README)."""
