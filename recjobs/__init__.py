"""recjobs: recommendation training (two-tower retrieval, DLRM/DCN ranking) as TorchX jobs."""

__version__ = "0.1.0"
