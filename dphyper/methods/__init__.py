"""Every private method behind one contract (``base.py``), in one ordered registry.

The CLI (``python -m dphyper run METHOD``), the contract test and, as they move over, the
app's comparison, the benchmark and the audit iterate over ``METHODS``. Adding a method is
one file here plus one line below (and its tests).
"""

from .base import ADAPTER_FILES, Cancelled, Method, MethodResult, load_adapter_into, run_method, write_outputs
from .dp_merf import DP_MERF
from .dpsgd import DPSGD
from .hypernet import HYPERNET
from .pda_dpmd import PDA_DPMD
from .private_evolution import PRIVATE_EVOLUTION
from .qem import QEM
from .slicing import SLICING
from .sparse import SPARSE

METHODS: dict[str, Method] = {m.name: m for m in (
    HYPERNET,
    DPSGD,
    PDA_DPMD,
    QEM,
    SLICING,
    SPARSE,
    DP_MERF,
    PRIVATE_EVOLUTION,
)}

# The registry's first method is the flagship: every comparison's paired differences are taken against it.
FLAGSHIP = next(iter(METHODS))


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}: one of {', '.join(METHODS)}") from None


__all__ = ["ADAPTER_FILES", "FLAGSHIP", "METHODS", "load_adapter_into", "Cancelled", "Method", "MethodResult", "get_method", "run_method", "write_outputs"]
