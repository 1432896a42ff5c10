"""Every bundle's ``network_def`` exports to ONNX (MONAI's ``convert_to_onnx``) and ONNX Runtime matches eager."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.utils import convert_to_onnx

from bundle_utils import REPO_ROOT

# bundle -> (overrides that keep the test small, input shape)
CASES = {
    "attention_unet_ceph2d": ({}, (1, 1, 128, 128)),
    "cephmarknet_ceph2d": ({"backbone": "resnet18", "head": "shared", "fusion_channels": 64, "input_size": [128, 160]}, (1, 1, 128, 160)),
    "dcelr_ceph2d": ({"embed_dim": 64, "num_heads": 4, "token_size": 8, "head_hidden": 64, "input_size": [96, 128]}, (1, 1, 96, 128)),
    "global_local_fcnn_ceph2d": ({}, (1, 1, 128, 96)),
    "global_local_fcnn_3d": ({"global_channels": [8, 16, 32, 64], "global_blocks": [1, 1, 1, 1]}, (1, 1, 32, 32, 32)),
    "htc_multires_ceph2d": ({"embed_dims": 8, "neck_channels": 32, "input_size": [96, 128]}, (1, 1, 96, 128)),
}


@pytest.mark.parametrize("bundle", sorted(CASES))
def test_network_def_onnx_matches_eager(bundle, tmp_path):
    overrides, shape = CASES[bundle]
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "inference.json"))
    parser.update(overrides)
    torch.manual_seed(0)  # fixed weights and input: the comparison is reproducible
    net = parser.get_parsed_content("network_def").eval()
    x = torch.rand(*shape)
    with torch.no_grad():
        eager = net(x).numpy()
    path = tmp_path / "model.onnx"
    convert_to_onnx(net, inputs=[x], filename=str(path), verify=False, use_trace=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == eager.shape
    # ONNX Runtime sums in another order (fused kernels): allow float32 reassociation noise relative to the
    # output's scale; a wrong export differs by the output's own magnitude.
    scale = float(np.abs(eager).max())
    np.testing.assert_allclose(out, eager, atol=1e-3 * scale, rtol=1e-4)
