"""Phase 4, submitting: the TorchX side. `launch` builds the AppDef behind components/train.py
from a config resolved on the submitting machine; `container_paths` and `secret_env` are the
submit-time checks and secret handling; `kubernetes_scheduler` and `local_docker_scheduler` wrap
TorchX's schedulers. Imports nothing of training or torch: `torchx status` must stay fast.
"""
