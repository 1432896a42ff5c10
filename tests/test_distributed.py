"""``finalize_distributed``: leaves a process group (barrier + destroy), a no-op without one."""

import torch.distributed as dist

from custom_monai.handlers import finalize_distributed


def test_no_group_is_a_no_op():
    assert not dist.is_initialized()
    assert finalize_distributed() is False


def test_destroys_a_one_process_gloo_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        assert finalize_distributed() is True
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
