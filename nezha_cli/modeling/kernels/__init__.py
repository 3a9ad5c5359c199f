"""Device-specific speed code for the model, behind one dispatch point (:mod:`.dispatch`).

The model (:mod:`nezha_cli.modeling.modeling_nezha`, :mod:`nezha_cli.modeling.relative_attention`) computes what
the paper says with PyTorch ops; the kernels here compute the same on particular devices, faster: the relative
attention's bucket gather and sums as C (Linux CPUs) and Triton (CUDA) kernels, and a parallel CPU dropout.
"""
