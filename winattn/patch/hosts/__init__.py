# SPDX-License-Identifier: Apache-2.0
"""Swap adapters, one file per host family. A new host is one new file and one line in `HOSTS`.

Each adapter recognises its modules by structure (`matches`) and builds the module that takes
their place (`build`), or raises `ValueError` saying why it cannot. Block-level adapters come
first, then `SwinBlock` (a Swin-v1 block of any other family, by structure); `SwinV1Attention`,
the window-level fallback for a Swin-v1 attention inside a module of no known family, comes last.
"""

from winattn.patch.hosts.base import Host, Swap, SwappedBlock, is_winattn
from winattn.patch.hosts.compressai import CompressaiWMSA
from winattn.patch.hosts.saaf import GlobalTokenWindowAttention
from winattn.patch.hosts.scunet import ScunetWMSA
from winattn.patch.hosts.stf import StfSwinBlock, StfWinBasedAttention
from winattn.patch.hosts.swin_block import SwinBlock
from winattn.patch.hosts.swin_v1 import SwinV1Attention, WindowLevelAttention
from winattn.patch.hosts.swin_v2 import TimmSwinV2Block, TorchvisionSwinV2Block
from winattn.patch.hosts.timm import TimmSwinBlock
from winattn.patch.hosts.torchvision import MapLevelAttention, TorchvisionShiftedWindowAttention

__all__ = [
    "HOSTS",
    "Host",
    "MapLevelAttention",
    "Swap",
    "SwappedBlock",
    "WindowLevelAttention",
    "is_winattn",
]

#: Every host family, most specific first.
HOSTS: tuple[Host, ...] = (
    TimmSwinV2Block(),
    TorchvisionSwinV2Block(),
    TimmSwinBlock(),
    StfSwinBlock(),
    StfWinBasedAttention(),
    CompressaiWMSA(),
    ScunetWMSA(),
    TorchvisionShiftedWindowAttention(),
    GlobalTokenWindowAttention(),
    SwinBlock(),
    SwinV1Attention(),
)
